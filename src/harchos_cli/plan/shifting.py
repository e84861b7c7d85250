"""Decisions about a running job: keep running, pause, move to another hub, or change its size.

One function, `plan_step`, decides what a job does in the hour ahead from the forecasts of the
hubs it may use; the supervisor calls it while a job runs, and `simulate` replays it over real
traces (tests, benchmarks), so what is measured is what runs.

The model. A job has `work` left, in worker-hours. Running `w` workers for an hour does `w`
worker-hours of work and uses energy proportional to `w` (linear scaling: a stated assumption,
good for data-parallel training that keeps its global batch); an hour's emissions are
`w × intensity × PUE` in the same relative unit. The job must finish within `hours_left`.

- Staying put, uninterruptible, fixed size: the next hours in a row.
- Interruptible (`--interruptible`): any hours before the deadline, the greenest first; a pause
  costs `restart_hours` of running at resume (checkpoint load, start-up).
- Scaling (`--scale MIN:MAX`): every hour runs at least MIN workers (0 too when interruptible),
  and the greenest hours run MAX.
- Moving (`--migrate auto`): every hub is planned the same way, a move costing `move_hours` of idle
  running at the source (copy and restart); the job moves only when the best other hub's plan,
  move included, emits at least `min_saving` less than staying, and never twice within
  `min_hours_between_moves` (hysteresis: with both, it cannot flap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Action = Literal["run", "pause", "migrate"]
Series = Sequence[float] | np.ndarray  # intensity per hour


@dataclass(frozen=True)
class ShiftPolicy:
    """What the supervisor may do to a running job, and what each step costs."""

    migrate: bool = False
    interruptible: bool = False
    scale: tuple[int, int] | None = None  # (min, max) workers
    min_saving: float = 0.20  # a move must save this share of the remaining emissions
    min_hours_between_moves: float = 6.0
    move_hours: float = 0.25  # a move idles the job this long (copy, restart)
    restart_hours: float = 0.05  # a pause costs this long at resume (load, start-up)

    def bounds(self, workers: int) -> tuple[int, int]:
        return self.scale if self.scale is not None else (workers, workers)


@dataclass(frozen=True)
class Step:
    """What the job does in the hour ahead, and why."""

    action: Action
    hub: str
    workers: int
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def allocate(
    intensity: Series, work: float, low: int, high: int, *, interruptible: bool
) -> tuple[np.ndarray, float]:
    """Workers per hour (fractional in the last hour used) that finish `work` worker-hours in
    `len(intensity)` hours with the least emissions, and those emissions; (empty, inf) when the
    work cannot be done in time."""
    values = np.asarray(intensity, dtype=np.float64)
    hours = len(values)
    if work <= 0:
        return np.zeros(hours), 0.0
    if high <= 0 or work > high * hours + 1e-9:
        return np.zeros(0), math.inf
    if interruptible:
        plan = np.zeros(hours)
        left = work
        for hour in np.argsort(values, kind="stable"):
            take = min(float(high), left)
            plan[hour] = take
            left -= take
            if left <= 1e-9:
                break
        return plan, float(plan @ values)
    # Without pauses the job runs from now to some end T, at least `low` workers every hour; the
    # extra (high − low) goes to the greenest of those hours. Try every T.
    best_plan, best = np.zeros(0), math.inf
    first = max(1, math.ceil(work / high - 1e-9))
    for end in range(first, hours + 1):
        base = min(float(low), work / end)
        if low > 0 and low * (end - 1) >= work + 1e-9:
            break  # at least `low` workers for end−1 full hours would already overshoot
        plan = np.full(end, base)
        left = work - base * end
        window = values[:end]
        for hour in np.argsort(window, kind="stable"):
            if left <= 1e-9:
                break
            take = min(float(high) - base, left)
            plan[hour] += take
            left -= take
        if left > 1e-9:
            continue
        emissions = float(plan @ window)
        if emissions < best - 1e-9:
            best_plan, best = np.concatenate([plan, np.zeros(hours - end)]), emissions
    return best_plan, best


def plan_step(
    *,
    hub: str,
    outlooks: Mapping[str, Series],
    pue: Mapping[str, float] | None = None,
    work: float,
    hours_left: int,
    workers: int,
    policy: ShiftPolicy,
    hours_since_move: float = math.inf,
) -> Step:
    """The job's step for the hour ahead.

    Args:
        hub: Where the job runs now.
        outlooks: Forecast intensity per hub, one value per hour from now (index 0 is the hour
            ahead); only `hub` is used unless the policy may move.
        pue: Each hub's PUE (default 1).
        work: Worker-hours left.
        hours_left: Whole hours before the deadline.
        workers: Workers the job runs on now.
        policy: What may be done.
        hours_since_move: Hours since the job last moved.
    """
    low, high = policy.bounds(workers)
    pue = pue or {}
    horizon = max(1, hours_left)

    def emissions_on(name: str, offset: float) -> tuple[np.ndarray, float, np.ndarray]:
        values = np.asarray(outlooks[name][:horizon], dtype=np.float64) * pue.get(name, 1.0)
        if len(values) < horizon:  # a short forecast: the last value holds
            tail = values[-1] if len(values) else 0.0
            values = np.concatenate([values, np.full(horizon - len(values), tail)])
        # An hour partly spent moving does proportionally less work.
        capacity = np.ones(horizon)
        capacity[0] = max(0.0, 1.0 - offset)
        plan, cost = _allocate_with_capacity(
            values, capacity, work, low=low, high=high, policy=policy
        )
        return plan, cost, values

    stay_plan, stay, stay_values = emissions_on(hub, 0.0)
    numbers: dict[str, Any] = {"work_left": round(work, 3), "hours_left": hours_left,
                               "stay_emissions": _round(stay)}  # fmt: skip
    movable = policy.migrate and math.isfinite(stay)  # behind schedule: no time to move
    if movable and hours_since_move >= policy.min_hours_between_moves:
        overhead = policy.move_hours * workers * float(stay_values[0])
        best_name, best_cost = hub, math.inf
        for name in sorted(outlooks):
            if name == hub:
                continue
            _, cost, _ = emissions_on(name, policy.move_hours)
            if cost + overhead < best_cost:
                best_name, best_cost = name, cost + overhead
        if best_name != hub and best_cost <= (1.0 - policy.min_saving) * stay:
            saving = 1.0 - best_cost / stay if stay > 0 else 0.0
            return Step(
                "migrate", best_name, workers,
                f"hub {best_name}'s grid: the remaining work emits {saving:.0%} less there, "
                f"the move included (threshold {policy.min_saving:.0%})",
                {**numbers, "move_emissions": _round(best_cost), "saving": round(saving, 4)},
            )  # fmt: skip
    now_workers = float(stay_plan[0]) if len(stay_plan) else float(high)
    if not math.isfinite(stay):
        # Behind schedule: full size, and never pause.
        return Step("run", hub, high, "behind schedule for the deadline: full size", numbers)
    # A pause must leave time for the work and one restart in the hours after this one.
    reserve = policy.restart_hours * high
    later_fits = math.isfinite(
        allocate(stay_values[1:], work + reserve, low, high, interruptible=True)[1]
    )
    if now_workers <= 1e-9 and later_fits:
        resume = next((i for i, w in enumerate(stay_plan) if w > 1e-9), None)
        return Step(
            "pause", hub, 0,
            f"greener hours come before the deadline (next run in {resume} h)",
            {**numbers, "resume_in_hours": resume},
        )  # fmt: skip
    # Rounded up, with room for a restart's lost minutes, so the hour does its share.
    size = min(high, max(low, 1, math.ceil(now_workers * (1 + policy.restart_hours) - 1e-9)))
    reason = "green enough now" if size == workers else f"rescale to {size} worker(s)"
    return Step("run", hub, size, reason, numbers)


def _allocate_with_capacity(
    values: np.ndarray, capacity: np.ndarray, work: float, *, low: int, high: int,
    policy: ShiftPolicy,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """`allocate`, with the first hour shortened by a move (its intensity weighted by what part of
    the hour runs)."""
    if capacity[0] >= 1.0:
        plan, cost = allocate(values, work, low, high, interruptible=policy.interruptible)
    else:
        # The first hour counts as `capacity[0]` of an hour at its intensity: scale the work the
        # rest must do and add that partial hour, run at full size.
        first = capacity[0] * high
        rest, cost = allocate(values[1:], max(0.0, work - first), low, high,
                              interruptible=policy.interruptible)  # fmt: skip
        if not math.isfinite(cost):
            return rest, cost
        plan = np.concatenate([[first], rest])
        cost += first * values[0]
    if policy.interruptible and math.isfinite(cost) and len(plan) and plan[0] <= 1e-9:
        cost += policy.restart_hours * high * float(values[int(np.argmax(plan > 1e-9))])
    return plan, cost


def _round(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


@dataclass
class Outcome:
    """How a replayed job went."""

    emissions: float
    hours: int  # wall-clock hours from submission to the end
    moves: int
    pauses: int
    move_hours: list[int] = field(default_factory=list)  # the hours (from submission) it moved
    hubs: list[str] = field(default_factory=list)  # the hub of every hour it ran
    finished: bool = True


Forecast = Callable[[str, int, int], Series]


def simulate(
    traces: Mapping[str, np.ndarray],
    *,
    hub: str,
    start: int,
    job_hours: float,
    slack_hours: int,
    workers: int,
    policy: ShiftPolicy,
    forecast: Forecast | None = None,
    pue: Mapping[str, float] | None = None,
) -> Outcome:
    """Replay a job of `job_hours` on `workers` workers, submitted at hour `start` of the traces
    on `hub`, with `slack_hours` to spare, deciding every hour with `plan_step`.

    `forecast(hub, hour, horizon)` gives what the supervisor would see at `hour` (default: the
    actual values, a perfect forecast). Emissions are `workers × intensity × PUE` per hour run, in
    the actual values, moves and restarts included.
    """
    look = forecast or (lambda name, hour, horizon: traces[name][hour : hour + horizon])
    pue = pue or {}
    deadline = start + math.ceil(job_hours) + slack_hours
    work = job_hours * workers
    outcome = Outcome(0.0, 0, 0, 0)
    last_move = -math.inf
    paused = False
    size = workers
    hour = start
    candidates = traces if policy.migrate else {hub: traces[hub]}
    # Past the deadline (restarts took longer than planned) it runs on at full size.
    while work > 1e-9 and hour < deadline + 10 * math.ceil(job_hours) + 24:
        hours_left = max(0, deadline - hour)
        outlooks = {name: look(name, hour, hours_left) for name in candidates}
        step = plan_step(
            hub=hub, outlooks=outlooks, pue=pue, work=work, hours_left=hours_left,
            workers=size, policy=policy, hours_since_move=hour - last_move,
        )  # fmt: skip

        def actual(name: str, at: int = hour) -> float:
            return float(traces[name][at]) * pue.get(name, 1.0)

        if step.action == "pause":
            if not paused:
                outcome.pauses += 1
            paused = True
            hour += 1
            continue
        available = 1.0
        if step.action == "migrate":
            outcome.emissions += policy.move_hours * size * actual(hub)
            outcome.moves += 1
            outcome.move_hours.append(hour - start)
            hub, last_move = step.hub, hour
            available -= policy.move_hours
            step = plan_step(hub=hub, outlooks=outlooks, pue=pue, work=work,
                             hours_left=hours_left, workers=size, policy=policy,
                             hours_since_move=0.0)  # fmt: skip
            if step.action == "pause":
                step = Step("run", hub, size, "just moved")
        if paused:
            available -= policy.restart_hours
            outcome.emissions += policy.restart_hours * step.workers * actual(hub)
            paused = False
        size = step.workers
        done = min(work, size * available)
        outcome.emissions += done * actual(hub)
        work -= done
        outcome.hubs.append(hub)
        hour += 1
    outcome.hours = hour - start
    outcome.finished = work <= 1e-9 and hour <= deadline
    return outcome
