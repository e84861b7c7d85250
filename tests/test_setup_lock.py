"""`[job] setup` runs once per project folder on a hub, under a lock there: two runs of one
project started together run it once, and the setup of a supervisor killed during it is ended,
not left running beside the next one's."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_jobs_supervisor import kill_supervisor
from test_run_ssh import add_h1, batch_project

from harchos_cli.jobs.store import Job, log_path
from harchos_cli.testing.processes import live_processes

__all__ = ["client_key_fixture", "sshd_fixture"]

# Each setup records its process group (its shell is the group's leader), then takes a while.
SETUP = 'echo "$$" >> "$HOME/setup.pids"; sleep 3; echo done >> "$HOME/setup.done"'


def setup_project(tmp_path: Path) -> Path:
    root = batch_project(tmp_path)
    (root / "harchos.toml").write_text(f'[job]\nkind = "batch"\nsetup = {SETUP!r}\n')
    return root


def start(capsys: pytest.CaptureFixture[str]) -> str:
    started = harchos(
        capsys, "run", "batch", "--hub", "h1", "--detach", "--json", "--",
        sys.executable, "-c", "print('ran', flush=True)",
    )  # fmt: skip
    assert started.code == 0, started.err
    return str(started.json()["job_id"])


def finished(job_id: str) -> Job | None:
    current = job(job_id)
    return None if current.active else current


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def live_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid` on this machine, which is also
    the hub's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def test_two_runs_of_one_project_started_together_run_its_setup_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    setup_project(tmp_path)
    add_h1(capsys, sshd)
    first, second = start(capsys), start(capsys)
    for job_id in (first, second):
        final = wait_until(partial(finished, job_id), timeout=60)
        assert (final.state, final.exit_code) == ("done", 0), final.message
        assert "ran" in log_path(job_id).read_text()
    assert len(lines(sshd.root / "setup.pids")) == 1
    assert lines(sshd.root / "setup.done") == ["done"]


def test_the_setup_of_a_killed_supervisor_is_ended_and_setup_completes_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    setup_project(tmp_path)
    add_h1(capsys, sshd)
    job_id = start(capsys)
    pids = sshd.root / "setup.pids"
    wait_until(lambda: lines(pids), timeout=30)
    orphan = int(lines(pids)[0])
    assert live_members(orphan)
    kill_supervisor(job_id)
    listed = harchos(capsys, "jobs", "list")
    assert f"restarted the supervisor of job {job_id}" in listed.err
    # The next supervisor runs setup only once the lock is free: the dead one's is over by then.
    wait_until(lambda: len(lines(pids)) == 2, timeout=30)
    assert live_members(orphan) == []
    final = wait_until(partial(finished, job_id), timeout=60)
    assert (final.state, final.exit_code) == ("done", 0), final.message
    assert lines(sshd.root / "setup.done") == ["done"]
    assert "ran" in log_path(job_id).read_text()


def rsyncs_into(target: Path) -> list[int]:
    """The live rsync processes on this machine whose arguments name `target`."""

    def copying(argv: list[bytes], _environ: list[bytes]) -> bool:
        names = (str(target).encode(), target.name.encode())
        return bool(argv) and argv[0].endswith(b"rsync") and any(
            name in arg for arg in argv for name in names
        )  # fmt: skip

    return live_processes(copying)


def test_the_copy_of_a_killed_supervisor_ends_with_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    root = batch_project(tmp_path)
    # Enough data that the copy is still going when its supervisor is killed.
    with (root / "big.bin").open("wb") as handle:
        handle.truncate(4 << 30)  # sparse here; seconds of copying
    add_h1(capsys, sshd)
    job_id = start(capsys)
    wait_until(lambda: rsyncs_into(root), timeout=30)
    kill_supervisor(job_id)
    # The copy stops with it at once, not when its file is done (rsync's own ssh and the hub's
    # side go with the connection).
    wait_until(lambda: not rsyncs_into(root), timeout=3)
    (root / "big.bin").unlink()  # the next supervisor's copy is then short
    assert harchos(capsys, "jobs", "cancel", job_id).code == 0
