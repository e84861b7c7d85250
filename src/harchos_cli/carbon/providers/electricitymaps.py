"""Electricity Maps (API v3): average, flow-traced intensity for every zone.

History (`carbon-intensity/history`, last 24 h) is on the free plan; the forecast needs a paid or
trial plan. Without it harchos keeps the history and lets the embedded model forecast from it.
Past ranges (`carbon-intensity/past-range`, at most 10 days per request at hourly granularity)
also need a paid or trial plan; the forecast service backfills a week from it where it answers.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import httpx

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import PlanRefused, ProviderData
from harchos_cli.carbon.providers.http import (
    HOUR,
    HttpStatusError,
    ProviderHttp,
    Sleep,
    cache_key,
    chunks,
    hourly_means,
    number,
    parse_time,
    window,
    with_spacing,
)
from harchos_cli.carbon.types import Observation, Region, Signal, Source, ValueKind
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError, UsageError
from harchos_cli.timeparse import as_utc, floor_hour, iso

NAME = "electricitymaps"
EMISSION_FACTORS = ("lifecycle", "direct")
HORIZONS = (6, 24, 48, 72)
#: `carbon-intensity/past-range` answers at most 10 days per request at hourly granularity.
PAST_RANGE_MAX = timedelta(days=10)
TOKEN_HINT = "set ELECTRICITYMAPS_API_TOKEN or electricitymaps.token in `harchos config path`"


def _horizon(hours: int) -> int:
    """The smallest forecast horizon Electricity Maps offers that covers `hours`."""
    return next((h for h in HORIZONS if h >= hours), HORIZONS[-1])


class ElectricityMaps:
    """Electricity Maps client implementing `LiveProvider`.

    Args:
        config: Settings (`electricitymaps.*`, `http.*`, `cache.enabled`).
        cache: Response cache.
        client: Optional shared `httpx.Client`.
        sleep: Delay function between retries.

    Raises:
        UsageError: `electricitymaps.emission_factor` is neither lifecycle nor direct.
    """

    name = NAME
    signal: Signal = "average"
    #: `carbon-intensity/history` gives the last 24 hours.
    recent_hours = 24
    backfill_chunk = PAST_RANGE_MAX

    def __init__(
        self,
        config: Config,
        cache: ResponseCache,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        token = config.get("electricitymaps.token")
        self._token: str | None = str(token) if token else None
        factor = str(config.get("electricitymaps.emission_factor")).strip().lower()
        if factor not in EMISSION_FACTORS:
            raise UsageError(
                f"unknown electricitymaps.emission_factor {factor!r}",
                hint="use lifecycle or direct",
            )
        self.emission_factor = factor
        self.http = ProviderHttp.from_config(NAME, config, cache, client=client, sleep=sleep)
        # Set after the forecast endpoint answered 401/403: the plan will not change mid-process.
        self._forecast_refused: int | None = None

    def covers(self, region: Region) -> bool:
        """Every region resolves to an Electricity Maps zone id."""
        return bool(region.zone)

    def configured(self) -> bool:
        """Whether an API token is set."""
        return self._token is not None

    def close(self) -> None:
        """Release the HTTP client."""
        self.http.close()

    def fetch(self, region: Region, now: datetime, hours: int) -> ProviderData:
        """History (last 24 h) and, where the plan allows, the forecast for `region.zone`.

        Raises:
            ProviderError: No token, the token was rejected, or history could not be had.
        """
        now = as_utc(now)
        if self._token is None:
            raise ProviderError(NAME, f"no API token ({TOKEN_HINT})", permanent=True)
        zone = region.zone
        history, history_detail = self._history(zone, now)
        warnings: list[str] = []
        forecast: list[Observation] | None = None
        forecast_detail = ""
        try:
            if self._forecast_refused is None:
                forecast, forecast_detail = self._forecast(zone, now, hours)
        except HttpStatusError as exc:
            if exc.status in (401, 403):
                self._forecast_refused = exc.status
            else:
                warnings.append(f"{exc}; using the embedded model on Electricity Maps history")
        except ProviderError as exc:
            warnings.append(f"{exc}; using the embedded model on Electricity Maps history")
        if self._forecast_refused is not None:
            warnings.append(
                f"{NAME}: your plan has no forecast endpoint (HTTP {self._forecast_refused}); "
                "using the embedded model on Electricity Maps history"
            )
        if forecast is not None and not forecast:
            warnings.append(
                f"{NAME}: the forecast does not cover the next {hours} h; "
                "using the embedded model on Electricity Maps history"
            )
            forecast = None
        if forecast is None and not history:
            raise ProviderError(NAME, f"no usable values for zone {zone}")
        if forecast is not None:
            source = self._source("forecast", now, forecast_detail)
        else:
            estimated = sum(o.estimated for o in history)
            kind: ValueKind = "estimated" if estimated else "measured"
            detail = history_detail + (
                f"; {estimated} of {len(history)} h estimated" if estimated else ""
            )
            source = self._source(kind, now, detail)
        return ProviderData(forecast=forecast, history=history, source=source, warnings=warnings)

    def _source(self, kind: ValueKind, now: datetime, detail: str) -> Source:
        return Source(
            provider=NAME,
            signal=self.signal,
            method=self.emission_factor,
            kind=kind,
            fetched_at=now,
            detail=detail,
        )

    def _get(
        self, endpoint: str, params: dict[str, str | int], zone: str, now: datetime
    ) -> tuple[dict[str, Any], str]:
        fetched = self.http.get_json(
            endpoint, params, zone=zone, now=now, headers={"auth-token": self._token or ""}
        )
        if not isinstance(fetched.data, dict):
            raise ProviderError(NAME, f"unexpected answer from {endpoint}: not a JSON object")
        detail = f"{endpoint}?zone={zone}" + (" (cached)" if fetched.cached else "")
        return fetched.data, detail

    def _history(self, zone: str, now: datetime) -> tuple[list[Observation], str]:
        params: dict[str, str | int] = {"zone": zone, "emissionFactorType": self.emission_factor}
        try:
            data, detail = self._get("carbon-intensity/history", params, zone, now)
        except HttpStatusError as exc:
            if exc.status == 401:
                raise ProviderError(
                    NAME,
                    f"the API token was rejected (HTTP 401); {TOKEN_HINT}",
                    permanent=True,
                ) from exc
            if exc.status == 403:
                raise ProviderError(
                    NAME,
                    f"your plan has no access to zone {zone} (HTTP 403)"
                    + (f": {exc.server_message}" if exc.server_message else ""),
                    permanent=True,
                ) from exc
            raise
        entries = data.get("history")
        if not isinstance(entries, list):
            raise ProviderError(NAME, "unexpected history answer: no 'history' list")
        return [o for o in _actuals(entries) if o.start < now], detail

    def backfill(
        self, region: Region, start: datetime, end: datetime, now: datetime
    ) -> list[Observation]:
        """Hourly actuals for hours starting in [start, end) from `carbon-intensity/past-range`
        (10 days per request; a paid or trial plan).

        Raises:
            PlanRefused: HTTP 401, 403 or 404 on past-range (the plan lacks it; the same token
                just read the history).
            ProviderError: Any other failure.
        """
        now = as_utc(now)
        if self._token is None:
            raise ProviderError(NAME, f"no API token ({TOKEN_HINT})", permanent=True)
        zone = region.zone
        endpoint = "carbon-intensity/past-range"
        found: list[Observation] = []
        for index, (first, last) in enumerate(chunks(start, end, PAST_RANGE_MAX)):
            params: dict[str, str | int] = {
                "zone": zone,
                "start": iso(first),
                "end": iso(last),
                "emissionFactorType": self.emission_factor,
                "temporalGranularity": "hourly",
            }
            # One cache row per chunk of a backfill (its times follow from the gap being filled),
            # replaced by the next backfill instead of piling up.
            key = (
                cache_key(endpoint, {"zone": zone, "emissionFactorType": self.emission_factor})
                + f"#{index}"
            )
            try:
                fetched = self.http.get_json(
                    endpoint,
                    params,
                    zone=zone,
                    now=now,
                    key=key,
                    headers={"auth-token": self._token},
                )
            except HttpStatusError as exc:
                if exc.status in (401, 403, 404):
                    raise PlanRefused(
                        NAME,
                        f"your plan has no past-range endpoint (HTTP {exc.status})",
                        status=exc.status,
                    ) from exc
                raise
            data = fetched.data
            entries = data.get("data", data.get("history")) if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ProviderError(NAME, "unexpected past-range answer: no 'data' list")
            found.extend(o for o in _actuals(entries) if first <= o.start < last)
        return found

    def _forecast(self, zone: str, now: datetime, hours: int) -> tuple[list[Observation], str]:
        params: dict[str, str | int] = {
            "zone": zone,
            "emissionFactorType": self.emission_factor,
            "horizonHours": _horizon(hours),
        }
        data, detail = self._get("carbon-intensity/forecast", params, zone, now)
        entries = data.get("forecast")
        if not isinstance(entries, list):
            raise ProviderError(NAME, "unexpected forecast answer: no 'forecast' list")
        points = [
            (parse_time(e.get("datetime"), NAME), number(e["carbonIntensity"], NAME), False)
            for e in entries
            if isinstance(e, dict) and e.get("carbonIntensity") is not None
        ]
        start = floor_hour(now)
        return window(hourly_means(with_spacing(points)), start, start + hours * HOUR), detail


def _actuals(entries: list[Any]) -> list[Observation]:
    """Hourly observations from `history` / `past-range` entries; null hours are skipped, values
    Electricity Maps estimated are marked estimated."""
    points = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("carbonIntensity") is None:
            continue  # Electricity Maps reports hours it has no value for as null.
        points.append(
            (
                parse_time(entry.get("datetime"), NAME),
                number(entry["carbonIntensity"], NAME),
                bool(entry.get("isEstimated")),
            )
        )
    return hourly_means(with_spacing(points))
