"""The embedded forecaster: a per-zone climatology conditioned on recent history.

The model (fitted by `scripts/fit_embedded.py` on real grid traces, stored as gzip JSON in
`carbon/data/embedded_model.json.gz`) has, per zone:

- a climatology `c(t) = level(t) × shape(month, weekday/weekend, hour)`, where `level` is
  interpolated between mid-month means and `shape` is the normalised daily profile (UTC hours);
- per lead hour `h` (1..72), least-squares weights for a blend of features expressed as ratios to
  the climatology: the level of the last 24 h and of the last 168 h, the last value, and the same
  hour on the most recent day before the origin. The fit makes the weights sum to one and leaves
  the constant feature (a pull to the climatology's level) at weight 0, so forecasts scale with
  the history's level;
- per lead hour, the P10 and P90 of actual / forecast from walk-forward backtests on the fit data,
  with history and without it, giving a ~80 % band.

With no history the forecast is the climatology, so any date (also years past the fit) works.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from harchos_cli.carbon.types import Observation, Point
from harchos_cli.errors import NoCarbonDataError

MODEL_FILE = "embedded_model.json.gz"
HISTORY_HOURS = 168
"""Hours of history the features look at (older values are ignored)."""
MAX_LEAD = 72
"""Leads beyond this use the weights and band of lead `MAX_LEAD`."""
FEATURES = ("climatology", "level_24h", "level_168h", "last", "same_hour_yesterday")
MIN_HISTORY_FOR_BAND = 12
"""Valid values needed in the last 24 h to use the (narrower) with-history band."""
_RATIO_CLIP = (0.02, 20.0)

ArrayF = np.ndarray


def epoch_hour(moment: datetime) -> int:
    """Whole hours since 1970-01-01T00Z of the hour containing `moment` (naive means UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() // 3600)


@dataclass(frozen=True)
class ZoneParams:
    """The fitted parameters of one zone, as arrays."""

    level: ArrayF  # (12,) mean g/kWh per calendar month
    shape: ArrayF  # (12, 2, 24) daily profile per month, weekday(0)/weekend(1), UTC hour
    weights: ArrayF  # (MAX_LEAD, len(FEATURES))
    band_history: ArrayF  # (MAX_LEAD, 2) P10, P90 of actual / forecast
    band_climatology: ArrayF  # (MAX_LEAD, 2)

    def climatology(self, hours: ArrayF) -> ArrayF:
        """Climatological intensity for epoch hours (any shape of int array)."""
        return climatology(self.level, self.shape, hours)


def calendar(hours: ArrayF) -> tuple[ArrayF, ArrayF, ArrayF, ArrayF]:
    """Month index (0–11), weekend flag, UTC hour, and fractional month position of epoch hours.

    The fractional position is 0 at the middle of January, 1 at the middle of February, and so on
    (wrapping around), for interpolating between mid-month levels.
    """
    stamps = hours.astype("datetime64[h]")
    months = stamps.astype("datetime64[M]")
    month = (months.astype(np.int64) % 12).astype(np.int64)
    month_start = months.astype("datetime64[h]").astype(np.int64)
    month_len = (months + 1).astype("datetime64[h]").astype(np.int64) - month_start
    frac = (hours - month_start + 0.5) / month_len
    weekday = ((hours // 24) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    weekend = (weekday >= 5).astype(np.int64)
    return month, weekend, (hours % 24).astype(np.int64), month + frac - 0.5


def climatology(level: ArrayF, shape: ArrayF, hours: ArrayF) -> ArrayF:
    """Evaluate `level(t) × shape(month, weekend, hour)` at integer epoch hours."""
    month, weekend, hour, position = calendar(np.asarray(hours, dtype=np.int64))
    lower = np.floor(position).astype(np.int64)
    weight = position - lower
    smooth = level[lower % 12] * (1.0 - weight) + level[(lower + 1) % 12] * weight
    return np.asarray(smooth * shape[month, weekend, hour], dtype=np.float64)


def features(history: ArrayF, history_clim: ArrayF, horizon: int) -> ArrayF:
    """The blend's features (ratios to the climatology) for a batch of origins.

    Args:
        history: (n, HISTORY_HOURS) values before each origin, oldest first; NaN where unknown.
        history_clim: (n, HISTORY_HOURS) the climatology at those hours.
        horizon: Number of leads.

    Returns:
        (n, horizon, len(FEATURES)) feature array. Rows with no valid history get ratio 1
        everywhere, i.e. the climatology.
    """
    n = history.shape[0]
    valid = ~np.isnan(history)
    ratio = np.where(valid, history / history_clim, np.nan)

    def level(span: int, fallback: ArrayF) -> ArrayF:
        y = np.where(valid[:, -span:], history[:, -span:], 0.0).sum(axis=1)
        c = np.where(valid[:, -span:], history_clim[:, -span:], 0.0).sum(axis=1)
        return np.where(c > 0, y / np.where(c > 0, c, 1.0), fallback)

    level168 = level(HISTORY_HOURS, np.ones(n))
    level24 = level(24, level168)
    # the most recent valid ratio, whatever its age within the window
    last_pos = HISTORY_HOURS - 1 - np.argmax(valid[:, ::-1], axis=1)
    last = np.where(valid.any(axis=1), ratio[np.arange(n), last_pos], level24)

    leads = np.arange(1, horizon + 1)
    # lead 1 is the hour starting at the origin; the same hour on the most recent day before it
    back = 24 * ((leads + 23) // 24)
    pos = HISTORY_HOURS + leads - 1 - back  # index into history; always within the last 24 h
    same = ratio[:, pos]
    same = np.where(np.isnan(same), level24[:, None], same)

    out = np.empty((n, horizon, len(FEATURES)))
    out[:, :, 0] = 1.0
    out[:, :, 1] = level24[:, None]
    out[:, :, 2] = level168[:, None]
    out[:, :, 3] = last[:, None]
    out[:, :, 4] = same
    return out


def lead_rows(table: ArrayF, horizon: int) -> ArrayF:
    """Rows of a per-lead table for leads 1..horizon (leads past the table repeat its last row)."""
    idx = np.minimum(np.arange(horizon), table.shape[0] - 1)
    return np.asarray(table[idx])


def predict_batch(
    params: ZoneParams, history: ArrayF, origin_hours: ArrayF, horizon: int
) -> tuple[ArrayF, ArrayF, ArrayF]:
    """Point forecasts and bands for a batch of origins.

    Args:
        params: The zone's parameters.
        history: (n, HISTORY_HOURS) values in the hours before each origin, NaN where unknown.
        origin_hours: (n,) epoch hour of each origin (the hour of lead 1).
        horizon: Number of hours to forecast.

    Returns:
        (point, low, high), each (n, horizon).
    """
    origin_hours = np.asarray(origin_hours, dtype=np.int64)
    hist_hours = origin_hours[:, None] + np.arange(-HISTORY_HOURS, 0)
    target_hours = origin_hours[:, None] + np.arange(horizon)
    hist_clim = params.climatology(hist_hours)
    target_clim = params.climatology(target_hours)
    feats = features(history, hist_clim, horizon)
    weights = lead_rows(params.weights, horizon)
    ratio = np.clip(np.einsum("nhf,hf->nh", feats, weights), *_RATIO_CLIP)
    point = ratio * target_clim
    recent = (~np.isnan(history[:, -24:])).sum(axis=1) >= MIN_HISTORY_FOR_BAND
    band = np.where(
        recent[:, None, None],
        lead_rows(params.band_history, horizon)[None],
        lead_rows(params.band_climatology, horizon)[None],
    )
    return point, point * band[:, :, 0], point * band[:, :, 1]


class EmbeddedModel:
    """The offline forecaster shipped with harchos (see the module docstring)."""

    model_name = "harchos-embedded-1 (climatology × recent level, blended with persistence)"

    def __init__(self, document: dict[str, Any]) -> None:
        self._doc = document
        self._zones: dict[str, dict[str, Any]] = document["zones"]
        self._params: dict[str, ZoneParams] = {}
        self.fitted_at: str = str(document.get("fitted_at", ""))
        self.script: str = str(document.get("script", ""))

    @classmethod
    def load(cls) -> EmbeddedModel:
        """The packaged model (parsed once per process)."""
        return _load_packaged()

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> EmbeddedModel:
        """A model from an already parsed document (used by the fit script and tests)."""
        return cls(document)

    def zones(self) -> list[str]:
        """The zones the model covers, sorted."""
        return sorted(self._zones)

    def has_zone(self, zone: str) -> bool:
        """Whether the model covers `zone` (exact Electricity Maps id)."""
        return zone in self._zones

    def fit_info(self, zone: str) -> dict[str, Any]:
        """Sources, first/last hour fitted, and in-sample 24 h backtest MAPEs for `zone`."""
        return dict(self._zone(zone)["info"])

    def params(self, zone: str) -> ZoneParams:
        """The zone's parameters as arrays."""
        cached = self._params.get(zone)
        if cached is None:
            raw = self._zone(zone)
            cached = ZoneParams(
                level=np.asarray(raw["level"], dtype=np.float64),
                shape=np.asarray(raw["shape"], dtype=np.float64).reshape(12, 2, 24),
                weights=np.asarray(raw["weights"], dtype=np.float64).reshape(-1, len(FEATURES)),
                band_history=np.asarray(raw["band_history"], dtype=np.float64).reshape(-1, 2),
                band_climatology=np.asarray(raw["band_climatology"], dtype=np.float64).reshape(
                    -1, 2
                ),
            )
            self._params[zone] = cached
        return cached

    def forecast_values(
        self, zone: str, origin: datetime, horizon: int, history: ArrayF | None
    ) -> tuple[ArrayF, ArrayF, ArrayF]:
        """Forecast `horizon` hours from the hour containing `origin`.

        Args:
            zone: Electricity Maps zone id.
            origin: The forecast's first hour (floored to the hour).
            horizon: Number of hourly values.
            history: Hourly values ending right before the origin (most recent last); may be
                shorter than a week, contain NaN, or be None.

        Returns:
            (point, low, high) arrays of length `horizon`, in gCO2eq/kWh.
        """
        params = self.params(zone)
        window = np.full((1, HISTORY_HOURS), np.nan)
        if history is not None and len(history):
            recent = np.asarray(history, dtype=np.float64)[-HISTORY_HOURS:]
            window[0, HISTORY_HOURS - len(recent) :] = recent
        point, low, high = predict_batch(
            params, window, np.array([epoch_hour(origin)]), max(int(horizon), 0)
        )
        return point[0], low[0], high[0]

    def forecast(
        self,
        zone: str,
        start: datetime,
        hours: int,
        history: Sequence[Observation] = (),
    ) -> list[Point]:
        """Hourly forecast points from `start` (floored to the hour) for `hours` hours.

        Observations at or after the start are ignored; sub-hourly ones are averaged per hour.
        """
        origin = epoch_hour(start)
        window = np.full(HISTORY_HOURS, np.nan)
        if history:
            sums = np.zeros(HISTORY_HOURS)
            counts = np.zeros(HISTORY_HOURS)
            for obs in history:
                idx = epoch_hour(obs.start) - origin + HISTORY_HOURS
                if 0 <= idx < HISTORY_HOURS and np.isfinite(obs.intensity):
                    sums[idx] += obs.intensity
                    counts[idx] += 1
            seen = counts > 0
            window[seen] = sums[seen] / counts[seen]
        point, low, high = self.forecast_values(
            zone, datetime.fromtimestamp(origin * 3600, tz=UTC), hours, window
        )
        first = datetime.fromtimestamp(origin * 3600, tz=UTC)
        return [
            Point(
                start=first + timedelta(hours=i),
                end=first + timedelta(hours=i + 1),
                intensity=float(point[i]),
                low=float(low[i]),
                high=float(high[i]),
            )
            for i in range(len(point))
        ]

    def band_ratios(
        self, zone: str, horizon: int, with_history: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """P10 and P90 of actual / forecast for leads 1..horizon (multiply a forecast by them)."""
        params = self.params(zone)
        table = params.band_history if with_history else params.band_climatology
        rows = lead_rows(table, max(int(horizon), 0))
        return rows[:, 0].copy(), rows[:, 1].copy()

    def _zone(self, zone: str) -> dict[str, Any]:
        raw = self._zones.get(zone)
        if raw is None:
            close = [z for z in self._zones if z.upper().startswith(zone.upper()[:2])][:5]
            hint = f"zones nearby: {', '.join(sorted(close))}" if close else None
            raise NoCarbonDataError(
                f"the embedded model has no data for zone {zone!r}",
                hint=hint or f"it covers {len(self._zones)} zones, e.g. DE, FR, GB, US-CAL-CISO",
            )
        return raw


@cache
def _load_packaged() -> EmbeddedModel:
    resource = resources.files("harchos_cli.carbon").joinpath("data", MODEL_FILE)
    try:
        blob = resource.read_bytes()
    except FileNotFoundError:
        raise NoCarbonDataError(
            "the embedded model file is missing from the installation",
            hint="reinstall harchos, or run scripts/fit_embedded.py in a checkout",
        ) from None
    return EmbeddedModel(json.loads(gzip.decompress(blob)))
