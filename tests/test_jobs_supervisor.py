"""The supervisor survives: SIGKILLed while waiting, syncing or running, the next `harchos`
command restarts it and the job completes exactly once; a lost hub connection is retried."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos

from harchos_cli.errors import HubError
from harchos_cli.hubs import inventory, jobs_for
from harchos_cli.jobs.liveness import is_supervised
from harchos_cli.jobs.store import Job, JobStore

WORKLOAD = (
    "import pathlib, time; "
    "pathlib.Path('runs.txt').open('a').write('ran\\n'); "
    "print('started', flush=True); time.sleep(2); print('finished')"
)


def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


def job(job_id: str) -> Job:
    store = JobStore()
    try:
        return store.get(job_id)
    finally:
        store.close()


def project(tmp_path: Path, setup: str | None = None) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    setup_line = f"setup = {setup!r}\n" if setup else ""
    (root / "harchos.toml").write_text(
        f'[job]\nkind = "batch"\n{setup_line}[carbon]\nregion = "DE"\n'
    )
    trace = "\n".join(
        f"2022-03-01T{h:02d}:00:00Z,{v}" for h, v in enumerate([500, 450, 40] + [500] * 9)
    )
    (tmp_path / "DE_2022.csv").write_text(f"datetime,carbon_intensity\n{trace}\n")
    os.chdir(root)
    return root


def kill_supervisor(job_id: str) -> None:
    pid = wait_until(lambda: job(job_id).supervisor_pid)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_supervised(job_id))


@pytest.mark.parametrize("stage", ["waiting", "syncing", "running"])
def test_a_killed_supervisor_is_restarted_and_the_job_runs_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stage: str
) -> None:
    root = project(
        tmp_path, setup="echo setup >> setup.log; sleep 2" if stage == "syncing" else None
    )
    started = harchos(
        capsys, "run", "batch", "--detach", "--json", "--defer-until-green", "--duration", "1h",
        "--deadline", "8h", "--provider", f"replay:{tmp_path / 'DE_2022.csv'}",
        "--at", "2022-03-01T00:00:00Z", "--speedup", "3600", "--", sys.executable, "-c", WORKLOAD,
    )  # fmt: skip
    assert started.code == 0, started.err
    job_id = started.json()["job_id"]
    assert started.json()["planned_start"] == "2022-03-01T02:00:00Z"
    if stage == "waiting":
        assert job(job_id).state == "waiting"
    elif stage == "syncing":
        wait_until((root / "setup.log").exists)
        assert job(job_id).state == "syncing"
    else:
        wait_until((root / "runs.txt").exists)
        assert job(job_id).state == "running"
    kill_supervisor(job_id)
    assert job(job_id).state == stage
    listed = harchos(capsys, "jobs", "list")
    assert f"restarted the supervisor of job {job_id}" in listed.err
    final = wait_until(lambda: job(job_id) if not job(job_id).active else None)
    assert (final.state, final.exit_code) == ("done", 0)
    assert (root / "runs.txt").read_text() == "ran\n"
    hub_side = jobs_for(inventory.local_hub()).status(job_id)
    assert (hub_side.state, hub_side.exit_code) == ("exited", 0)
    log = harchos(capsys, "jobs", "logs", job_id).out
    assert log.count("started") == 1
    assert log.count("finished") == 1


class FlakyJobs:
    """The real local `RemoteJobs`, whose status fails twice as a dropped connection would."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failures = 2

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def status(self, job_id: str) -> Any:
        if self.failures and self.real.status(job_id).state == "running":
            self.failures -= 1
            raise HubError("ssh: connect to host 127.0.0.1 port 2222: Connection refused")
        return self.real.status(job_id)


def test_a_lost_connection_is_retried_and_the_log_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harchos_cli import hubs

    flaky: list[FlakyJobs] = []

    def flaky_jobs_for(hub: Any) -> FlakyJobs:
        flaky.append(FlakyJobs(jobs_for(hub)))
        return flaky[-1]

    monkeypatch.setattr(hubs, "jobs_for", flaky_jobs_for)
    monkeypatch.setattr("harchos_cli.jobs.supervisor.STATUS_EVERY_S", 0.0)
    project(tmp_path)
    result = harchos(capsys, "run", "batch", "--", sys.executable, "-c", WORKLOAD)
    assert result.code == 0, result.err
    assert flaky
    assert flaky[0].failures == 0
    assert "lost contact with hub local" in result.err
    assert "reconnected to hub local" in result.err
    assert result.out.count("started") == 1
    assert result.out.count("finished") == 1
