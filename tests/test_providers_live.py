"""The live-provider factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from httpfake import provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.live import LIVE_PROVIDERS, make_live_provider, worth_trying
from harchos_cli.carbon.types import Region
from harchos_cli.errors import UsageError


@pytest.mark.parametrize("name", LIVE_PROVIDERS)
def test_factory_builds_each_provider(tmp_path: Path, name: str) -> None:
    client = make_live_provider(name, provider_config(tmp_path), ResponseCache(enabled=False))
    assert client.name == name
    assert client.signal in ("average", "marginal")


def test_configured_follows_credentials(tmp_path: Path) -> None:
    cache = ResponseCache(enabled=False)
    bare = provider_config(tmp_path)
    assert not make_live_provider("electricitymaps", bare, cache).configured()
    assert not make_live_provider("watttime", bare, cache).configured()
    assert make_live_provider("ukgrid", bare, cache).configured()
    keyed = provider_config(
        tmp_path,
        electricitymaps__token="t",
        watttime__username="u",
        watttime__password="p",
    )
    assert make_live_provider("electricitymaps", keyed, cache).configured()
    assert make_live_provider("watttime", keyed, cache).configured()


def test_watttime_signal_follows_config(tmp_path: Path) -> None:
    cache = ResponseCache(enabled=False)
    assert make_live_provider("watttime", provider_config(tmp_path), cache).signal == "marginal"
    average = provider_config(tmp_path, watttime__signal="co2_aoer")
    assert make_live_provider("watttime", average, cache).signal == "average"


def test_unknown_name_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        make_live_provider("nonesuch", provider_config(tmp_path), ResponseCache(enabled=False))
    assert "nonesuch" in caught.value.message
    assert caught.value.hint == "use one of electricitymaps, watttime, ukgrid, entsoe"


@pytest.mark.parametrize(
    ("settings", "region"),
    [
        ({}, Region("de", "DE", "Germany", "zone", ())),
        ({"electricitymaps__token": "t"}, Region("de", "DE", "Germany", "zone", ())),
        ({}, Region("gb", "GB", "Great Britain", "zone", (), ukgrid_region=None)),
        ({}, Region("ukgrid:13", "GB", "London", "ukgrid", (), ukgrid_region=13)),
        (
            {"watttime__username": "u", "watttime__password": "p"},
            Region("ciso", "US-CAL-CISO", "CAISO", "zone", (), watttime_region="CAISO_NORTH"),
        ),
        (
            {"watttime__username": "u"},
            Region("ciso", "US-CAL-CISO", "CAISO", "zone", (), watttime_region="CAISO_NORTH"),
        ),
        (
            {"watttime__username": "u", "watttime__password": "p"},
            Region("de", "DE", "D", "zone", ()),
        ),
    ],
)
def test_worth_trying_agrees_with_the_clients(
    tmp_path: Path, settings: dict[str, str], region: Region
) -> None:
    config = provider_config(tmp_path, **settings)
    cache = ResponseCache(enabled=False)
    for name in LIVE_PROVIDERS:
        client = make_live_provider(name, config, cache)
        assert worth_trying(name, region, config) == (
            client.covers(region) and client.configured()
        ), name
