"""Emissions of pause / migrate / scale policies against staying put and against defer-only.

    python benchmarks/bench_shifting.py [--week 2022-03-01] [--write docs/benchmarks.md]

Three hubs, DE, FR and ES, replayed from a week of real 2022 grid data (../shared/traces, or
$HARCHOS_TRACES). A job is submitted on the DE hub every 3 hours of the week; each policy runs it
through `harchos_cli.plan.shifting.simulate`, which decides every hour with `plan_step`, the
function the supervisor uses. The baseline, in the same run, is the same job started at once on
its hub and run through; defer-only starts it in the greenest window before its deadline and
runs it through. Two forecasts: perfect (the actual values) and 24 h persistence (the same hour
of the day before, what a supervisor without a provider could do), so the gap to a real forecast
is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _record import machine, record

from harchos_cli.carbon.traces import read_trace
from harchos_cli.plan.shifting import Forecast, ShiftPolicy, simulate

REPO = Path(__file__).resolve().parent.parent
HUBS = ("DE", "FR", "ES")
POLICIES: dict[str, ShiftPolicy | None] = {
    "defer-only (greenest window, then run through)": None,
    "pause (`--interruptible`)": ShiftPolicy(interruptible=True),
    "scale 1–4 workers (`--scale 1:4`)": ShiftPolicy(scale=(1, 4)),
    "pause + scale": ShiftPolicy(interruptible=True, scale=(1, 4)),
    "migrate (`--migrate auto`)": ShiftPolicy(migrate=True),
    "migrate + pause + scale": ShiftPolicy(migrate=True, interruptible=True, scale=(1, 4)),
}


def traces_dir() -> Path:
    return Path(os.environ.get("HARCHOS_TRACES", REPO.parent / "shared" / "traces"))


def defer_only(
    values: np.ndarray, start: int, job_hours: int, slack: int, *, workers: int,
    forecast: Forecast | None,
) -> float:  # fmt: skip
    """Start in the window the forecast (seen at submission) says is greenest; run through."""
    seen = np.asarray(
        values[start : start + slack + job_hours] if forecast is None
        else forecast("DE", start, slack + job_hours),
        dtype=np.float64,
    )  # fmt: skip
    best = min(range(slack + 1), key=lambda s: (seen[s : s + job_hours].sum(), s))
    return float(values[start + best : start + best + job_hours].sum()) * workers


def persistence(traces: dict[str, np.ndarray]) -> Forecast:
    def look(hub: str, hour: int, horizon: int) -> Sequence[float]:
        values = traces[hub]
        return [float(values[hour - 24 + (i % 24)]) for i in range(horizon)]

    return look


def run(
    week: datetime, job_hours: int, slack: int, workers: int, hubs: Sequence[str] = HUBS
) -> list[str]:
    traces = {hub: read_trace(traces_dir() / "eco4cast" / f"{hub}_2022_hourly.csv") for hub in hubs}
    values = {hub: trace.values for hub, trace in traces.items()}
    first = int((week - traces["DE"].start).total_seconds() // 3600)
    starts = range(first, first + 168, 3)
    forecasts = {"perfect": None, "persistence": persistence(values)}
    baseline = 0.0
    for start in starts:
        stay = simulate(values, hub="DE", start=start, job_hours=job_hours, slack_hours=slack,
                        workers=workers, policy=ShiftPolicy())  # fmt: skip
        baseline += stay.emissions
    rows = []
    for name, policy in POLICIES.items():
        cells = []
        for forecast in forecasts.values():
            total, moves, late, gaps = 0.0, 0, 0, []
            for start in starts:
                if policy is None:
                    total += defer_only(
                        values["DE"], start, job_hours, slack, workers=workers, forecast=forecast
                    )
                    continue
                outcome = simulate(values, hub="DE", start=start, job_hours=job_hours,
                                   slack_hours=slack, workers=workers, policy=policy,
                                   forecast=forecast)  # fmt: skip
                total += outcome.emissions
                moves += outcome.moves
                late += not outcome.finished
                gaps += list(np.diff(outcome.move_hours))
            closest = f"{min(gaps)} h" if gaps else "–"
            cells.append(f"{1 - total / baseline:.1%} | {moves / len(starts):.2f} | {closest}"
                         f" | {late}")  # fmt: skip
            if policy is None:
                cells[-1] = f"{1 - total / baseline:.1%} | – | – | 0"
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return [
        f"Jobs of {job_hours} h on {workers} workers with {slack} h of slack, submitted on the DE "
        f"hub every 3 h of the week from {week:%Y-%m-%d} ({len(starts)} jobs); hubs "
        f"{', '.join(hubs)}.",
        "",
        "| policy | saving (perfect) | moves/job | closest moves | late | saving (persistence) "
        "| moves/job | closest moves | late |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--week", default="2022-03-01")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if not (traces_dir() / "eco4cast").is_dir():
        sys.exit(f"bench_shifting: no traces in {traces_dir()} (set HARCHOS_TRACES)")
    week = datetime.fromisoformat(args.week).replace(tzinfo=UTC)
    lines = [
        f"Measured {machine()}. Saving = 1 − emissions / emissions of the same jobs started at "
        "once and run through on DE (the baseline, same run). A move idles the job 15 min, a "
        "restart 3 min; a move needs a 20 % saving and 6 h since the last one. Energy is "
        "proportional to workers × hours (linear scaling, stated in `plan/shifting.py`).",
        "",
    ]
    for job_hours in (6, 24):
        lines += run(week, job_hours, 24, 2)
    # Without France's low-carbon grid the choice is closer: DE and ES cross over with the sun.
    lines += run(week, 24, 24, 2, hubs=("DE", "ES"))
    report = "\n".join(lines)
    print(report)
    if args.write:
        record(args.write, "bench_shifting", report)


if __name__ == "__main__":
    main()
