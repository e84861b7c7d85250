"""The supervisor survives: SIGKILLed while waiting, syncing or running, the next `harchos`
command restarts it and the job completes exactly once; a lost hub connection is retried."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from polling import job, wait_until

from harchos_cli import paths
from harchos_cli.hubs import inventory, jobs_for
from harchos_cli.hubs.base import HubUnreachableError, LaunchSpec
from harchos_cli.jobs.liveness import is_scheduling, is_supervised
from harchos_cli.jobs.store import Job, JobStore, log_path, new_id
from harchos_cli.jobs.supervisor import Supervisor

WORKLOAD = (
    "import pathlib, time; "
    "pathlib.Path('runs.txt').open('a').write('ran\\n'); "
    "print('started', flush=True); time.sleep(2); print('finished')"
)


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


def scheduler_pid() -> int | None:
    """The live scheduler's pid (the lock's holder wrote it), or None."""
    if not is_scheduling():
        return None
    text = (paths.supervisor_dir() / "_scheduler" / "scheduler.lock").read_text().strip()
    return int(text) if text.isdigit() else None


def kill_scheduler() -> int:
    pid: int = wait_until(scheduler_pid)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_scheduling())
    return pid


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
    if stage == "waiting":
        # A detached job waiting for its window has no supervisor: the scheduler holds it.
        assert not is_supervised(job_id)
        killed = kill_scheduler()
        assert job(job_id).state == stage
        assert harchos(capsys, "jobs", "list").code == 0
        assert wait_until(lambda: scheduler_pid() not in (None, killed))
    else:
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
            raise HubUnreachableError(
                "ssh: connect to host 127.0.0.1 port 2222: Connection refused"
            )
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


GATED = (
    "import os, time\n"
    "print('started', flush=True)\n"
    "for _ in range(1200):  # at most a minute\n"
    "    if os.path.exists({gate!r}): break\n"
    "    time.sleep(0.05)\n"
    "print('finished', flush=True)\n"
)


def test_a_launched_job_is_followed_even_if_its_project_breaks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = project(tmp_path)
    gate = tmp_path / "gate"
    try:
        started = harchos(
            capsys, "run", "batch", "--detach", "--json", "--",
            sys.executable, "-c", GATED.format(gate=str(gate)),
        )  # fmt: skip
        assert started.code == 0, started.err
        job_id = started.json()["job_id"]
        wait_until(lambda: job(job_id).launched)
        kill_supervisor(job_id)
        # The user breaks harchos.toml while the job runs; the next command revives it.
        (root / "harchos.toml").write_text("[job\n")
        assert "restarted the supervisor" in harchos(capsys, "jobs", "list").err
    finally:
        gate.touch()
    final = wait_until(lambda: job(job_id) if not job(job_id).active else None)
    assert (final.state, final.exit_code) == ("done", 0)
    assert harchos(capsys, "jobs", "logs", job_id).out == "started\nfinished\n"


def running_job(tmp_path: Path, argv: list[str], **changes: Any) -> Job:
    """A job the supervisor left in `running` (killed there), on the local hub."""
    hub = inventory.local_hub()
    launch = {"argv": argv, "cwd": str(tmp_path), "env": {}, "hub": inventory.as_json(hub)}
    request = {"kind": "batch", "argv": argv, "hub": "local", "defer": False, "duration_s": 3600.0}
    row = Job(
        id=changes.pop("id", None) or new_id(), kind="batch", name="p",
        project_dir=str(tmp_path), state="running", request={**request, "launch": launch},
        hub="local", remote_dir=str(tmp_path), **changes,
    )  # fmt: skip
    store = JobStore()
    try:
        return store.create(row)
    finally:
        store.close()


def test_a_job_cancelled_before_its_launch_never_starts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    row = running_job(
        tmp_path, [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], cancel_requested=True
    )
    final = Supervisor(row.id).run()
    assert (final.state, final.message) == ("cancelled", "cancelled before it started; nothing ran")
    assert jobs_for(inventory.local_hub()).status(row.id).state == "absent"
    assert not marker.exists()


def test_a_launched_job_whose_hub_folder_vanished_is_not_run_again(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    row = running_job(
        tmp_path, [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], launched=True
    )
    final = Supervisor(row.id).run()
    assert (final.state, final.failure) == ("failed", "hub")
    assert final.message is not None
    assert "vanished" in final.message
    assert not marker.exists()


def test_the_local_log_is_not_repeated_after_a_kill_between_append_and_record(
    tmp_path: Path,
) -> None:
    job_id = new_id()
    argv = [sys.executable, "-c", "print('a'); print('b')"]
    hub_jobs = jobs_for(inventory.local_hub())
    hub_jobs.launch(LaunchSpec(job_id, argv, str(tmp_path)))
    wait_until(lambda: hub_jobs.status(job_id).state == "exited")
    running_job(tmp_path, argv, id=job_id, launched=True)
    # The killed supervisor had appended "a" here but not yet recorded it in the store.
    log_path(job_id).write_bytes(b"a\n")
    final = Supervisor(job_id).run()
    assert (final.state, final.exit_code) == ("done", 0)
    assert log_path(job_id).read_bytes() == b"a\nb\n"
    assert (final.log_offset, final.local_log_size) == (4, 4)


def test_a_concurrent_harchos_never_takes_over_a_foreground_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harchos_cli.jobs import liveness, supervisor

    revived: list[str] = []
    create = supervisor.create_job

    def create_then_revive(*args: Any, **kwargs: Any) -> Job:
        row = create(*args, **kwargs)
        # Another terminal's `harchos jobs list` runs right after the row appears.
        revived.extend(liveness.revive())
        if revived:
            wait_until(lambda: job(row.id).supervisor_pid)
        return row

    monkeypatch.setattr(supervisor, "create_job", create_then_revive)
    project(tmp_path)
    result = harchos(capsys, "run", "batch", "--json", "--", sys.executable, "-c", "print('hi')")
    assert revived == []
    assert result.code == 0, result.err
    assert (result.json()["state"], result.json()["exit_code"]) == ("done", 0)
