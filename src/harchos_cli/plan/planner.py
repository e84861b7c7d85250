"""When (and, with `--hub auto`, where) a job starts.

Pure decisions over forecasts already fetched: `choose` takes one forecast per candidate hub and
returns a `Plan`. The rules, in order:

1. A job always starts early enough to finish by the deadline (`latest start = deadline −
   duration`); past that moment it starts at once.
2. With a threshold, a hub's start is the first moment its grid intensity is at or under it.
   Hubs that reach the threshold rank by that start, then by expected emissions.
3. Otherwise (or when no hub reaches the threshold before its latest start) a hub's start is its
   greenest window of the job's length (`carbon.windows.best_window`), and hubs rank by expected
   emissions = expected energy × PUE × mean intensity over the window.
4. Cost (price per GPU-hour × GPUs × hours, plus expected energy × PUE × the hub's electricity
   price) breaks ties, then the earlier start, then the name. Average and marginal signals are
   never ranked together: average ones come first.

The objective (`--objective`) changes rule 3's ranking of hubs, never the time found on each hub:
`carbon` (the default) ranks by expected emissions as above; `cost` by cost, emissions breaking
ties; `balanced` by cost + emissions × the carbon price per tonne. A hub with no price costs 0.
The plan records which hub each objective would have chosen.

Expected energy is the workload's measured average power from its last metered run when there
is one (`Power`), else the flat estimate below; the plan says which.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from harchos_cli.carbon.types import Forecast, Point
from harchos_cli.carbon.windows import (
    Window,
    band_spread,
    best_window,
    candidate_windows,
    ordered_points,
)
from harchos_cli.errors import HarchosError, UsageError
from harchos_cli.hubs.base import Hub
from harchos_cli.timeparse import format_duration, iso

# Estimated draw while a job runs, until the meter measures it: per GPU, and for the host.
GPU_WATTS = 300.0
HOST_WATTS = 100.0
OBJECTIVES = ("carbon", "cost", "balanced")
Objective = Literal["carbon", "cost", "balanced"]


@dataclass(frozen=True)
class Power:
    """The draw a plan expects: measured on an earlier run of the workload, or the flat guess."""

    watts: float
    basis: str

    @classmethod
    def flat(cls, gpus: int) -> Power:
        return cls(
            gpus * GPU_WATTS + HOST_WATTS,
            f"estimated: {GPU_WATTS:g} W/GPU + {HOST_WATTS:g} W host × duration",
        )

    def kwh(self, duration: timedelta) -> float:
        return self.watts / 1000.0 * duration.total_seconds() / 3600.0


# Emissions closer than this (relative) tie, so float noise never beats cost or the earlier start.
TIE_RELATIVE = 1e-9


@dataclass(frozen=True)
class Candidate:
    """A hub the job may run on, with the forecast for its region (None: no data, start now),
    the earliest it could start there (a Slurm cluster's queue; None: at once), and what the
    hub's slots hold already: `booked`, the planned windows of its other jobs, and `slots`, how
    many jobs it runs at once (None: no limit)."""

    hub: Hub
    forecast: Forecast | None
    earliest: datetime | None = None
    booked: tuple[tuple[datetime, datetime], ...] = ()
    slots: int | None = None
    # The same for the job's array (`--max-parallel`): its other jobs' windows, on any hub.
    array_booked: tuple[tuple[datetime, datetime], ...] = ()
    array_slots: int | None = None


# The intensity a full hour counts with in the window search: no real grid comes near it, so a
# window through a full hour is chosen only when every window is.
FULL_HOUR_PENALTY = 1e6


def _full(candidate: Candidate, points: Sequence[Point]) -> list[bool]:
    """Which forecast periods already hold `slots` of the hub's other jobs, or `array_slots` of
    the array's."""

    full = [False] * len(points)
    starts = [p.start for p in points]  # in time order
    pairs = ((candidate.booked, candidate.slots), (candidate.array_booked, candidate.array_slots))
    for booked, slots in pairs:
        if not slots or not booked:
            continue
        # Each window counted in the periods it overlaps only (found by bisection), so a plan
        # among a thousand booked jobs costs a thousand short walks, not a thousand per period.
        holding = [0] * len(points)
        for start, end in booked:
            index = max(0, bisect.bisect_right(starts, start) - 1)
            while index < len(points) and points[index].start < end:
                if start < points[index].end:
                    holding[index] += 1
                index += 1
        full = [was or count >= slots for was, count in zip(full, holding, strict=True)]
    return full


@dataclass(frozen=True)
class Choice:
    """One hub's best start, and what it is expected to emit and cost."""

    hub: str
    start: datetime
    end: datetime
    reason: str
    expected_intensity: float | None
    now_intensity: float | None
    energy_kwh: float
    emissions_kg: float | None
    cost: float | None
    signal: str | None = None
    # It lands in an hour whose slots are full (every hour before the deadline was).
    overbooked: bool = False

    @property
    def saving_vs_now(self) -> float | None:
        if self.expected_intensity is None or not self.now_intensity:
            return None
        return 1.0 - self.expected_intensity / self.now_intensity


@dataclass
class Plan:
    """The decision: `choice`, the other hubs' best options, and what it was based on."""

    now: datetime
    duration: timedelta
    deadline: datetime | None
    threshold: float | None
    choice: Choice
    alternatives: list[Choice]
    forecast: Forecast | None
    warnings: list[str] = field(default_factory=list)
    objective: Objective = "carbon"
    power_basis: str = ""
    by_objective: dict[str, str | None] = field(default_factory=dict)

    def uncertainty(self) -> float | None:
        """The forecast's relative uncertainty (median half-width of its P10–P90 band) over the
        planned window and the one starting now: 0 for recorded values; None without data."""
        if self.forecast is None or self.choice.expected_intensity is None:
            return None
        windows = (
            Window(self.choice.start, self.choice.end, 0.0),
            Window(self.now, self.now + self.duration, 0.0),
        )
        return round(band_spread(self.forecast.points, windows), 4)

    def as_json(self) -> dict[str, Any]:
        """The plan part of `harchos run --json` and `jobs show --json` (docs/run.md)."""
        choice = self.choice
        source = self.forecast.source if self.forecast else None
        region = self.forecast.region if self.forecast else None
        saving = choice.saving_vs_now
        return {
            "hub": choice.hub,
            "planned_start": iso(choice.start),
            "planned_end": iso(choice.end),
            "reason": choice.reason,
            "now": iso(self.now),
            "duration": format_duration(self.duration),
            "deadline": iso(self.deadline) if self.deadline else None,
            "threshold": self.threshold,
            "region": region.name if region else None,
            "zone": region.zone if region else None,
            "provider": source.provider if source else None,
            "signal": source.signal if source else None,
            "source_kind": source.kind if source else None,
            "source_detail": (source.detail or source.model or None) if source else None,
            "unit": "gCO2eq/kWh",
            "expected_intensity": _round(choice.expected_intensity, 2),
            "now_intensity": _round(choice.now_intensity, 2),
            "saving_vs_now": _round(saving, 4),
            "uncertainty": self.uncertainty(),
            "energy_kwh": round(choice.energy_kwh, 4),
            "emissions_kg": _round(choice.emissions_kg, 6),
            "energy_basis": self.power_basis or Power.flat(0).basis,
            "cost": _round(choice.cost, 4),
            "objective": self.objective,
            # The hub each objective would have chosen (None: it needs a carbon price).
            "by_objective": self.by_objective,
            "alternatives": [
                {
                    "hub": alt.hub,
                    "start": iso(alt.start),
                    "reason": alt.reason,
                    "expected_intensity": _round(alt.expected_intensity, 2),
                    "emissions_kg": _round(alt.emissions_kg, 6),
                    "cost": _round(alt.cost, 4),
                }
                for alt in self.alternatives
            ],
            "warnings": self.warnings,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def energy_kwh(gpus: int, duration: timedelta) -> float:
    """Expected energy of a run at the flat estimated draw."""
    return Power.flat(gpus).kwh(duration)


def cost(hub: Hub, gpus: int, duration: timedelta, energy: float | None = None) -> float | None:
    """GPU-hours × price, plus `energy` (kWh) × PUE × electricity price; None: no price set."""
    if hub.price_per_gpu_hour is None and hub.electricity_price_per_kwh is None:
        return None
    money = 0.0
    if hub.price_per_gpu_hour is not None:
        money += hub.price_per_gpu_hour * max(gpus, 1) * duration.total_seconds() / 3600.0
    if hub.electricity_price_per_kwh is not None:
        kwh = energy_kwh(gpus, duration) if energy is None else energy
        money += kwh * hub.pue * hub.electricity_price_per_kwh
    return money


def latest_start(deadline: datetime, duration: timedelta) -> datetime:
    return deadline - duration


def check_feasible(now: datetime, duration: timedelta, deadline: datetime) -> None:
    """`UsageError` when a job of `duration` cannot finish by `deadline` even if it starts now."""
    if now + duration > deadline:
        raise UsageError(
            f"a {format_duration(duration)} job cannot finish by the deadline {iso(deadline)} "
            f"({format_duration(max(deadline - now, timedelta(0)))} away)",
            hint="give a later --deadline or a shorter --duration",
        )


def start_now(
    hub: Hub, *, now: datetime, duration: timedelta, gpus: int, power: Power | None = None
) -> Plan:
    """The plan of a job that is not deferred: here, now, no forecast needed."""
    power = power or Power.flat(gpus)
    energy = power.kwh(duration)
    choice = Choice(
        hub.name, now, now + duration, "started at once", None, None,
        energy, None, cost(hub, gpus, duration, energy),
    )  # fmt: skip
    return Plan(now, duration, None, None, choice, [], None, power_basis=power.basis)


def choose(
    candidates: Sequence[Candidate],
    *,
    now: datetime,
    duration: timedelta,
    deadline: datetime,
    threshold: float | None,
    gpus: int,
    objective: Objective = "carbon",
    carbon_price: float | None = None,
    power: Power | None = None,
    min_saving: float = 0.0,
    waiting: bool = False,
) -> Plan:
    """Pick the hub and start time (see the module docstring for the rules).

    Args:
        candidates: Hubs with enough GPUs, each with the forecast for its region.
        now: The current (possibly simulated) time.
        duration: The job's expected duration.
        deadline: When the job must have finished.
        threshold: gCO2eq/kWh at or under which to start at once; None waits for the greenest
            window.
        gpus: GPUs the job uses (for the energy and cost estimates).
        objective: What ranks the hubs: carbon, cost, or balanced (cost + priced carbon).
        carbon_price: Money per tonne of CO2eq; needed by `balanced`.
        power: The draw expected (default: the flat estimate for `gpus`).
        min_saving: The least fraction a later window must save against the soonest start for
            the job to wait for it (a threshold the user set is followed as given).
        waiting: The job waits already (a re-plan): `min_saving` decided, at submission,
            whether waiting is worth it at all, and a re-plan keeps to the greenest window
            however little it saves. Checking the minimum again every hour started jobs on
            any hour whose forecast dipped within it of the best: on the 2022 DE trace, 1 h jobs
            kept 82 % of the oracle's saving instead of 85 % (`plan evaluate`'s rolling policy).

    Raises:
        UsageError: No candidates, the job cannot finish by the deadline, or `balanced`
            without a carbon price.
    """
    if objective == "balanced" and carbon_price is None:
        raise UsageError(
            "--objective balanced needs a carbon price",
            hint="set cost.carbon_price_per_tonne (harchos config, or HARCHOS_CARBON_PRICE)",
        )
    power = power or Power.flat(gpus)
    if waiting:
        min_saving = 0.0
    if not candidates:
        raise UsageError("no hub to run on", hint="add one with: harchos hubs add")
    warnings: list[str] = []
    if now + duration > deadline:
        # Past the latest start (a supervisor restarted late, say): go now, and say so.
        warnings.append(f"the deadline {iso(deadline)} can no longer be met; starting at once")
    options = [
        _option(c, now=now, duration=duration, deadline=deadline, threshold=threshold, gpus=gpus,
                power=power, min_saving=min_saving)
        for c in candidates
    ]  # fmt: skip
    signals = {o.signal for o in options if o.signal}
    if len(signals) > 1:
        warnings.append(
            "some hubs have marginal and some average intensity; they are ranked apart, "
            "averages first (the two are not comparable)"
        )
    met = [o for o in options if o.reason.startswith("under threshold")]
    pool = met or options
    # A hub whose queue cannot start the job in time loses to any that can, and one whose slots
    # are full to any that are not.
    in_time = [o for o in pool if o.start <= max(now, latest_start(deadline, duration))]
    pool = in_time or pool
    pool = [o for o in pool if not o.overbooked] or pool
    by_objective: dict[str, str | None] = {}
    for name in OBJECTIVES:
        if name == "balanced" and carbon_price is None:
            by_objective[name] = None
            continue
        by_objective[name] = _rank(pool, name, carbon_price, by_start=bool(met))[0].hub
    chosen = _rank(pool, objective, carbon_price, by_start=bool(met))[0]
    by_hub = {c.hub.name: c for c in candidates}
    for option in options:
        forecast = by_hub[option.hub].forecast
        if forecast is not None:
            warnings.extend(w for w in forecast.warnings if w not in warnings)
    return Plan(
        now,
        duration,
        deadline,
        threshold,
        chosen,
        [o for o in options if o is not chosen],
        by_hub[chosen.hub].forecast,
        warnings,
        objective=objective,
        power_basis=power.basis,
        by_objective=by_objective,
    )


def _rank(
    pool: list[Choice], objective: str, carbon_price: float | None, *, by_start: bool
) -> list[Choice]:
    if objective == "carbon":
        return _break_ties(sorted(pool, key=lambda o: _rank_key(o, by_start=by_start)),
                           by_start=by_start)  # fmt: skip

    def money(option: Choice) -> float:
        value = option.cost or 0.0
        if objective == "balanced":
            if option.emissions_kg is None:
                return math.inf
            value += option.emissions_kg / 1000.0 * (carbon_price or 0.0)
        return value

    def emissions(option: Choice) -> float:
        return option.emissions_kg if option.emissions_kg is not None else math.inf

    def key(option: Choice) -> tuple[Any, ...]:
        primary: tuple[Any, ...] = (option.start,) if by_start else ()
        return (option.signal == "marginal", *primary, money(option), emissions(option),
                option.start, option.hub)  # fmt: skip

    return sorted(pool, key=key)


def _rank_key(option: Choice, *, by_start: bool) -> tuple[Any, ...]:
    emissions = option.emissions_kg if option.emissions_kg is not None else math.inf
    primary: tuple[Any, ...] = (option.start,) if by_start else ()
    return (option.signal == "marginal", *primary, emissions)


def _break_ties(ranked: list[Choice], *, by_start: bool) -> list[Choice]:
    """Among options whose emissions tie with the best, the cheapest, earliest, then by name."""
    best = ranked[0]

    def tied(option: Choice) -> bool:
        if option.signal != best.signal or (by_start and option.start != best.start):
            return False
        if option.emissions_kg is None or best.emissions_kg is None:
            return option.emissions_kg is best.emissions_kg
        scale = max(abs(best.emissions_kg), 1e-12)
        return abs(option.emissions_kg - best.emissions_kg) <= TIE_RELATIVE * scale

    group = [o for o in ranked if tied(o)]
    group.sort(key=lambda o: (o.cost if o.cost is not None else 0.0, o.start, o.hub))
    return group + [o for o in ranked if o not in group]


def _option(
    candidate: Candidate,
    *,
    now: datetime,
    duration: timedelta,
    deadline: datetime,
    threshold: float | None,
    gpus: int,
    power: Power,
    min_saving: float = 0.0,
) -> Choice:
    hub = candidate.hub
    energy = power.kwh(duration)
    price = cost(hub, gpus, duration, energy)
    # The soonest this hub can start it (a cluster's queue), and what to say of it.
    first = max(now, candidate.earliest or now)
    queued = f" (Slurm's queue: not before {iso(first)})" if first > now else ""
    last = max(first, latest_start(deadline, duration))
    forecast = candidate.forecast
    if forecast is None or not forecast.points:
        return Choice(hub.name, first, first + duration, "no carbon data: starting at once" +
                      queued, None, None, energy, None, price)  # fmt: skip
    points = ordered_points(forecast.points)
    signal = forecast.source.signal
    # "Now" means now: when the data begin later, there is no run-now figure to compare with
    # (rather than the mean of a later window passed off as now's).
    now_intensity = _mean(points, now, duration) if points and points[0].start <= now else None

    def make(start: datetime, reason: str) -> Choice:
        expected = _mean(points, start, duration)
        emissions = None if expected is None else energy * hub.pue * expected / 1000.0
        return Choice(hub.name, start, start + duration, reason + queued, expected,
                      now_intensity, energy, emissions, price, signal)  # fmt: skip

    full = _full(candidate, points)

    def worth_waiting(start: datetime, reason: str) -> Choice:
        """A later window, unless it saves less than `min_saving` against the soonest start
        (when that start is free: a full hour is no start to fall back on)."""
        soonest = _mean(points, first, duration)
        later = _mean(points, start, duration)
        soonest_full = any(
            taken and p.start < first + duration and first < p.end
            for p, taken in zip(points, full, strict=True)
        )
        if start > first and soonest and later is not None and min_saving > 0 and not soonest_full:
            saving = 1.0 - later / soonest
            if saving < min_saving:
                why = f"the greenest window saves only {max(saving, 0.0):.1%}"
                return make(first, f"{why} (under the {min_saving:.0%} minimum): starting at once")
        return make(start, reason)

    if first >= latest_start(deadline, duration):
        return make(first, "deadline: starting at once")
    if threshold is not None:
        for point, taken in zip(points, full, strict=True):
            moment = max(point.start, first)
            if point.end <= first or moment > last or taken:
                continue
            if point.intensity <= threshold:
                return make(moment, "under threshold")

    def greenest(searched: Sequence[Point]) -> tuple[datetime, str]:
        try:
            found = best_window(searched, duration, earliest=first, deadline=deadline)
        except HarchosError:
            # The forecast does not reach a whole window before the deadline: the greenest
            # window it does cover, and failing that, the soonest start.
            covered = candidate_windows(searched, duration, earliest=first, latest_start=last)
            if not covered:
                return first, "forecast too short: starting at once"
            window = min(covered, key=lambda w: (w.mean_intensity, w.start))
            return window.start, "greenest window the forecast covers"
        return min(found.best.start, last), "greenest window"

    start, reason = greenest(points)
    if any(full):
        # A full hour costs so much that a window through one is chosen only when all are.
        penalised = [
            Point(p.start, p.end, FULL_HOUR_PENALTY, FULL_HOUR_PENALTY, FULL_HOUR_PENALTY)
            if taken else p
            for p, taken in zip(points, full, strict=True)
        ]  # fmt: skip
        unbooked = start
        start, reason = greenest(penalised)
        overbooked = any(
            taken and p.start < start + duration and start < p.end
            for p, taken in zip(points, full, strict=True)
        )
        if overbooked:
            return replace(make(start, reason + " (every hour before the deadline is full)"),
                           overbooked=True)  # fmt: skip
        if start != unbooked:
            limits = []
            if candidate.slots and candidate.booked:
                limits.append(f"hub {hub.name} runs {candidate.slots} job(s) at once")
            if candidate.array_slots and candidate.array_booked:
                limits.append(f"the array runs {candidate.array_slots} at once")
            reason += f" left (greener hours are full: {'; '.join(limits)})"
    if reason.startswith("forecast too short"):
        return make(start, reason)
    return worth_waiting(start, reason)


def _mean(points: Sequence[Point], start: datetime, duration: timedelta) -> float | None:
    """Time-weighted mean intensity over [start, start + duration), over the points covering it;
    None when the points do not reach `start`."""
    end = start + duration
    starts = [p.start for p in points]
    index = max(bisect.bisect_right(starts, start) - 1, 0)
    total = 0.0
    seconds = 0.0
    for point in points[index:]:
        if point.start >= end:
            break
        lo, hi = max(point.start, start), min(point.end, end)
        if hi > lo:
            span = (hi - lo).total_seconds()
            total += point.intensity * span
            seconds += span
    return total / seconds if seconds else None
