"""Wall time of a year's backtest and plan evaluation through the CLI.

    python benchmarks/bench_evaluate.py [--trace FILE] [--runs 3] [--write docs/benchmarks.md]

Default trace: a year of hourly German data from ../shared/traces (or $HARCHOS_TRACES). The
baseline, measured in the same run, is `harchos --help` (interpreter and CLI start-up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import machine, record

REPO = Path(__file__).resolve().parent.parent


def default_trace() -> Path:
    traces = Path(os.environ.get("HARCHOS_TRACES", REPO.parent / "shared" / "traces"))
    return traces / "eco4cast" / "DE_2022_hourly.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", type=Path, default=default_trace())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    harchos = shutil.which("harchos")
    if not harchos:
        sys.exit("bench_evaluate: `harchos` is not on PATH")
    trace = str(args.trace)
    cmds = {
        "harchos --help": [harchos, "--help"],
        "forecast backtest --horizon 24": [harchos, "forecast", "backtest", trace, "--json"],
        "plan evaluate --job-hours 1 --slack-hours 24": [
            *(harchos, "plan", "evaluate", trace, "--job-hours", "1", "--slack-hours", "24"),
            "--json",
        ],
        "plan evaluate --job-hours 6 --slack-hours 24 --interruptible": [
            *(harchos, "plan", "evaluate", trace, "--job-hours", "6", "--slack-hours", "24"),
            *("--interruptible", "--json"),
        ],
    }
    timings: dict[str, list[float]] = {name: [] for name in cmds}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HARCHOS_HOME": home}
        for _ in range(args.runs):
            for name, argv in cmds.items():
                started = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=True)
                timings[name].append(time.perf_counter() - started)
    lines = [
        f"Measured {machine()}; trace `{args.trace.name}` (8,760 hours); median of "
        f"{args.runs} runs, wall time of the whole process.",
        "",
        "| command | median (s) |",
        "|---|---|",
        *(f"| `{name}` | {statistics.median(v):.2f} |" for name, v in timings.items()),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        record(args.write, "bench_evaluate", report)


if __name__ == "__main__":
    main()
