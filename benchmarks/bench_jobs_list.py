"""`harchos jobs list` with 10,000 jobs in the store, against the previous design in the same run.

    python benchmarks/bench_jobs_list.py [--jobs 10000] [--runs 7] [--write docs/benchmarks.md]

Fills a fresh HARCHOS_HOME with `--jobs` finished jobs (rows as `harchos run batch` writes them:
a request with its launch, a plan) straight through SQL, then times, as a user runs them (a whole
process each, interleaved, medians), `harchos jobs list`, `--json`, `--all`, `--all --json` and
a page deep in the store (`--before`), and the same commands through the previous design. The
previous design is reproduced here (`_previous_list_jobs`, run by this script itself as
`--previous ARGS...` in its own process): every listed row read whole (`SELECT *`, request and
plan decoded) and sorted without an index (`NOT INDEXED`: there was none on `created_at`), and
the table laid out by rich. Both use the same supervisor revival and background-clean check (no
job is active, so revival reads no row in either). Never pass/fail: it measures and records.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def _previous_list_jobs_main(argv: list[str]) -> int:
    """Run the CLI with `harchos jobs list` as it was before paging and its index."""
    import typer

    from harchos_cli.cli import jobs as jobs_cli
    from harchos_cli.cli.app import run

    def _previous_list_jobs(
        all_jobs: bool = typer.Option(False, "--all"),
        json_output: bool = typer.Option(False, "--json"),
    ) -> None:
        from harchos_cli.cli.output import print_json
        from harchos_cli.jobs.store import _decode

        store = jobs_cli._store()
        try:
            jobs_cli._clean_when_due()
            query = "SELECT * FROM jobs NOT INDEXED ORDER BY created_at DESC, id DESC"
            rows = store.db.execute(query + ("" if all_jobs else " LIMIT 20")).fetchall()
            jobs = [_decode(row) for row in rows]
        finally:
            store.close()
        if json_output:
            print_json([job.as_json() for job in jobs])
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for column in ("job", "name", "kind", "state", "hub", "planned start", "exit"):
            table.add_column(column)
        for job in jobs:
            state = f"{job.state}, cancel pending" if job.as_json()["cancel_pending"] else job.state
            table.add_row(
                job.id, job.name, job.kind, state, job.hub or "-", job.planned_start or "-",
                "-" if job.exit_code is None else str(job.exit_code),
            )  # fmt: skip
        Console().print(table)

    for info in jobs_cli.app.registered_commands:
        if info.name == "list":
            info.callback = _previous_list_jobs
    return run(argv)


def _rows(count: int, project: str) -> list[dict[str, Any]]:
    """`count` finished jobs, newest last, as `harchos run batch` records them; every tenth
    shares its creation second with the one before (ties are ordered by id)."""
    import json
    from datetime import UTC, datetime, timedelta

    hub = {
        "name": "local", "transport": "local", "host": None, "user": None, "port": None,
        "identity": None, "region": "DE", "gpus": 0, "gpu_type": None,
        "price_per_gpu_hour": None, "pue": 1.0, "electricity_price_per_kwh": None,
        "currency": None, "cpu_tdp_w": None, "partition": None, "account": None, "qos": None,
        "workdir": "~/harchos", "python": sys.executable, "host_key_policy": "accept-new",
    }  # fmt: skip
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    second = 0
    for n in range(count):
        second += 0 if n % 10 == 9 else 37
        created = start + timedelta(seconds=second)
        stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        job_id = f"{created:%Y%m%d-%H%M%S}-{n:04x}"
        request: dict[str, Any] = {
            "kind": "batch", "argv": ["python", "shard.py", str(n)], "hub": "local",
            "defer": True, "duration_s": 3600.0, "deadline": stamp, "threshold": None,
            "provider": None, "gpus": 0, "clock": None, "project_file": f"{project}/harchos.toml",
            "shift": None, "emissions_budget_kg": None, "nodes": None, "main_address": None,
            "cluster_nodes": 1, "objective": "carbon", "secret_env": [],
            "launch": {
                "argv": ["python", "shard.py", str(n)], "cwd": project,
                "env": {"HARCHOS_JOB_ID": job_id, "HARCHOS_HUB": "local", "HARCHOS_REGION": "DE",
                        "HARCHOS_CHECKPOINT_DIR": f"{project}/checkpoints/{job_id}",
                        "PYTHONUNBUFFERED": "1"},
                "secret_env": [], "hub": hub, "hub_job_id": job_id,
                "meter": {"interval_s": 10.0, "cpu_tdp_w": None}, "slurm": None, "nodes": [],
                "pause_exit_code": 85, "workers": 1,
            },
            "hubs_used": [hub],
        }  # fmt: skip
        plan: dict[str, Any] = {
            "hub": "local", "planned_start": stamp, "planned_end": stamp, "reason":
            "greenest window", "now": stamp, "duration": "1h", "deadline": stamp,
            "threshold": None, "region": "DE", "zone": "DE", "provider": "embedded",
            "signal": "average", "source_kind": "forecast", "source_detail": "seasonal profile",
            "unit": "gCO2eq/kWh", "expected_intensity": 300.0 + n % 100, "now_intensity": 420.0,
            "saving_vs_now": 0.2, "uncertainty": 0.4, "energy_kwh": 0.1, "emissions_kg": 0.03,
            "energy_basis": "estimated", "cost": None, "objective": "carbon",
            "by_objective": {"carbon": "local", "cost": "local", "balanced": None},
            "alternatives": [], "warnings": [],
        }  # fmt: skip
        state = ("done", "failed", "cancelled")[n % 3]
        rows.append({
            "id": job_id, "kind": "batch", "name": "sweep", "project_dir": project,
            "hub": "local", "state": state, "detached": 1, "created_at": stamp,
            "updated_at": stamp, "planned_start": stamp, "started_at": stamp,
            "finished_at": stamp, "exit_code": {"done": 0, "failed": 1}.get(state),
            "remote_dir": project, "launched": 1, "cancel_requested": 0,
            "supervisor_pid": None, "heartbeat": stamp, "log_offset": 0, "local_log_size": 0,
            "message": None, "failure": None, "request": json.dumps(request),
            "plan": json.dumps(plan), "attempt": 1, "intent": None, "run_id": None,
            "gpu_ids": None,
        })  # fmt: skip
    return rows


def fill(home: Path, count: int) -> list[str]:
    """A state database under `home` holding `count` jobs; their ids, newest first."""
    import os

    os.environ["HARCHOS_HOME"] = str(home)
    from harchos_cli import state

    rows = _rows(count, str(home / "project"))
    columns = list(rows[0])
    db = state.connect()
    try:
        db.execute("BEGIN")
        db.executemany(
            f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
            [[row[c] for c in columns] for row in rows],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return [str(row["id"]) for row in reversed(rows)]


def main() -> None:
    import argparse
    import os
    import shutil
    import statistics
    import subprocess
    import tempfile
    import time

    from _record import machine, record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", type=Path, help="record the result in this Markdown file")
    args = parser.parse_args()
    harchos = shutil.which("harchos") or str(Path(sys.executable).with_name("harchos"))
    previous = [sys.executable, str(HERE), "--previous"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        ids = fill(home, args.jobs)
        env = {**os.environ, "HARCHOS_HOME": str(home), "NO_COLOR": "1"}
        env.pop("HARCHOS_DEBUG", None)
        middle = ids[len(ids) // 2]
        cases: list[tuple[str, list[str], list[str] | None]] = [
            (
                f"jobs list{flags}",
                ["jobs", "list", *flags.split()],
                ["jobs", "list", *flags.split()],
            )
            for flags in ("", " --json", " --all", " --all --json")
        ]
        cases.append((f"jobs list --before <job {len(ids) // 2 + 1}>",
                      ["jobs", "list", "--before", middle], None))  # fmt: skip
        new: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        old: dict[str, list[float]] = {name: [] for name, _, base in cases if base}

        def timed(argv: list[str]) -> float:
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            took = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"bench_jobs_list: {argv} failed: {done.stderr.strip()}")
            return took

        for _, argv, base in cases:  # warm the page cache and the bytecode cache
            timed([harchos, *argv])
            if base:
                timed([*previous, *base])
        for _ in range(args.runs):
            for name, argv, base in cases:
                new[name].append(timed([harchos, *argv]))
                if base:
                    old[name].append(timed([*previous, *base]))
    lines = [
        "| command | previous design (s) | now (s) | now / previous |",
        "|---|---|---|---|",
    ]
    for name, _, _ in cases:
        now = statistics.median(new[name])
        if name in old:
            then = statistics.median(old[name])
            lines.append(f"| `harchos {name}` | {then:.3f} | {now:.3f} | {now / then:.2f} |")
        else:
            lines.append(f"| `harchos {name}` | – (no paging) | {now:.3f} | – |")
    target = statistics.median(new["jobs list"])
    report = (
        f"Measured {machine()}: {args.jobs:,} finished jobs in the store, {args.runs} "
        "interleaved runs of each command, wall time of the whole process, medians.\n\n"
        + "\n".join(lines)
        + f"\n\nTarget: `harchos jobs list` under 0.3 s with 10,000 jobs; with {args.jobs:,}: "
        + f"{target:.3f} s ({'met' if target < 0.3 else 'not met'}).\n"
    )
    print(report)
    if args.write:
        record(args.write, "bench_jobs_list", report)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--previous"]:
        sys.exit(_previous_list_jobs_main(sys.argv[2:]))
    main()
