"""Build a live provider client by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import LiveProvider
from harchos_cli.carbon.types import Region
from harchos_cli.config import Config
from harchos_cli.errors import UsageError

if TYPE_CHECKING:
    import httpx

#: Live providers, in the order `--provider auto` prefers them (see docs/providers.md).
LIVE_PROVIDERS: tuple[str, ...] = ("electricitymaps", "watttime", "ukgrid", "entsoe")


def make_live_provider(
    name: str,
    config: Config,
    cache: ResponseCache,
    *,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> LiveProvider:
    """Create the client for live provider `name`.

    Args:
        name: One of `LIVE_PROVIDERS`.
        config: Resolved settings (base URLs, credentials, timeouts, retries, cache).
        cache: Response cache shared by the providers.
        client: Optional `httpx.Client` to share (the caller closes it).
        sleep: Delay function between retries; tests pass one that records instead of waiting.

    Raises:
        UsageError: Unknown provider name, or a bad provider setting.
    """
    key = name.strip().lower()
    if key == "electricitymaps":
        from harchos_cli.carbon.providers.electricitymaps import ElectricityMaps

        return ElectricityMaps(config, cache, client=client, sleep=sleep)
    if key == "watttime":
        from harchos_cli.carbon.providers.watttime import WattTime

        return WattTime(config, cache, client=client, sleep=sleep)
    if key == "ukgrid":
        from harchos_cli.carbon.providers.ukgrid import UkGrid

        return UkGrid(config, cache, client=client, sleep=sleep)
    if key == "entsoe":
        from harchos_cli.carbon.providers.entsoe import Entsoe

        return Entsoe(config, cache, client=client, sleep=sleep)
    raise UsageError(
        f"unknown live provider {name!r}", hint=f"use one of {', '.join(LIVE_PROVIDERS)}"
    )


def worth_trying(name: str, region: Region, config: Config) -> bool:
    """Whether `--provider auto` should try `name` for `region`: it covers the zone and has its
    credentials. Decided from the settings alone, so an offline run never even imports httpx;
    it agrees with each client's `covers()` and `configured()`."""
    if name == "electricitymaps":
        return bool(region.zone) and bool(config.get("electricitymaps.token"))
    if name == "watttime":
        return (
            region.watttime_region is not None
            and bool(config.get("watttime.username"))
            and bool(config.get("watttime.password"))
        )
    if name == "ukgrid":
        return region.zone == "GB"
    if name == "entsoe":
        from harchos_cli.carbon.regions import entsoe_eic

        return entsoe_eic(region.zone) is not None and bool(config.get("entsoe.token"))
    return False
