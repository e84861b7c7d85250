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
  and persistence policies pick the lowest predicted option once, at `t`, ties to the earliest.
  The rolling policy is what a waiting job does: at `t` and every hour after it, the model
  forecasts again from the actuals revealed so far and the supervisor's own rule
  (`plan.planner.choose`, with the minimum worthwhile saving) decides whether the job starts now;
  an interruptible job is run hour by hour by the supervisor's own `plan.shifting.plan_step`
  (pauses cost their restart time). `saving = 1 − Σ policy / Σ baseline`,
  `share = saving(policy) / saving(oracle)`.
- history: `history_hours` limits what the model sees before each origin (0: none, as offline;
  24: a live provider's day; None: the whole trace before the origin, up to the model's window).
- spatial (`evaluate_spatial`, one trace per hub): the baseline starts at `t` on the first hub; the
  policies choose the hub and the start together; the first hub's own figures are reported beside.

All savings, errors, shares and coverage are fractions (0.176 means 17.6 %); MAE is in gCO2eq/kWh.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harchos_cli.carbon.embedded import HISTORY_HOURS, EmbeddedModel, epoch_hour, predict_batch
from harchos_cli.carbon.traces import Trace
from harchos_cli.carbon.types import Forecast, Point, Region, Source
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import iso, parse_duration, parse_instant

WARMUP_HOURS = 14 * 24
ORIGIN_EVERY_HOURS = 6
DEFAULT_MIN_SAVING = 0.02
"""The product's default `plan.min_saving_percent` (2 %), as a fraction."""
_HOUR = timedelta(hours=1)
_HISTORY_HINT = "give 0h (offline), 24h (a live provider's day), 168h (a week), or all"
Hourly = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Forecasts made at consecutive hours: (point, low, high), each (hours, leads)."""


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
    trace: Trace,
    model: EmbeddedModel,
    idx: np.ndarray,
    horizon: int,
    history_hours: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's (point, low, high) at each origin, given only the values before it (and of
    those, only the last `history_hours`; None: all the model looks at)."""
    zone = _zone(trace)
    padded = np.concatenate([np.full(HISTORY_HOURS, np.nan), trace.values])
    history = padded[idx[:, None] + np.arange(HISTORY_HOURS)]
    if history_hours is not None and history_hours < HISTORY_HOURS:
        history[:, : HISTORY_HOURS - max(history_hours, 0)] = np.nan
    origin_hours = epoch_hour(trace.start) + idx
    return predict_batch(model.params(zone), history, origin_hours, horizon)


def backtest(
    trace: Trace, model: EmbeddedModel, horizon: int = 24, history_hours: int | None = None
) -> dict[str, Any]:
    """Day-ahead (or `horizon`-hour) forecast accuracy of the model vs 24 h persistence.

    Args:
        trace: The hourly trace to score on (its zone must be in the model).
        model: The embedded model.
        horizon: Forecast length in hours (leads 1..horizon).
        history_hours: Hours before each origin the model may see (None: all it looks at).

    Returns:
        zone, horizon_hours, history_hours, origins, mape, mae, coverage (share of actuals inside
        the P10–P90 band), baseline {persistence_24h: {mape, mae}}, fit_overlap, note, period,
        model.

    Raises:
        UsageError: Bad horizon or history, no zone, or a trace too short for one scored origin.
        NoCarbonDataError: The model does not cover the trace's zone.
    """
    if horizon < 1:
        raise UsageError(f"horizon must be at least 1 hour, got {horizon}")
    _check_history(history_hours)
    idx = origins(trace, horizon)
    _need_origins(trace, idx, horizon)
    actual = trace.values[idx[:, None] + np.arange(horizon)]
    point, low, high = model_forecast(trace, model, idx, horizon, history_hours)
    persistence = persistence_forecast(trace.values, idx, horizon)
    scored = actual > 0
    overlap = fit_overlap(trace, model)
    return {
        "zone": trace.zone,
        "model": model.model_name,
        "horizon_hours": horizon,
        "history_hours": history_hours,
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
    *,
    history_hours: int | None = None,
    min_saving: float = DEFAULT_MIN_SAVING,
    rolling: bool = True,
) -> dict[str, Any]:
    """Emission savings of scheduling jobs by the oracle, the model and 24 h persistence.

    Args:
        trace: The hourly trace (its zone must be in the model).
        model: The embedded model.
        job_hours: Job length L in whole hours (>= 1).
        slack_hours: Slack S in whole hours (>= 0).
        interruptible: Whether a job may run any L hours of `[t, t+S+L)`.
        history_hours: Hours before each forecast the model may see (None: all it looks at).
        min_saving: The rolling policy's minimum worthwhile saving (`plan.min_saving_percent`).
        rolling: Also score the rolling policy (the slow one: a plan per job and hour).

    Returns:
        zone, job_hours, slack_hours, interruptible, history_hours, min_saving, jobs, saving
        {oracle, forecast, rolling, persistence}, share_of_oracle {forecast, rolling,
        persistence} (None when the oracle saves nothing), mean intensity per policy,
        fit_overlap, note, period, model. Without `rolling`, its keys are absent.

    Raises:
        UsageError: Bad job length, slack or history, no zone, or a trace too short.
        NoCarbonDataError: The model does not cover the trace's zone.
    """
    _check_job(job_hours, slack_hours)
    _check_history(history_hours)
    span = slack_hours + job_hours
    idx = origins(trace, span)
    _need_origins(trace, idx, span)
    actual = trace.values[idx[:, None] + np.arange(span)]
    # The rolling policy needs a forecast at every hour; the single-shot one is those at origins.
    hourly = hourly_forecasts(trace, model, idx, span, history_hours) if rolling else None
    if hourly is not None:
        point = hourly[0][idx - idx.min()]
    else:
        point, _, _ = model_forecast(trace, model, idx, span, history_hours)
    persistence = persistence_forecast(trace.values, idx, span)

    baseline = actual[:, :job_hours].mean(axis=1)
    policies: dict[str, np.ndarray] = {}
    if interruptible:
        policies["oracle"] = np.sort(actual, axis=1)[:, :job_hours].mean(axis=1)
        policies["forecast"] = _cheapest_hours(point, actual, job_hours)
        if hourly is not None:
            policies["rolling"] = rolling_interruptible(
                trace, hourly[0], idx, job_hours=job_hours, slack_hours=slack_hours
            )
        policies["persistence"] = _cheapest_hours(persistence, actual, job_hours)
    else:
        windows = sliding_window_view(actual, job_hours, axis=1).mean(axis=2)
        policies["oracle"] = windows.min(axis=1)
        policies["forecast"] = _cheapest_start(point, windows, job_hours)
        if hourly is not None:
            starts, _ = rolling_starts(
                [trace], [hourly], idx, job_hours=job_hours, slack_hours=slack_hours,
                min_saving=min_saving,
            )  # fmt: skip
            policies["rolling"] = windows[np.arange(len(idx)), starts]
        policies["persistence"] = _cheapest_start(persistence, windows, job_hours)

    saving = _savings(trace, baseline, policies)
    overlap = fit_overlap(trace, model)
    return {
        "zone": trace.zone,
        "model": model.model_name,
        "job_hours": job_hours,
        "slack_hours": slack_hours,
        "interruptible": interruptible,
        "history_hours": history_hours,
        "min_saving": min_saving,
        "jobs": len(idx),
        "saving": saving,
        "share_of_oracle": _shares(saving),
        "mean_intensity": {
            "baseline": float(baseline.mean()),
            **{name: float(values.mean()) for name, values in policies.items()},
        },
        "fit_overlap": overlap,
        "note": _overlap_note(overlap),
        "period": _period(trace, idx, span),
    }


def evaluate_spatial(
    traces: Sequence[Trace],
    model: EmbeddedModel,
    job_hours: int,
    slack_hours: int,
    *,
    history_hours: int | None = None,
    min_saving: float = DEFAULT_MIN_SAVING,
) -> dict[str, Any]:
    """Savings of choosing the hub and the start together, one trace per hub.

    The baseline starts each job at once on the first hub. The oracle, the single-shot forecast,
    the rolling policy (`plan.planner.choose` over every hub each hour, as `--hub auto` re-plans)
    and persistence choose among every hub and start; the first hub's own (time-only) figures come
    beside them, so the gain of moving in space is their difference. The traces are scored over
    the hours they all cover.

    Returns:
        zones, hubs, job_hours, slack_hours, history_hours, min_saving, jobs, saving and
        share_of_oracle {oracle, forecast, rolling, persistence}, first_hub {zone, saving,
        share_of_oracle} (shares of the all-hub oracle), gain_over_first_hub (saving points per
        policy), chosen_hub {policy: {hub: share of jobs}}, mean_intensity, fit_overlap, period,
        model.

    Raises:
        UsageError: Fewer than two traces, bad job length, slack or history, a trace without a
            zone, traces that share too few hours, or a trace too short.
        NoCarbonDataError: The model does not cover a trace's zone.
    """
    if len(traces) < 2:
        raise UsageError(
            "a spatial evaluation needs a trace per hub, at least two",
            hint="give one trace to score time shifting alone",
        )
    _check_job(job_hours, slack_hours)
    _check_history(history_hours)
    aligned = _aligned(traces)
    first = aligned[0]
    span = slack_hours + job_hours
    idx = origins(first, span)
    _need_origins(first, idx, span)
    hubs = _hub_names(aligned)

    actual = np.stack([t.values[idx[:, None] + np.arange(span)] for t in aligned])  # (hub, n, span)
    windows = sliding_window_view(actual, job_hours, axis=2).mean(axis=3)  # (hub, n, starts)
    hourly = [hourly_forecasts(t, model, idx, span, history_hours) for t in aligned]
    predicted = np.stack([h[0][idx - idx.min()] for h in hourly])  # made at the origins
    persisted = np.stack([persistence_forecast(t.values, idx, span) for t in aligned])
    rows = np.arange(len(idx))
    baseline = windows[0, :, 0]

    def chosen_by(forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hub and start of the lowest forecast window; ties to the earliest start, then the
        first hub."""
        means = sliding_window_view(forecast, job_hours, axis=2).mean(axis=3)
        flat = np.transpose(means, (1, 2, 0)).reshape(len(idx), -1)  # start-major
        best = np.argmin(flat, axis=1)
        return best % len(aligned), best // len(aligned)

    picks: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "oracle": chosen_by(actual),
        "forecast": chosen_by(predicted),
    }
    starts, hub_index = rolling_starts(
        aligned, hourly, idx, job_hours=job_hours, slack_hours=slack_hours, min_saving=min_saving
    )
    picks["rolling"] = (hub_index, starts)
    picks["persistence"] = chosen_by(persisted)
    policies = {name: windows[hub, rows, start] for name, (hub, start) in picks.items()}
    saving = _savings(first, baseline, policies)
    shares = _shares(saving)

    alone_starts, _ = rolling_starts(
        [first], hourly[:1], idx, job_hours=job_hours, slack_hours=slack_hours,
        min_saving=min_saving,
    )  # fmt: skip
    alone = {
        "oracle": windows[0].min(axis=1),
        "forecast": _cheapest_start(predicted[0], windows[0], job_hours),
        "rolling": windows[0, rows, alone_starts],
        "persistence": _cheapest_start(persisted[0], windows[0], job_hours),
    }
    alone_saving = _savings(first, baseline, alone)
    oracle = saving["oracle"]
    overlaps = [fit_overlap(t, model) for t in aligned]
    return {
        "zones": [t.zone for t in aligned],
        "hubs": hubs,
        "model": model.model_name,
        "job_hours": job_hours,
        "slack_hours": slack_hours,
        "interruptible": False,
        "history_hours": history_hours,
        "min_saving": min_saving,
        "jobs": len(idx),
        "saving": saving,
        "share_of_oracle": shares,
        "first_hub": {
            "zone": first.zone,
            "saving": alone_saving,
            "share_of_oracle": {
                name: (value / oracle if oracle > 0 else None)
                for name, value in alone_saving.items()
            },
        },
        "gain_over_first_hub": {name: saving[name] - alone_saving[name] for name in saving},
        "chosen_hub": {
            name: {hub: float((picked == index).mean()) for index, hub in enumerate(hubs)}
            for name, (picked, _) in picks.items()
        },
        "mean_intensity": {
            "baseline": float(baseline.mean()),
            **{name: float(values.mean()) for name, values in policies.items()},
        },
        "fit_overlap": any(overlaps),
        "note": _overlap_note(any(overlaps)),
        "period": _period(first, idx, span),
    }


def parse_history(text: str) -> int | None:
    """`--history`: `all` (None: everything before each origin the model looks at), or a whole
    number of hours such as `0h`, `24h`, `168h`, `7d`."""
    raw = text.strip().lower()
    if raw == "all":
        return None
    if re.fullmatch(r"0+(?:\.0*)?\s*[smhdw]?", raw):
        return 0
    try:
        hours = parse_duration(text).total_seconds() / 3600
    except UsageError as exc:
        # parse_duration's hint suggests 90m, which is no history.
        raise UsageError(f"history: {exc.message}", hint=_HISTORY_HINT) from None
    if hours != int(hours):
        raise UsageError(
            f"history {text!r} is not a whole number of hours",
            hint=_HISTORY_HINT,
        )
    return int(hours)


def _check_job(job_hours: int, slack_hours: int) -> None:
    if job_hours < 1:
        raise UsageError(f"job length must be at least 1 hour, got {job_hours}")
    if slack_hours < 0:
        raise UsageError(f"slack cannot be negative, got {slack_hours}")


def _check_history(history_hours: int | None) -> None:
    if history_hours is not None and history_hours < 0:
        raise UsageError(
            f"history cannot be negative, got {history_hours} h",
            hint=_HISTORY_HINT,
        )


def _savings(
    trace: Trace, baseline: np.ndarray, policies: dict[str, np.ndarray]
) -> dict[str, float]:
    total = float(baseline.sum())
    if total <= 0:
        raise UsageError(
            f"every intensity in {trace.path.name} is zero: savings are undefined",
            hint="evaluate a trace of lifecycle intensity, which is never zero",
        )
    return {name: 1.0 - float(values.sum()) / total for name, values in policies.items()}


def _shares(saving: dict[str, float]) -> dict[str, float | None]:
    oracle = saving["oracle"]
    return {
        name: (value / oracle if oracle > 0 else None)
        for name, value in saving.items()
        if name != "oracle"
    }


def _aligned(traces: Sequence[Trace]) -> list[Trace]:
    """The traces cut to the hours they all cover."""
    starts = [epoch_hour(t.start) for t in traces]
    first = max(starts)
    last = min(s + len(t.values) for s, t in zip(starts, traces, strict=True))
    if last - first < WARMUP_HOURS + 1:
        raise UsageError(
            f"the traces share too few hours to score ({max(last - first, 0)} h in common)",
            hint="give traces of the same period",
        )
    aligned = []
    for start, trace in zip(starts, traces, strict=True):
        _zone(trace)
        cut = trace.values[first - start : last - start]
        moment = datetime.fromtimestamp(first * 3600, tz=UTC)
        aligned.append(replace(trace, start=moment, values=cut, slots=None, slot_values=None))
    return aligned


def _hub_names(traces: Sequence[Trace]) -> list[str]:
    """One name per trace: its zone, numbered when two traces have the same one."""
    names: list[str] = []
    for trace in traces:
        name = str(trace.zone)
        if name in names:
            name = f"{name}#{len(names) + 1}"
        names.append(name)
    return names


def hourly_forecasts(
    trace: Trace, model: EmbeddedModel, idx: np.ndarray, span: int, history_hours: int | None
) -> Hourly:
    """The model's forecasts made at every hour from the first origin to `span` hours past the
    last (row `i`: made at hour `idx.min() + i`, leads 1..`span`), for the rolling policies."""
    hours = np.arange(int(idx.min()), int(idx.max()) + span + 1)
    return model_forecast(trace, model, hours, span, history_hours)


def rolling_starts(
    traces: Sequence[Trace],
    forecasts: Sequence[Hourly],
    idx: np.ndarray,
    *,
    job_hours: int,
    slack_hours: int,
    min_saving: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The start (hours after the origin) and hub index a waiting job gets when, every hour
    from its origin, the forecast is made again on the actuals so far (`forecasts`, one
    `hourly_forecasts` per trace) and the planner decides whether it starts now: the rule of the
    supervisor and the scheduler (`jobs.supervisor.replan`), the minimum saving at submission
    only."""
    from harchos_cli.hubs.base import Hub
    from harchos_cli.plan import planner

    span = slack_hours + job_hours
    first_hour = int(idx.min())
    base = epoch_hour(traces[0].start) + first_hour
    count = int(idx.max()) - first_hour + 2 * span + 1
    moments = [datetime.fromtimestamp((base + i) * 3600, tz=UTC) for i in range(count)]
    names = _hub_names(traces)
    hubs = [Hub(name=name, transport="local") for name in names]
    regions = [Region(n, str(t.zone), n, "zone", ()) for n, t in zip(names, traces, strict=True)]
    duration = job_hours * _HOUR
    starts = np.zeros(len(idx), dtype=np.int64)
    chosen = np.zeros(len(idx), dtype=np.int64)
    for row, origin in enumerate(idx):
        offset = int(origin) - first_hour
        deadline = moments[offset + span]
        for waited in range(slack_hours + 1):
            at = offset + waited
            now = moments[at]
            candidates = [
                planner.Candidate(hub, _forecast_at(region, forecast, at, span - waited, moments))
                for hub, region, forecast in zip(hubs, regions, forecasts, strict=True)
            ]
            plan = planner.choose(
                candidates, now=now, duration=duration, deadline=deadline, threshold=None,
                gpus=1, min_saving=min_saving, waiting=waited > 0,
            )  # fmt: skip
            if plan.choice.start <= now:
                starts[row] = waited
                chosen[row] = names.index(plan.choice.hub)
                break
    return starts, chosen


def _forecast_at(
    region: Region,
    forecast: Hourly,
    at: int,
    hours: int,
    moments: Sequence[datetime],
) -> Forecast:
    point, low, high = (series[at, :hours] for series in forecast)
    points = [
        Point(moments[at + k], moments[at + k + 1], float(point[k]), float(low[k]), float(high[k]))
        for k in range(hours)
    ]
    source = Source("embedded", "average", "lifecycle", "forecast", moments[at])
    return Forecast(region, points, source)


def rolling_interruptible(
    trace: Trace, point: np.ndarray, idx: np.ndarray, *, job_hours: int, slack_hours: int
) -> np.ndarray:
    """Mean intensity per job of an interruptible job run hour by hour by the supervisor's rule
    (`plan.shifting.plan_step`: pause through hours the forecast made that hour says are
    dirtier; `point` is `hourly_forecasts`' first array), restart costs included."""
    from harchos_cli.plan.shifting import ShiftPolicy, simulate

    span = slack_hours + job_hours
    first_hour = int(idx.min())
    name = str(trace.zone)
    # A restart's lost minutes can carry the last piece of work past the deadline, past the
    # trace's end for the last origins: the edge value stands in there.
    actuals = {name: np.pad(trace.values, (0, 4 * span), mode="edge")}

    def look(_hub: str, hour: int, horizon: int) -> np.ndarray:
        return np.asarray(point[min(hour - first_hour, len(point) - 1), :horizon])

    policy = ShiftPolicy(interruptible=True)
    emissions = [
        simulate(actuals, hub=name, start=int(origin), job_hours=job_hours,
                 slack_hours=slack_hours, workers=1, policy=policy, forecast=look).emissions
        for origin in idx
    ]  # fmt: skip
    return np.asarray(emissions) / job_hours


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
