"""The embedded forecaster: a per-zone climatology and a per-lead regression on recent history.

The model (fitted by `scripts/fit_embedded.py` on real grid traces, stored as gzip JSON in
`carbon/data/embedded_model.json.gz`; see docs/model.md) has, per zone:

- a climatology `c(t) = level(t) × shape(month, day type, hour)`, where `level` is interpolated
  between mid-month means, the day types are Monday–Friday, Saturday and Sunday, and `shape` is
  the normalised daily profile (UTC hours);
- per lead hour `h` (1..`MAX_LEAD`), ridge-regression weights that predict the log ratio
  `log(actual / climatology)` at `t + h - 1` from recent log ratios: the mean of the last 168 h
  (the anchor) plus weighted deviations from it of the mean of the last 24 h, each of the last 24
  hours, the same hour 1–7 days back and a week back, and (with four weeks known) the 4-week mean
  of the same hour of the week and of the day and the 4-week mean; plus a term per target hour
  of day and day type. Three weight sets: `long` (at least 80 % of the last 4 weeks known),
  `full` (80 % of the last week) and `short` (the last 24 h, what a free live provider gives);
  with less than 12 of the last 24 hours known the forecast is the climatology;
- per lead, the P10 and P90 of the log error, scaled by a factor calibrated on held-out data and by
  the recent volatility, giving the ~80 % band.

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
FORMAT = 3
HISTORY_HOURS = 672
"""Hours of history the features look at (four weeks; older values are ignored)."""
MAX_LEAD = 72
"""Leads beyond this use the weights and band of lead `MAX_LEAD`."""
DAY_TYPES = 3
"""Monday–Friday, Saturday, Sunday."""
LAGS = 24
MODES = ("long", "full", "short")
"""The weight sets, by how much recent history is known (else the climatology)."""
MODE_HOURS = {"long": HISTORY_HOURS, "full": 168, "short": 24}
"""Hours each weight set looks at; its anchor is the mean of the last 168 h (24 h for short)."""
KNOWN_SHARE = 0.8
"""Share of a mode's hours that must be known to use its weights (short: see below)."""
FULL_HISTORY_SHARE = KNOWN_SHARE
MIN_HISTORY_FOR_BAND = 12
"""Known values needed in the last 24 h to use the short weights (else the climatology)."""
DAYS_BACK = {"long": 7, "full": 7, "short": 1}
"""The same hour 1..N days back are features."""
CALENDAR_TERMS = 24 + DAY_TYPES
"""One-hot of the target's UTC hour and day type (per lead, so a per-hour-of-day offset)."""
COMMON_FEATURES = {
    "long": ("mean_24h", *(f"lag_{k}" for k in range(1, LAGS + 1)), "mean_672h"),
    "full": ("mean_24h", *(f"lag_{k}" for k in range(1, LAGS + 1))),
    "short": tuple(f"lag_{k}" for k in range(1, LAGS + 1)),
}
"""Features shared by every lead, minus the anchor."""
LEAD_FEATURES = {
    "long": (
        *(f"same_hour_{k}d" for k in range(1, 8)),
        "same_hour_week",
        "hour_of_week_mean_4w",
        "hour_of_day_mean_28d",
        *(f"hour_{h}" for h in range(24)),
        "weekday",
        "saturday",
        "sunday",
    ),
    "full": (
        *(f"same_hour_{k}d" for k in range(1, 8)),
        "same_hour_week",
        *(f"hour_{h}" for h in range(24)),
        "weekday",
        "saturday",
        "sunday",
    ),
    "short": ("same_hour_1d", *(f"hour_{h}" for h in range(24)), "weekday", "saturday", "sunday"),
}
"""Features that depend on the lead (the target's hour), minus the anchor except the calendar."""
VOLATILITY_CLIP = (0.5, 3.0)
_FLOOR = 1e-3
_LOG_RATIO_CLIP = (-4.0, 3.0)

ArrayF = np.ndarray


def epoch_hour(moment: datetime) -> int:
    """Whole hours since 1970-01-01T00Z of the hour containing `moment` (naive means UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() // 3600)


def calendar(hours: ArrayF) -> tuple[ArrayF, ArrayF, ArrayF, ArrayF]:
    """Month index (0–11), day type, UTC hour, and fractional month position of epoch hours.

    Day type is 0 for Monday–Friday, 1 for Saturday, 2 for Sunday. The fractional position is 0
    at the middle of January, 1 at the middle of February, and so on (wrapping around), for
    interpolating between mid-month levels.
    """
    hours = np.asarray(hours, dtype=np.int64)
    stamps = hours.astype("datetime64[h]")
    months = stamps.astype("datetime64[M]")
    month = (months.astype(np.int64) % 12).astype(np.int64)
    month_start = months.astype("datetime64[h]").astype(np.int64)
    # `+ np.timedelta64(1, "M")`: adding a bare 1 is deprecated in NumPy 2.5.
    next_month = months + np.timedelta64(1, "M")
    month_len = next_month.astype("datetime64[h]").astype(np.int64) - month_start
    frac = (hours - month_start + 0.5) / month_len
    weekday = ((hours // 24) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    day_type = np.clip(weekday - 4, 0, 2).astype(np.int64)
    return month, day_type, (hours % 24).astype(np.int64), month + frac - 0.5


def climatology(level: ArrayF, shape: ArrayF, hours: ArrayF) -> ArrayF:
    """Evaluate `level(t) × shape(month, day type, hour)` at integer epoch hours."""
    month, day_type, hour, position = calendar(hours)
    lower = np.floor(position).astype(np.int64)
    weight = position - lower
    smooth = level[lower % 12] * (1.0 - weight) + level[(lower + 1) % 12] * weight
    return np.asarray(smooth * shape[month, day_type, hour], dtype=np.float64)


def log_ratios(values: ArrayF, clim: ArrayF) -> ArrayF:
    """`log(value / climatology)`, NaN where the value is unknown."""
    with np.errstate(invalid="ignore"):
        ratio = np.log(np.maximum(values, _FLOOR) / clim)
    return np.asarray(np.clip(ratio, *_LOG_RATIO_CLIP))


def feature_width(mode: str) -> int:
    """Number of weights per lead of a mode."""
    return len(COMMON_FEATURES[mode]) + len(LEAD_FEATURES[mode])


def restrict(ratios: ArrayF, mode: str) -> ArrayF:
    """The history a mode may see: values older than its `MODE_HOURS` become unknown."""
    out = np.array(ratios, dtype=np.float64)
    out[:, : out.shape[1] - MODE_HOURS[mode]] = np.nan
    return out


def features(
    ratios: ArrayF, origin_hours: ArrayF, leads: ArrayF, mode: str
) -> tuple[ArrayF, ArrayF, ArrayF]:
    """The regression's anchor and features for a batch of origins.

    Every log-ratio feature is taken minus the anchor (the mean log ratio of the last 168 h, or
    of the last 24 h for the short weights), and so is the target: the forecast is the anchor
    plus a weighted sum of deviations from it and a calendar term. A level that moved between
    years moves the anchor, and nothing pulls the forecast back to the climatology's level.

    Args:
        ratios: (n, HISTORY_HOURS) log ratios to the climatology before each origin, oldest
            first; NaN where unknown (filled with the mean of the last 24 known hours). Only the
            last `MODE_HOURS[mode]` are looked at.
        origin_hours: (n,) epoch hour of each origin (the hour of lead 1).
        leads: The leads (1-based) to build the per-lead features for.
        mode: `long`, `full` or `short` (see `MODES`).

    Returns:
        anchor (n,), common (n, len(COMMON_FEATURES[mode])) and per-lead
        (n, len(leads), len(LEAD_FEATURES[mode])) arrays.
    """
    span = MODE_HOURS[mode]
    recent = np.asarray(ratios, dtype=np.float64)[:, -span:]
    n = recent.shape[0]
    if recent.shape[1] < span:  # a shorter window: the older hours are unknown
        pad = np.full((n, span - recent.shape[1]), np.nan)
        recent = np.concatenate([pad, recent], axis=1)
    valid = ~np.isnan(recent)

    def mean(hours: int, fallback: ArrayF) -> ArrayF:
        count = valid[:, -hours:].sum(axis=1)
        total = np.where(valid[:, -hours:], recent[:, -hours:], 0.0).sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), fallback)

    mean24 = mean(24, np.zeros(n))
    filled = np.where(valid, recent, mean24[:, None])
    anchor = mean24 if mode == "short" else mean(168, mean24)
    columns = [filled[:, ::-1][:, :LAGS]]
    if mode != "short":
        columns.insert(0, mean24[:, None])
    if mode == "long":
        columns.append(mean(span, mean24)[:, None])
    common = np.column_stack(columns) - anchor[:, None]

    leads = np.asarray(leads, dtype=np.int64)
    # lead 1 is the hour starting at the origin; "same hour" means the most recent such hour
    back = 24 * ((leads + 23) // 24)
    offsets = [back + 24 * k for k in range(DAYS_BACK[mode])]
    if mode != "short":
        offsets.append(168 * ((leads + 167) // 168))
    per = []
    for offset in offsets:
        pos = span + leads - 1 - offset
        # beyond the window (long leads) the feature repeats the same hour yesterday
        pos = np.where(pos >= 0, pos, span + leads - 1 - back)
        pos = np.where(pos >= 0, pos, span - 1)
        per.append(filled[:, pos] - anchor[:, None])

    def known_mean(offsets: list[ArrayF]) -> ArrayF:
        total = np.zeros((n, len(leads)))
        count = np.zeros((n, len(leads)))
        for offset in offsets:
            pos = span + leads - 1 - offset
            inside = pos >= 0
            values = recent[:, np.where(inside, pos, 0)]
            known = ~np.isnan(values) & inside[None, :]
            total += np.where(known, values, 0.0)
            count += known
        return np.where(count > 0, total / np.maximum(count, 1), anchor[:, None])

    if mode == "long":
        week = 168 * ((leads + 167) // 168)
        per.append(known_mean([week + 168 * k for k in range(4)]) - anchor[:, None])
        per.append(known_mean([back + 24 * k for k in range(28)]) - anchor[:, None])
    target = np.asarray(origin_hours, dtype=np.int64)[:, None] + leads[None, :] - 1
    _, day_type, hour, _ = calendar(target.ravel())
    terms = np.zeros((n * len(leads), CALENDAR_TERMS))
    rows = np.arange(n * len(leads))
    terms[rows, hour] = 1.0
    terms[rows, 24 + day_type] = 1.0
    lead_part = np.concatenate(
        [np.stack(per, axis=2), terms.reshape(n, len(leads), CALENDAR_TERMS)], axis=2
    )
    return anchor, common, lead_part


def lead_rows(table: ArrayF, horizon: int) -> ArrayF:
    """Rows of a per-lead table for leads 1..horizon (leads past the table repeat its last row)."""
    idx = np.minimum(np.arange(horizon), table.shape[0] - 1)
    return np.asarray(table[idx])


def volatility(ratios: ArrayF) -> ArrayF:
    """Mean absolute day-over-day change of the log ratios over the last 144 h (NaN if unknown)."""
    change = np.abs(ratios[:, -144:] - ratios[:, -168:-24])
    known = ~np.isnan(change)
    total = np.where(known, change, 0.0).sum(axis=1)
    count = known.sum(axis=1)
    return np.where(count >= 24, total / np.maximum(count, 1), np.nan)


def history_modes(ratios: ArrayF) -> dict[str, ArrayF]:
    """Which origins (rows of `ratios`, (n, HISTORY_HOURS)) each weight set serves."""
    known = ~np.isnan(ratios)
    long = known.mean(axis=1) >= KNOWN_SHARE
    full = ~long & (known[:, -168:].mean(axis=1) >= KNOWN_SHARE)
    short = ~long & ~full & (known[:, -24:].sum(axis=1) >= MIN_HISTORY_FOR_BAND)
    return {"long": long, "full": full, "short": short}


@dataclass(frozen=True)
class ZoneParams:
    """The fitted parameters of one zone, as arrays."""

    level: ArrayF  # (12,) mean g/kWh per calendar month
    shape: ArrayF  # (12, DAY_TYPES, 24) daily profile per month, day type, UTC hour
    weights: dict[str, ArrayF]  # per mode: (MAX_LEAD, feature_width(mode))
    bands: dict[str, ArrayF]  # per mode: (MAX_LEAD, 2) P10, P90 of log(actual / forecast)
    band_climatology: ArrayF  # (MAX_LEAD, 2)
    volatility_ref: float  # typical `volatility` in the fit data
    band_scale: float = 1.0  # calibration factor on the band's log width
    volatility_power: float = 0.0  # band width ∝ (volatility / volatility_ref) ** power

    def climatology(self, hours: ArrayF) -> ArrayF:
        """Climatological intensity for epoch hours (any shape of int array)."""
        return climatology(self.level, self.shape, hours)


def regress(
    ratios: ArrayF, origin_hours: ArrayF, weights: ArrayF, horizon: int, mode: str
) -> ArrayF:
    """Predicted log ratios (n, horizon) from history log ratios and per-lead weights."""
    leads = np.arange(1, horizon + 1)
    anchor, common, per = features(ratios, origin_hours, leads, mode)
    rows = lead_rows(weights, horizon)
    n_common = common.shape[1]
    out = anchor[:, None] + common @ rows[:, :n_common].T
    out += np.einsum("nhf,hf->nh", per, rows[:, n_common:])
    return np.asarray(out)


def predict_batch(
    params: ZoneParams, history: ArrayF, origin_hours: ArrayF, horizon: int
) -> tuple[ArrayF, ArrayF, ArrayF]:
    """Point forecasts and bands for a batch of origins.

    Args:
        params: The zone's parameters.
        history: (n, HISTORY_HOURS) values in the hours before each origin, NaN where unknown
            (a shorter window is read as its most recent hours, the older ones unknown).
        origin_hours: (n,) epoch hour of each origin (the hour of lead 1).
        horizon: Number of hours to forecast.

    Returns:
        (point, low, high), each (n, horizon), with low <= point <= high.
    """
    origin_hours = np.asarray(origin_hours, dtype=np.int64)
    n = len(origin_hours)
    history = np.asarray(history, dtype=np.float64).reshape(n, -1)[:, -HISTORY_HOURS:]
    if history.shape[1] < HISTORY_HOURS:
        pad = np.full((n, HISTORY_HOURS - history.shape[1]), np.nan)
        history = np.concatenate([pad, history], axis=1)
    ratios = log_ratios(
        history, params.climatology(origin_hours[:, None] + np.arange(-HISTORY_HOURS, 0))
    )
    target_clim = params.climatology(origin_hours[:, None] + np.arange(horizon))
    log_point = np.zeros((n, horizon))
    band = np.broadcast_to(lead_rows(params.band_climatology, horizon), (n, horizon, 2)).copy()
    for mode, chosen in history_modes(ratios).items():
        if not chosen.any():
            continue
        log_point[chosen] = regress(
            ratios[chosen], origin_hours[chosen], params.weights[mode], horizon, mode
        )
        scale = np.full(int(chosen.sum()), params.band_scale)
        if params.volatility_power and mode != "short":
            reference = max(params.volatility_ref, 1e-6)
            ratio = np.nan_to_num(volatility(ratios[chosen]) / reference, nan=1.0)
            scale *= np.clip(ratio, *VOLATILITY_CLIP) ** params.volatility_power
        band[chosen] = lead_rows(params.bands[mode], horizon)[None] * scale[:, None, None]
    log_point = np.clip(log_point, *_LOG_RATIO_CLIP)
    point = np.exp(log_point) * target_clim
    low = point * np.exp(np.minimum(band[:, :, 0], 0.0))
    high = point * np.exp(np.maximum(band[:, :, 1], 0.0))
    return point, low, high


class EmbeddedModel:
    """The offline forecaster shipped with harchos (see the module docstring)."""

    model_name = "harchos-embedded-3 (seasonal profile, corrected by recent actuals when known)"

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

    @classmethod
    def from_file(cls, path: str | Any) -> EmbeddedModel:
        """A model from a gzip JSON file written by `scripts/fit_embedded.py`."""
        with open(path, "rb") as handle:
            return cls(json.loads(gzip.decompress(handle.read())))

    def zones(self) -> list[str]:
        """The zones the model covers, sorted."""
        return sorted(self._zones)

    def has_zone(self, zone: str) -> bool:
        """Whether the model covers `zone` (exact Electricity Maps id)."""
        return zone in self._zones

    def fit_info(self, zone: str) -> dict[str, Any]:
        """Sources, first/last hour fitted, and the zone's backtest figures (see `explain`)."""
        return dict(self._zone(zone)["info"])

    def params(self, zone: str) -> ZoneParams:
        """The zone's parameters as arrays."""
        cached = self._params.get(zone)
        if cached is None:
            raw = self._zone(zone)
            packed = raw.get("params")
            if isinstance(packed, str):  # parsed on first use: loading stays fast
                raw = json.loads(packed)
            shared = self._doc.get("shared", {})

            unit = float(self._doc.get("weight_scale", 1.0))  # offsets stored as integers

            def table(key: str, width: int) -> ArrayF:
                values = unit * np.asarray(raw[key], dtype=np.float64).reshape(-1, width)
                base = shared.get(key)
                if base is not None:  # per-zone weights are stored as offsets from shared ones
                    values = values + np.asarray(base, dtype=np.float64).reshape(-1, width)
                return values

            cached = ZoneParams(
                level=np.asarray(raw["level"], dtype=np.float64),
                shape=np.asarray(raw["shape"], dtype=np.float64).reshape(12, DAY_TYPES, 24),
                weights={m: table(f"weights_{m}", feature_width(m)) for m in MODES},
                bands={
                    m: np.asarray(raw[f"band_{m}"], dtype=np.float64).reshape(-1, 2) for m in MODES
                },
                band_climatology=np.asarray(raw["band_climatology"], dtype=np.float64).reshape(
                    -1, 2
                ),
                volatility_ref=float(raw["volatility_ref"]),
                band_scale=float(self._doc.get("band_scale", 1.0)),
                volatility_power=float(self._doc.get("volatility_power", 0.0)),
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
        window = _history_window(origin, history)
        first = datetime.fromtimestamp(origin * 3600, tz=UTC)
        point, low, high = self.forecast_values(zone, first, hours, window)
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
        """P10 and P90 of actual / forecast for leads 1..horizon (multiply a forecast by them).

        With history this is the full-history band at typical volatility.
        """
        params = self.params(zone)
        if with_history:
            rows = lead_rows(params.bands["full"], max(int(horizon), 0)) * params.band_scale
        else:
            rows = lead_rows(params.band_climatology, max(int(horizon), 0))
        return np.exp(np.minimum(rows[:, 0], 0.0)), np.exp(np.maximum(rows[:, 1], 0.0))

    def history_mode(self, history_hours: int) -> str:
        """Which weights a history of `history_hours` consecutive known hours selects: `long`
        (four weeks), `full` (a week), `short` (a day) or `climatology`."""
        known = min(max(int(history_hours), 0), HISTORY_HOURS)
        if known >= KNOWN_SHARE * MODE_HOURS["long"]:
            return "long"
        if known >= KNOWN_SHARE * MODE_HOURS["full"]:
            return "full"
        if min(known, 24) >= MIN_HISTORY_FOR_BAND:
            return "short"
        return "climatology"

    def explain(self, zone: str, history_hours: int) -> dict[str, Any]:
        """What the model is, what this forecast used, and how well it did for `zone`, for
        `harchos forecast --explain`.

        Args:
            zone: Electricity Maps zone id.
            history_hours: Hours of recent history (consecutive, ending at the origin) the
                forecast is given.

        Returns:
            A JSON-ready dict: model, method (in plain words, what this forecast was made
            from), model_description (the model in general), fitted_at, fit {start, end, hours,
            sources}, history {given_hours, used_hours, mode, description}, backtest (the zone's
            scores as stored by the fit script: kind "held-out" or "in-sample", period,
            horizon_hours, mape, coverage, persistence_mape, share_of_oracle_1h / _6h and their
            persistence values where known, or None when the fit recorded nothing).

        Raises:
            NoCarbonDataError: The model does not cover `zone`.
        """
        info = self.fit_info(zone)
        given = max(int(history_hours), 0)
        mode = self.history_mode(given)
        used = 0 if mode == "climatology" else min(given, MODE_HOURS[mode])
        if mode == "climatology":
            why = (
                "no recent actuals were available"
                if given == 0
                else f"only {given} recent hour{'s' if given != 1 else ''} of actuals were "
                f"known, and it needs at least {MIN_HISTORY_FOR_BAND} of the last 24"
            )
            method = f"seasonal profile only (month, day type, hour): {why}"
            description = f"none: {why}, so the seasonal profile alone"
        else:
            method = (
                f"regression on the last {used} h of actuals over the seasonal profile "
                "(month, day type, hour)"
            )
            description = {
                "long": f"the last {used} h of actuals: their 24 h and 168 h means, each of the "
                "last 24 hours, the same hour 1–7 days back, the 4-week mean of the same hour "
                "of the week and of the day",
                "full": f"the last {used} h of actuals: their 24 h and 168 h means, each of the "
                "last 24 hours, the same hour 1–7 days back",
                "short": f"the last {used} h of actuals: their mean, each hour, the same hour "
                "yesterday",
            }[mode]
        return {
            "model": self.model_name,
            "method": method,
            "model_description": "per-zone seasonal profile (climatology) × per-lead ridge "
            "regression of log(actual / climatology) on the last 24 h, week or 4 weeks of "
            "actuals, whichever is known; P10–P90 band from calibrated residual quantiles",
            "fitted_at": self.fitted_at,
            "fit": {
                "start": info.get("fit_start"),
                "end": info.get("fit_end"),
                "hours": info.get("hours"),
                "sources": list(info.get("sources", [])),
            },
            "history": {
                "given_hours": int(history_hours),
                "used_hours": used,
                "mode": mode,
                "description": description,
            },
            "backtest": info.get("backtest"),
        }

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


def _history_window(origin: int, history: Sequence[Observation]) -> ArrayF:
    """Hourly means of the observations in the `HISTORY_HOURS` before `origin` (NaN if none)."""
    window = np.full(HISTORY_HOURS, np.nan)
    if not history:
        return window
    sums = np.zeros(HISTORY_HOURS)
    counts = np.zeros(HISTORY_HOURS)
    for obs in history:
        idx = epoch_hour(obs.start) - origin + HISTORY_HOURS
        if 0 <= idx < HISTORY_HOURS and np.isfinite(obs.intensity):
            sums[idx] += obs.intensity
            counts[idx] += 1
    seen = counts > 0
    window[seen] = sums[seen] / counts[seen]
    return window


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
