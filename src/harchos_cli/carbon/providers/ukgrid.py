"""UK Carbon Intensity API (NESO): free, no key, half-hour slots, national or one of 17 regions.

National: `/intensity/{from}/fw48h` (forecast) and `/intensity/{from}/pt24h` (history, `actual`
where published else the forecast value, marked estimated). Regional: the API publishes forecast
values only, so history for a region is `/regional/intensity/{from-24h}/{to}/regionid/{id}`,
every hour marked estimated. The forecast keeps the API's half-hour slots (the window search
uses them as they are); history becomes hourly means. Past ranges (`/intensity/{from}/{to}`,
`/regional/intensity/{from}/{to}/regionid/{id}`, at most 14 days per request) fill the history
store with a week on first use (`backfill`).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import httpx

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import ProviderData
from harchos_cli.carbon.providers.http import (
    HOUR,
    HttpStatusError,
    ProviderHttp,
    Sample,
    Sleep,
    chunks,
    hourly_means,
    native_series,
    number,
    parse_time,
    window,
)
from harchos_cli.carbon.types import Observation, Region, Signal, Source
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError
from harchos_cli.timeparse import as_utc, floor_hour

NAME = "ukgrid"
SLOT = timedelta(minutes=30)
#: The API answers a range of at most 14 days (`/intensity/{from}/{to}` and the regional one).
RANGE_MAX = timedelta(days=14)
REGIONS = {
    1: "North Scotland",
    2: "South Scotland",
    3: "North West England",
    4: "North East England",
    5: "Yorkshire",
    6: "North Wales",
    7: "South Wales",
    8: "West Midlands",
    9: "East Midlands",
    10: "East England",
    11: "South West England",
    12: "South England",
    13: "London",
    14: "South East England",
    15: "England",
    16: "Scotland",
    17: "Wales",
}


def api_time(moment: datetime) -> str:
    """The API's timestamp form, `YYYY-MM-DDThh:mmZ`."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%MZ")


def _slot_start(moment: datetime) -> datetime:
    moment = as_utc(moment)
    return moment.replace(minute=30 if moment.minute >= 30 else 0, second=0, microsecond=0)


def _check_error(payload: Any) -> None:
    """Raise for an `{"error":{"code","message"}}` body, which may come with HTTP 200."""
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        if isinstance(error, dict):
            raise ProviderError(
                NAME, str(error.get("message") or error.get("code") or "unknown error")
            )
        raise ProviderError(NAME, str(error))


class UkGrid:
    """UK Carbon Intensity API client implementing `LiveProvider`.

    Args:
        config: Settings (`ukgrid.base_url`, `http.*`, `cache.enabled`).
        cache: Response cache.
        client: Optional shared `httpx.Client`.
        sleep: Delay function between retries.
    """

    name = NAME
    signal: Signal = "average"
    #: `/intensity/{from}/pt24h` and the regional range give the last 24 hours.
    recent_hours = 24
    backfill_chunk = RANGE_MAX

    def __init__(
        self,
        config: Config,
        cache: ResponseCache,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.http = ProviderHttp.from_config(NAME, config, cache, client=client, sleep=sleep)

    def covers(self, region: Region) -> bool:
        """Great Britain only: zone GB, nationally or by NESO region id."""
        return region.zone == "GB" and (
            region.ukgrid_region is None or region.ukgrid_region in REGIONS
        )

    def configured(self) -> bool:
        """Always: the API needs no key."""
        return True

    def close(self) -> None:
        """Release the HTTP client."""
        self.http.close()

    def fetch(self, region: Region, now: datetime, hours: int) -> ProviderData:
        """The NESO 48 h forecast (half-hour slots) and the last 24 h for GB or one GB region.

        Raises:
            ProviderError: The forecast could not be had (network, HTTP, an error body).
                A failed history only adds a warning.
        """
        now = as_utc(now)
        if not self.covers(region):
            raise ProviderError(NAME, f"zone {region.zone} is not in Great Britain", permanent=True)
        rid = region.ukgrid_region
        start = floor_hour(now)
        slot = _slot_start(now)
        warnings: list[str] = []
        if rid is None:
            path = f"intensity/{api_time(start)}/fw48h"
            label = "national"
        else:
            path = f"regional/intensity/{api_time(start)}/fw48h/regionid/{rid}"
            label = f"region {rid} ({REGIONS[rid]})"
        payload, cached = self._get(path, "intensity/fw48h", rid, now)
        samples = [s for s in self._samples(payload, rid) if s.end > start]
        forecast = window(native_series(samples), start, start + hours * HOUR)
        if not forecast:
            raise ProviderError(NAME, f"the forecast does not cover the next {hours} h")
        history: list[Observation] = []
        try:
            if rid is None:
                hist_path = f"intensity/{api_time(slot)}/pt24h"
            else:
                hist_path = (
                    f"regional/intensity/{api_time(slot - timedelta(hours=24))}/"
                    f"{api_time(slot)}/regionid/{rid}"
                )
            past, _ = self._get(hist_path, "intensity/pt24h", rid, now)
            samples = [s for s in self._samples(past, rid, history=True) if s.start < slot]
            history = [o for o in hourly_means(samples) if o.start < now]
        except ProviderError as exc:
            warnings.append(f"{exc}; continuing without UK grid history")
        source = Source(
            provider=NAME,
            signal=self.signal,
            method="NESO forecast",
            kind="forecast",
            fetched_at=now,
            detail=f"/{path} ({label})" + (" (cached)" if cached else ""),
        )
        return ProviderData(forecast=forecast, history=history, source=source, warnings=warnings)

    def backfill(
        self, region: Region, start: datetime, end: datetime, now: datetime
    ) -> list[Observation]:
        """Hourly history for hours starting in [start, end), 14 days per request: national
        `/intensity/{from}/{to}` (`actual` where published, else the forecast, estimated) or
        regional `/regional/intensity/{from}/{to}/regionid/{id}` (forecast values, estimated).

        Raises:
            ProviderError: The request failed or answered with an error body.
        """
        now = as_utc(now)
        if not self.covers(region):
            raise ProviderError(NAME, f"zone {region.zone} is not in Great Britain", permanent=True)
        rid = region.ukgrid_region
        found: list[Observation] = []
        for index, (first, last) in enumerate(chunks(start, end, RANGE_MAX)):
            if rid is None:
                path = f"intensity/{api_time(first)}/{api_time(last)}"
            else:
                path = f"regional/intensity/{api_time(first)}/{api_time(last)}/regionid/{rid}"
            payload, _ = self._get(path, f"intensity/range#{index}", rid, now)
            samples = self._samples(payload, rid, history=True)
            found.extend(o for o in hourly_means(samples) if first <= o.start < last)
        return found

    def _get(self, path: str, what: str, rid: int | None, now: datetime) -> tuple[Any, bool]:
        # The path's timestamps derive from `now`'s slot, so the key leaves them out and a new
        # slot replaces the old row instead of piling up.
        key = f"{what}/{'national' if rid is None else f'regionid/{rid}'}"
        try:
            fetched = self.http.get_json(path, zone="GB", now=now, key=key, check=_check_error)
        except HttpStatusError as exc:
            raise ProviderError(
                NAME, exc.server_message or f"HTTP {exc.status}", permanent=exc.permanent
            ) from exc
        return fetched.data, fetched.cached

    def _entries(self, payload: Any, rid: int | None) -> list[Any]:
        data = payload.get("data") if isinstance(payload, dict) else None
        if rid is None:
            if isinstance(data, list):
                return data
            raise ProviderError(NAME, "unexpected answer: no 'data' list")
        # Ranged regional endpoints: the live service answers with one region object, the
        # documentation shows a list of region objects. Accept both.
        regions = [data] if isinstance(data, dict) else data
        if not isinstance(regions, list):
            raise ProviderError(NAME, "unexpected answer: no 'data' object or list")
        for item in regions:
            if not isinstance(item, dict):
                continue
            if item.get("regionid") in (rid, str(rid)) or len(regions) == 1:
                entries = item.get("data")
                if isinstance(entries, list):
                    return entries
        raise ProviderError(NAME, f"the answer has no data for region {rid}")

    def _samples(self, payload: Any, rid: int | None, *, history: bool = False) -> list[Sample]:
        samples = []
        for entry in self._entries(payload, rid):
            if not isinstance(entry, dict) or not isinstance(entry.get("intensity"), dict):
                continue
            intensity = entry["intensity"]
            actual = intensity.get("actual") if history else None
            value = actual if actual is not None else intensity.get("forecast")
            if value is None:
                continue
            start = parse_time(entry.get("from"), NAME)
            end = parse_time(entry["to"], NAME) if entry.get("to") else start + SLOT
            samples.append(Sample(start, end, number(value, NAME), history and actual is None))
        return samples
