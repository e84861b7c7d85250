"""Many waiting jobs: what they cost held by the scheduler against today's per-job supervisors,
measured in the same run.

    python benchmarks/bench_scheduler.py [--jobs 1000] [--supervisors 20] \
        [--write docs/benchmarks.md]

A fresh HARCHOS_HOME and a batch project planned on Germany's replayed 2022 grid (`--at`, real
speed, so nothing starts while it is measured).

- Submitting: `harchos run batch --array 1-N` (one process, one plan per job), against the design
  before arrays, one `harchos run batch --detach` per job: `--supervisors` of them are timed and
  their mean multiplied by N.

- Memory: the resident set of the scheduler holding every job, against the design before it, one
  supervisor per waiting job: `--supervisors` of them are started for real and their mean
  resident set is multiplied by the number of jobs.
- One re-planning pass over every job (each job's clock entered a new hour): the scheduler's
  pass (forecasts shared per region and hour, projects read once), against the same plans made
  as each job's own supervisor makes them (its own forecaster and project each), in this process.

Never pass/fail: it measures and records.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _record import machine, record

from harchos_cli.jobs.store import JobStore

REPO = Path(__file__).resolve().parent.parent
TRACE = Path(os.environ.get("HARCHOS_TRACES", REPO.parent / "shared" / "traces"))
TRACE = TRACE / "eco4cast" / "DE_2022_hourly.csv"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def submit(project: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "harchos_cli", "run", "batch", "--defer-until-green", "--duration",
         "1h", "--deadline", "20h", "--provider", f"replay:{TRACE}", "--at",
         "2022-03-01T03:00:00Z", "--json", *extra],
        cwd=project, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def settle(pid: int, seconds: float = 3.0) -> None:
    """Let a freshly started process import and reach its waiting loop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--supervisors", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="harchos-bench-scheduler-"))
    os.environ["HARCHOS_HOME"] = str(home)
    env = {**os.environ, "HARCHOS_HOME": str(home)}
    project = home / "sweep"
    project.mkdir()
    (project / "harchos.toml").write_text('[job]\ncommand = ["true"]\n[carbon]\nregion = "DE"\n')

    from harchos_cli.jobs import liveness
    from harchos_cli.jobs.scheduler import Scheduler

    singles = []
    for _ in range(args.supervisors):
        started = time.perf_counter()
        submit(project, env, "--detach")
        singles.append(time.perf_counter() - started)
    per_single = statistics.mean(singles)
    started = time.perf_counter()
    submit(project, env, "--array", f"1-{args.jobs}")
    array_s = time.perf_counter() - started
    store = JobStore()
    ids = store.held_ids()

    # The scheduler holding all of them (started by the submit; it exits when idle, so keep one).
    liveness.start_scheduler()
    pid = 0
    lock = liveness.scheduler_dir() / "scheduler.lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = lock.read_text().strip() if lock.exists() else ""
        if text.isdigit() and liveness.is_scheduling():
            pid = int(text)
            break
        time.sleep(0.1)
    settle(pid, 5.0)
    scheduler_mb = rss_mb(pid)
    os.kill(pid, signal.SIGKILL)

    # The design before: one supervisor per waiting job.
    sample = ids[: args.supervisors]
    procs = [subprocess.Popen([sys.executable, "-m", "harchos_cli.jobs.supervisor", job_id],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for job_id in sample]  # fmt: skip
    time.sleep(3.0)
    settle(procs[-1].pid, 3.0)
    per_supervisor = statistics.mean(rss_mb(p.pid) for p in procs)
    for proc in procs:
        proc.kill()
        proc.wait()

    # One re-planning pass: every job's clock has just entered a new hour.
    scheduler = Scheduler(store)
    for job_id in ids:
        scheduler.considered[job_id] = an_hour_ago(store, job_id)
    started = time.perf_counter()
    held = scheduler.pass_once()
    pass_s = time.perf_counter() - started

    from harchos_cli.jobs.clock import from_json
    from harchos_cli.jobs.request import Forecaster, Request
    from harchos_cli.jobs.supervisor import FileReporter, replan
    from harchos_cli.timeparse import parse_instant

    started = time.perf_counter()
    for job_id in ids:
        job = store.get(job_id)
        request = Request.from_json(job.request, job.project_dir)
        now = from_json(request.clock).now()
        assert job.planned_start is not None
        replan(store, FileReporter(job.id), job, request=request,
               forecaster=Forecaster(request.provider, request.project), now=now,
               start=parse_instant(job.planned_start))  # fmt: skip
    before_s = time.perf_counter() - started
    store.close()

    report = "\n".join([
        f"Measured {machine()}, an array of {args.jobs} waiting jobs (and {args.supervisors} "
        f"single ones; {held} held in the pass).",
        "",
        "| | before: a supervisor per job | now: the scheduler |",
        "|---|---|---|",
        f"| submitting {args.jobs} jobs | {per_single:.2f} s × {args.jobs} = "
        f"{per_single * args.jobs:.0f} s (one `run --detach` each; {args.supervisors} timed) | "
        f"{array_s:.1f} s (`run --array 1-{args.jobs}`) |",
        f"| resident memory of the waiting jobs' processes | {per_supervisor:.0f} MB × "
        f"{args.jobs} = {per_supervisor * args.jobs / 1024:.1f} GB ({args.supervisors} "
        f"started, mean) | {scheduler_mb:.0f} MB (one process) |",
        f"| one re-planning pass over every job | {before_s:.2f} s | {pass_s:.2f} s |",
        "",
    ])  # fmt: skip
    print(report)
    if args.write:
        record(args.write, "bench_scheduler", report)


def an_hour_ago(store: JobStore, job_id: str) -> datetime:
    """An hour before the job's clock's current hour: the next pass re-plans it."""
    from harchos_cli.jobs.clock import from_json
    from harchos_cli.timeparse import floor_hour

    job = store.get(job_id)
    return floor_hour(from_json(job.request.get("clock")).now()) - timedelta(hours=1)


if __name__ == "__main__":
    main()
