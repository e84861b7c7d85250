"""Turns command-line strings into core inputs; shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harchos_cli.errors import UsageError

if TYPE_CHECKING:
    from harchos_cli.carbon.outlook import Outlook
    from harchos_cli.carbon.service import ForecastService
    from harchos_cli.carbon.traces import Trace
    from harchos_cli.carbon.types import Region


def forecast_service(provider: str | None) -> ForecastService:
    from harchos_cli.carbon.service import ForecastService

    return ForecastService.from_settings(provider)


def resolve_regions(spec: str | None, service: ForecastService) -> list[Region]:
    from harchos_cli.carbon import regions

    names = [name.strip() for name in (spec or "").split(",") if name.strip()]
    if not names:
        replay = service.replay
        if not (spec or "").strip() and replay is not None and replay.trace.zone:
            return [regions.resolve(replay.trace.zone)]
        raise UsageError("no region given", hint="add --region eu-west (harchos regions list)")
    resolved = [regions.resolve(name) for name in names]
    return list({r.name: r for r in resolved}.values())


def forecast_outlook(
    *,
    region: str | None,
    hours: int,
    duration: str,
    deadline: str,
    threshold: float | None,
    provider: str | None,
    at: str | None,
) -> Outlook:
    from harchos_cli.carbon.outlook import build_outlook
    from harchos_cli.timeparse import parse_deadline, parse_duration, parse_instant, utcnow

    job = parse_duration(duration)
    service = forecast_service(provider)
    regions = resolve_regions(region, service)
    now = parse_instant(at) if at else service.default_now(utcnow())
    return build_outlook(
        service,
        regions,
        now=now,
        hours=hours,
        duration=job,
        deadline=parse_deadline(deadline, now),
        threshold=threshold,
    )


def load_trace(path: Path, zone: str | None) -> Trace:
    from harchos_cli.carbon.traces import read_trace

    if zone is not None:
        from harchos_cli.carbon import regions

        zone = regions.resolve(zone).zone
    return read_trace(path, zone=zone)
