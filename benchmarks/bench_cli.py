"""Start-up and forecast latency of the CLI, against baselines measured in the same run.

    python benchmarks/bench_cli.py [--runs 15] [--write docs/benchmarks.md]

Needs `copier` installed (the baseline); runs every command `--runs` times, interleaved, and
reports the median and the ratio to `copier --help`. Never pass/fail: it measures and records.
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


def commands(harchos: str, copier: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "copier --help": [copier, "--help"],
        "harchos --help": [harchos, "--help"],
        "harchos forecast --region eu-west --json": [
            harchos,
            "forecast",
            "--region",
            "eu-west",
            "--json",
        ],
    }


def measure(cmds: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in cmds}
    for argv in cmds.values():  # warm the page cache and the bytecode cache
        subprocess.run(argv, env=env, capture_output=True, check=True)
    for _ in range(runs):
        for name, argv in cmds.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            timings[name].append(time.perf_counter() - started)
    return timings


def table(timings: dict[str, list[float]]) -> str:
    base = statistics.median(timings["copier --help"])
    lines = [
        "| command | median (s) | min (s) | ratio to `copier --help` |",
        "|---|---|---|---|",
    ]
    for name, values in timings.items():
        median = statistics.median(values)
        lines.append(f"| `{name}` | {median:.3f} | {min(values):.3f} | {median / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--write", type=Path, help="update this Markdown file between markers")
    args = parser.parse_args()
    harchos = shutil.which("harchos")
    copier = shutil.which("copier")
    if not harchos or not copier:
        sys.exit("bench_cli: needs `harchos` and `copier` on PATH (pip install copier)")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HARCHOS_HOME": home, "NO_COLOR": "1"}
        timings = measure(commands(harchos, copier), args.runs, env)
    report = (
        f"Measured {machine()}; {args.runs} interleaved runs each, wall time of the "
        f"whole process.\n\n{table(timings)}\n"
    )
    print(report)
    if args.write:
        record(args.write, "bench_cli", report)


if __name__ == "__main__":
    main()
