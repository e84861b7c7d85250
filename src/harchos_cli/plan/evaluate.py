"""Score the embedded forecaster and forecast-driven scheduling on a real trace.

The protocol (docs/model.md, reference/carbon-data.md "Evaluation protocol"):

- the first `WARMUP_HOURS` of the trace are warm-up, never scored;
- forecast origins are the hours at 00, 06, 12 and 18 UTC; a forecast made at origin `t` sees only
  values before `t`; lead 1 is the hour starting at `t`;
- an origin counts only if every hour it needs (forecast horizon, or slack plus job) lies inside
  the trace;
- MAPE and MAE are taken over every (origin, lead) point; the baseline is 24 h persistence (the
  same hour on the most recent day before `t`);
- scheduling: a job of `L` hours arrives at each origin with `S` hours of slack and starts at a
  whole hour in `[t, t+S]` (interruptible: any `L` hours in `[t, t+S+L)`); it emits the mean actual
  intensity over its hours. The baseline starts at `t`; the oracle knows the actuals; the forecast
  and persistence policies pick the lowest predicted option, ties to the earliest.
  `saving = 1 − Σ policy / Σ baseline`, `share = saving(policy) / saving(oracle)`.

All savings, errors, shares and coverage are fractions (0.176 means 17.6 %); MAE is in gCO2eq/kWh.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harchos_cli.carbon.embedded import HISTORY_HOURS, EmbeddedModel, epoch_hour, predict_batch
from harchos_cli.carbon.traces import Trace
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import iso, parse_instant

WARMUP_HOURS = 14 * 24
ORIGIN_EVERY_HOURS = 6


def origins(trace: Trace, span: int) -> np.ndarray:
    """Indices of the scored origins: past warm-up, at 00/06/12/18 UTC, `span` hours inside."""
    first = epoch_hour(trace.start)
    idx = np.arange(WARMUP_HOURS, len(trace.values) - span + 1)
    return np.asarray(idx[(first + idx) % ORIGIN_EVERY_HOURS == 0])


def persistence_forecast(values: np.ndarray, idx: np.ndarray, horizon: int) -> np.ndarray:
    """Same hour on the most recent day before each origin, for leads 1..horizon: (n, horizon)."""
    leads = np.arange(1, horizon + 1)
    back = 24 * ((leads + 23) // 24)
    return np.asarray(values[idx[:, None] + leads[None, :] - 1 - back[None, :]])


def model_forecast(
    trace: Trace, model: EmbeddedModel, idx: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's (point, low, high) at each origin, given only the values before it."""
    zone = _zone(trace)
    padded = np.concatenate([np.full(HISTORY_HOURS, np.nan), trace.values])
    history = padded[idx[:, None] + np.arange(HISTORY_HOURS)]
    origin_hours = epoch_hour(trace.start) + idx
    return predict_batch(model.params(zone), history, origin_hours, horizon)


def backtest(trace: Trace, model: EmbeddedModel, horizon: int = 24) -> dict[str, Any]:
    """Day-ahead (or `horizon`-hour) forecast accuracy of the model vs 24 h persistence.

    Args:
        trace: The hourly trace to score on (its zone must be in the model).
        model: The embedded model.
        horizon: Forecast length in hours (leads 1..horizon).

    Returns:
        zone, horizon_hours, origins, mape, mae, coverage (share of actuals inside the P10–P90
        band), baseline {persistence_24h: {mape, mae}}, fit_overlap, note, period, model.

    Raises:
        UsageError: Bad horizon, no zone, or a trace too short for one scored origin.
        NoCarbonDataError: The model does not cover the trace's zone.
    """
    if horizon < 1:
        raise UsageError(f"horizon must be at least 1 hour, got {horizon}")
    idx = origins(trace, horizon)
    _need_origins(trace, idx, horizon)
    actual = trace.values[idx[:, None] + np.arange(horizon)]
    point, low, high = model_forecast(trace, model, idx, horizon)
    persistence = persistence_forecast(trace.values, idx, horizon)
    scored = actual > 0
    overlap = fit_overlap(trace, model)
    return {
        "zone": trace.zone,
        "model": model.model_name,
        "horizon_hours": horizon,
        "origins": len(idx),
        "mape": _mape(point, actual, scored),
        "mae": float(np.abs(point - actual).mean()),
        "coverage": float(((actual >= low) & (actual <= high)).mean()),
        "baseline": {
            "persistence_24h": {
                "mape": _mape(persistence, actual, scored),
                "mae": float(np.abs(persistence - actual).mean()),
            }
        },
        "fit_overlap": overlap,
        "note": _overlap_note(overlap),
        "period": _period(trace, idx, horizon),
    }


def evaluate(
    trace: Trace,
    model: EmbeddedModel,
    job_hours: int,
    slack_hours: int,
    interruptible: bool = False,
) -> dict[str, Any]:
    """Emission savings of scheduling jobs by the oracle, the model and 24 h persistence.

    Args:
        trace: The hourly trace (its zone must be in the model).
        model: The embedded model.
        job_hours: Job length L in whole hours (>= 1).
        slack_hours: Slack S in whole hours (>= 0).
        interruptible: Whether a job may run any L hours of `[t, t+S+L)`.

    Returns:
        zone, job_hours, slack_hours, interruptible, jobs, saving {oracle, forecast, persistence},
        share_of_oracle {forecast, persistence} (None when the oracle saves nothing), mean
        intensity per policy, fit_overlap, note, period, model.

    Raises:
        UsageError: Bad job length or slack, no zone, or a trace too short.
        NoCarbonDataError: The model does not cover the trace's zone.
    """
    if job_hours < 1:
        raise UsageError(f"job length must be at least 1 hour, got {job_hours}")
    if slack_hours < 0:
        raise UsageError(f"slack cannot be negative, got {slack_hours}")
    span = slack_hours + job_hours
    idx = origins(trace, span)
    _need_origins(trace, idx, span)
    actual = trace.values[idx[:, None] + np.arange(span)]
    point, _, _ = model_forecast(trace, model, idx, span)
    persistence = persistence_forecast(trace.values, idx, span)

    baseline = actual[:, :job_hours].mean(axis=1)
    if interruptible:
        oracle = np.sort(actual, axis=1)[:, :job_hours].mean(axis=1)
        by_model = _cheapest_hours(point, actual, job_hours)
        by_persistence = _cheapest_hours(persistence, actual, job_hours)
    else:
        windows = sliding_window_view(actual, job_hours, axis=1).mean(axis=2)
        oracle = windows.min(axis=1)
        by_model = _cheapest_start(point, windows, job_hours)
        by_persistence = _cheapest_start(persistence, windows, job_hours)

    total = float(baseline.sum())
    if total <= 0:
        raise UsageError(
            f"every intensity in {trace.path.name} is zero: savings are undefined",
            hint="evaluate a trace of lifecycle intensity, which is never zero",
        )
    saving = {
        "oracle": 1.0 - float(oracle.sum()) / total,
        "forecast": 1.0 - float(by_model.sum()) / total,
        "persistence": 1.0 - float(by_persistence.sum()) / total,
    }
    oracle_saving = saving["oracle"]
    share = {
        name: (saving[name] / oracle_saving if oracle_saving > 0 else None)
        for name in ("forecast", "persistence")
    }
    overlap = fit_overlap(trace, model)
    return {
        "zone": trace.zone,
        "model": model.model_name,
        "job_hours": job_hours,
        "slack_hours": slack_hours,
        "interruptible": interruptible,
        "jobs": len(idx),
        "saving": saving,
        "share_of_oracle": share,
        "mean_intensity": {
            "baseline": float(baseline.mean()),
            "oracle": float(oracle.mean()),
            "forecast": float(by_model.mean()),
            "persistence": float(by_persistence.mean()),
        },
        "fit_overlap": overlap,
        "note": _overlap_note(overlap),
        "period": _period(trace, idx, span),
    }


def fit_overlap(trace: Trace, model: EmbeddedModel) -> bool:
    """Whether the trace's period overlaps the hours the model was fitted on for its zone."""
    info = model.fit_info(_zone(trace))
    fit_start = parse_instant(str(info["fit_start"]))
    fit_end = parse_instant(str(info["fit_end"]))
    return trace.start <= fit_end and fit_start < trace.end()


def _cheapest_start(
    predicted: np.ndarray, actual_windows: np.ndarray, job_hours: int
) -> np.ndarray:
    # windows are summed by the same code path for every start, so equal forecasts tie exactly
    predicted_windows = sliding_window_view(predicted, job_hours, axis=1).mean(axis=2)
    best = np.argmin(predicted_windows, axis=1)  # first minimum: the earliest start
    return np.asarray(actual_windows[np.arange(len(best)), best])


def _cheapest_hours(predicted: np.ndarray, actual: np.ndarray, job_hours: int) -> np.ndarray:
    order = np.argsort(predicted, axis=1, kind="stable")[:, :job_hours]
    return np.asarray(np.take_along_axis(actual, order, axis=1).mean(axis=1))


def _mape(predicted: np.ndarray, actual: np.ndarray, scored: np.ndarray) -> float | None:
    """MAPE over the non-zero actuals; None when there are none (undefined, not NaN)."""
    if not scored.any():
        return None
    return float((np.abs(predicted - actual)[scored] / actual[scored]).mean())


def _zone(trace: Trace) -> str:
    if not trace.zone:
        raise UsageError(
            f"cannot tell which zone {trace.path.name} is for", hint="give the zone with --zone"
        )
    return trace.zone


def _need_origins(trace: Trace, idx: np.ndarray, span: int) -> None:
    if len(idx) == 0:
        days = len(trace.values) / 24
        raise UsageError(
            f"{trace.path.name} is too short to score ({days:.1f} days)",
            hint=f"need {WARMUP_HOURS // 24} days of warm-up plus {span} h after an origin",
        )


def _overlap_note(overlap: bool) -> str:
    if overlap:
        return "in-sample: the model was fitted on data overlapping this trace's period"
    return "out-of-sample: the trace lies outside the model's fit period"


def _period(trace: Trace, idx: np.ndarray, span: int) -> dict[str, Any]:
    hour = 3600

    def at(i: int) -> datetime:
        return datetime.fromtimestamp((epoch_hour(trace.start) + i) * hour, tz=trace.start.tzinfo)

    return {
        "start": iso(trace.start),
        "end": iso(trace.end()),
        "hours": len(trace.values),
        "first_origin": iso(at(int(idx[0]))),
        "last_origin": iso(at(int(idx[-1]))),
        "scored_until": iso(at(int(idx[-1]) + span)),
    }
