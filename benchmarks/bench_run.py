"""Overhead of `harchos run train --hub local` against the same `accelerate launch` run directly.

    python benchmarks/bench_run.py [--runs 5] [--steps 20] [--write docs/benchmarks.md]

Renders the pytorch-training blueprint into a temporary folder, then runs, interleaved, `--runs`
times each: the exact command line harchos launches (from `harchos run train --dry-run --json`,
same environment) and `harchos run train --hub local`. Reports the medians and the difference.
Never pass/fail: it measures and records.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import machine, record


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write", type=Path, help="record the result in this Markdown file")
    args = parser.parse_args()
    harchos = shutil.which("harchos") or str(Path(sys.executable).with_name("harchos"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = {**os.environ, "HARCHOS_HOME": str(base / "home"), "NO_COLOR": "1"}
        subprocess.run(
            [harchos, "new", "pytorch-training", "demo", "--defaults"],
            cwd=base, env=env, check=True, capture_output=True,
        )  # fmt: skip
        project = base / "demo"
        extra = ["--set", f"steps={args.steps}"]
        plan = json.loads(
            subprocess.run(
                [harchos, "run", "train", "--hub", "local", "--dry-run", "--json", "--", *extra],
                cwd=project, env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        direct: list[float] = []
        through: list[float] = []
        for run in range(args.runs):
            launch_env = {**env, **plan["launch"]["env"]}
            launch_env["HARCHOS_CHECKPOINT_DIR"] = str(base / f"direct-{run}")
            direct.append(_timed(plan["launch"]["argv"], project, launch_env))
            through.append(
                _timed([harchos, "run", "train", "--hub", "local", "--", *extra], project, env)
            )
    d, h = statistics.median(direct), statistics.median(through)
    report = (
        f"Measured {machine()}: the pytorch-training blueprint, {args.steps} steps on the CPU, "
        f"{args.runs} runs each, interleaved.\n\n"
        "| command | median wall time (s) |\n|---|---|\n"
        f"| `accelerate launch` directly (the exact command harchos starts) | {d:.2f} |\n"
        f"| `harchos run train --hub local` | {h:.2f} |\n"
        f"| **overhead** | **{h - d:+.2f}** |\n\n"
        "The overhead is harchos's start-up, the job record, the detached launch on the hub "
        "and following the log until the exit code is written (target: under 1 s).\n"
    )
    print(report)
    if args.write:
        record(args.write, "bench_run", report)


if __name__ == "__main__":
    main()
