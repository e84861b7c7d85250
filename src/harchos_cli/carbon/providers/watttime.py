"""WattTime v3: marginal (`co2_moer`) or average (`co2_aoer`) emissions, 5-minute points.

Login is HTTP Basic on `/login`, answered with a bearer token valid about 30 minutes; harchos
keeps it in memory only (never in the cache) and logs in again once when a data call answers
401/403. Values come in lbs CO2/MWh and are converted to g/kWh (× 0.453592).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import PlanRefused, ProviderData
from harchos_cli.carbon.providers.http import (
    HOUR,
    HttpStatusError,
    ProviderHttp,
    Sample,
    Sleep,
    cache_key,
    chunks,
    hourly_means,
    native_series,
    number,
    parse_time,
    window,
)
from harchos_cli.carbon.types import Observation, Region, Signal, Source
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError, UsageError
from harchos_cli.timeparse import as_utc, floor_hour, iso

NAME = "watttime"
LBS_PER_MWH_TO_G_PER_KWH = 0.453592
SIGNALS: dict[str, Signal] = {"co2_moer": "marginal", "co2_aoer": "average"}
#: Unit spellings (lower case, letters and digits only) and their factor to gCO2/kWh.
UNIT_FACTORS = {
    "lbsco2permwh": LBS_PER_MWH_TO_G_PER_KWH,
    "lbco2permwh": LBS_PER_MWH_TO_G_PER_KWH,
    "lbsco2mwh": LBS_PER_MWH_TO_G_PER_KWH,
    "gco2perkwh": 1.0,
    "gco2kwh": 1.0,
    "gco2eqperkwh": 1.0,
    "kgco2permwh": 1.0,
    "kgco2mwh": 1.0,
}
TOKEN_LIFETIME_S = 25 * 60  # WattTime tokens live about 30 minutes; renew a little early.
MAX_HORIZON_H = 72
#: `/v3/historical` ranges are asked for in 30-day pieces, as WattTime's own client does.
HISTORICAL_MAX = timedelta(days=30)
CREDENTIALS_HINT = "set WATTTIME_USER and WATTTIME_PASSWORD, or put them in `harchos config path`"


def unit_factor(units: Any) -> float:
    """Factor turning WattTime `meta.units` into gCO2/kWh.

    Raises:
        ProviderError: The units are missing or unknown (never guess a conversion).
    """
    key = re.sub(r"[^a-z0-9]", "", str(units).lower()) if units is not None else ""
    if key not in UNIT_FACTORS:
        raise ProviderError(NAME, f"unknown units {units!r} in the answer; cannot convert to g/kWh")
    return UNIT_FACTORS[key]


class WattTime:
    """WattTime v3 client implementing `LiveProvider`.

    Args:
        config: Settings (`watttime.*`, `http.*`, `cache.enabled`).
        cache: Response cache (data answers only; the login token is never stored).
        client: Optional shared `httpx.Client`.
        sleep: Delay function between retries.
        clock: Monotonic clock deciding when the token is too old (tests inject one).

    Raises:
        UsageError: `watttime.signal` is neither co2_moer nor co2_aoer.
    """

    name = NAME
    #: `/v3/historical` is asked for the last 24 hours on every fetch.
    recent_hours = 24
    backfill_chunk = HISTORICAL_MAX

    def __init__(
        self,
        config: Config,
        cache: ResponseCache,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        user, password = config.get("watttime.username"), config.get("watttime.password")
        self._user: str | None = str(user) if user else None
        self._password: str | None = str(password) if password else None
        signal_type = str(config.get("watttime.signal")).strip().lower()
        if signal_type not in SIGNALS:
            raise UsageError(
                f"unknown watttime.signal {signal_type!r}",
                hint="use co2_moer (marginal) or co2_aoer (average)",
            )
        self.signal_type = signal_type
        self.signal: Signal = SIGNALS[signal_type]
        self.http = ProviderHttp.from_config(NAME, config, cache, client=client, sleep=sleep)
        self._clock = clock
        self._token: str | None = None
        self._token_at = 0.0
        self.logins = 0

    def covers(self, region: Region) -> bool:
        """Whether the region has a WattTime balancing-authority id."""
        return region.watttime_region is not None

    def configured(self) -> bool:
        """Whether both user name and password are set."""
        return self._user is not None and self._password is not None

    def close(self) -> None:
        """Release the HTTP client."""
        self.http.close()

    def fetch(self, region: Region, now: datetime, hours: int) -> ProviderData:
        """The forecast (its own 5-minute points) and the last 24 h (hourly means) for the region.

        Raises:
            ProviderError: No credentials, login refused, region outside the subscription, or
                no forecast could be had. A failed history only adds a warning.
        """
        now = as_utc(now)
        ba = self._region_of(region)
        warnings: list[str] = []
        horizon = min(max(hours + 1, 1), MAX_HORIZON_H)
        data, cached = self._data(
            "v3/forecast",
            {"region": ba, "signal_type": self.signal_type, "horizon_hours": horizon},
            ba,
            now,
        )
        start = floor_hour(now)
        forecast = window(native_series(self._samples(data, warnings)), start, start + hours * HOUR)
        if not forecast:
            raise ProviderError(NAME, f"the forecast for {ba} does not cover the next {hours} h")
        history: list[Observation] = []
        try:
            past, _ = self._data(
                "v3/historical",
                {
                    "region": ba,
                    "start": iso(start - timedelta(hours=24)),
                    "end": iso(now),
                    "signal_type": self.signal_type,
                },
                ba,
                now,
                key=f"v3/historical?region={ba}&signal_type={self.signal_type}",
            )
            history = [o for o in hourly_means(self._samples(past, warnings)) if o.start < now]
        except ProviderError as exc:
            warnings.append(f"{exc}; continuing without WattTime history")
        detail = f"v3/forecast?region={ba}&signal_type={self.signal_type}" + (
            " (cached)" if cached else ""
        )
        source = Source(
            provider=NAME,
            signal=self.signal,
            method=self.signal_type,
            kind="forecast",
            fetched_at=now,
            detail=detail,
        )
        return ProviderData(forecast=forecast, history=history, source=source, warnings=warnings)

    def backfill(
        self, region: Region, start: datetime, end: datetime, now: datetime
    ) -> list[Observation]:
        """Hourly means of `/v3/historical` for hours starting in [start, end), 30 days per
        request. Historical data beyond CAISO_NORTH needs a subscription.

        Raises:
            PlanRefused: HTTP 403 after a fresh login (the subscription lacks the region's
                historical data).
            ProviderError: Any other failure.
        """
        now = as_utc(now)
        ba = self._region_of(region)
        found: list[Observation] = []
        warnings: list[str] = []
        for index, (first, last) in enumerate(chunks(start, end, HISTORICAL_MAX)):
            try:
                data, _ = self._data(
                    "v3/historical",
                    {
                        "region": ba,
                        "start": iso(first),
                        "end": iso(last),
                        "signal_type": self.signal_type,
                    },
                    ba,
                    now,
                    key=f"v3/historical?region={ba}&signal_type={self.signal_type}#{index}",
                )
            except PlanRefused as exc:
                raise PlanRefused(
                    NAME,
                    f"your subscription has no historical data for {ba} (HTTP {exc.status})",
                    status=exc.status,
                ) from exc
            samples = self._samples(data, warnings)
            found.extend(o for o in hourly_means(samples) if first <= o.start < last)
        return found

    def _region_of(self, region: Region) -> str:
        """The region's WattTime region (`ProviderError` without one, or without credentials)."""
        if not self.configured():
            raise ProviderError(NAME, f"no credentials ({CREDENTIALS_HINT})", permanent=True)
        if region.watttime_region is None:
            raise ProviderError(NAME, f"no WattTime region for zone {region.zone}", permanent=True)
        return region.watttime_region

    def _login(self, *, force: bool = False) -> str:
        fresh = self._clock() - self._token_at < TOKEN_LIFETIME_S
        if self._token is not None and fresh and not force:
            return self._token
        try:
            data, _ = self.http.request_json("login", auth=(self._user or "", self._password or ""))
        except HttpStatusError as exc:
            if exc.status in (401, 403):
                raise ProviderError(
                    NAME,
                    f"login refused: wrong user name or password (HTTP {exc.status}); "
                    + CREDENTIALS_HINT,
                    permanent=True,
                ) from exc
            raise
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, "login answered without a token")
        self._token, self._token_at = token, self._clock()
        self.logins += 1
        return token

    def _data(
        self,
        path: str,
        params: dict[str, str | int],
        ba: str,
        now: datetime,
        *,
        key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """A data call through the cache, with bearer auth and one re-login on 401/403."""
        cache_id = key or cache_key(path, params)
        hit = self.http.lookup(ba, cache_id, now)
        if isinstance(hit, dict):
            return hit, True
        try:
            data, body = self.http.request_json(
                path, params, headers={"Authorization": f"Bearer {self._login()}"}
            )
        except HttpStatusError as exc:
            if exc.status not in (401, 403):
                raise
            token = self._login(force=True)
            try:
                data, body = self.http.request_json(
                    path, params, headers={"Authorization": f"Bearer {token}"}
                )
            except HttpStatusError as again:
                if again.status == 403:
                    raise PlanRefused(
                        NAME,
                        f"region {ba} is outside your WattTime subscription (HTTP 403); "
                        "without a subscription only CAISO_NORTH is available",
                        status=403,
                    ) from again
                if again.status == 401:
                    raise ProviderError(
                        NAME, "the login token was rejected (HTTP 401)", permanent=True
                    ) from again
                raise
        if not isinstance(data, dict):
            raise ProviderError(NAME, f"unexpected answer from {path}: not a JSON object")
        self.http.store(ba, cache_id, now, body)
        return data, False

    def _samples(self, data: dict[str, Any], warnings: list[str]) -> list[Sample]:
        meta = data.get("meta")
        points = data.get("data")
        if not isinstance(meta, dict) or not isinstance(points, list):
            raise ProviderError(NAME, "unexpected answer: no 'meta' object or 'data' list")
        factor = unit_factor(meta.get("units"))
        period = timedelta(seconds=number(meta.get("data_point_period_seconds", 300), NAME))
        for note in meta.get("warnings") or []:
            text = note.get("message") if isinstance(note, dict) else note
            if text and f"{NAME}: {text}" not in warnings:
                warnings.append(f"{NAME}: {text}")
        return [
            Sample(start, start + period, number(p["value"], NAME) * factor)
            for p in points
            if isinstance(p, dict) and p.get("value") is not None
            for start in (parse_time(p.get("point_time"), NAME),)
        ]
