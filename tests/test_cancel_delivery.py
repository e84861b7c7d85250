"""No workload harchos started runs on unknown to it: a cancel while the hub is down stays
pending until the hub confirms the workload ended, and a job whose hub changed its host key
mid-run is `lost` (not failed) until `harchos jobs reattach` takes it up again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_run_ssh import add_h1, batch_project

from harchos_cli.hubs.ssh import known_hosts_file, known_hosts_name
from harchos_cli.jobs.store import Job, log_path

__all__ = ["client_key_fixture", "sshd_fixture"]


def start_gated(capsys: pytest.CaptureFixture[str], gate: Path) -> str:
    """A detached job on h1 that prints, then runs until `gate` exists (a minute at most)."""
    code = (
        "import os, time\n"
        "print('started', flush=True)\n"
        "for _ in range(1200):\n"
        f"    if os.path.exists({str(gate)!r}): break\n"
        "    time.sleep(0.05)\n"
        "print('finished', flush=True)\n"
    )
    started = harchos(capsys, "run", "batch", "--hub", "h1", "--detach", "--json", "--",
                      sys.executable, "-c", code)  # fmt: skip
    assert started.code == 0, started.err
    job_id = str(started.json()["job_id"])
    wait_until(lambda: log_path(job_id).is_file() and b"started" in log_path(job_id).read_bytes())
    return job_id


def workload_pid(sshd: Sshd, job_id: str) -> int:
    """The workload's pid, from its folder on the hub (this machine, under the sshd's root)."""
    return int((sshd.root / ".harchos" / "jobs" / job_id / "pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def finished(job_id: str) -> Job | None:
    current = job(job_id)
    return None if current.active else current


def test_a_cancel_while_the_hub_is_down_is_delivered_once_it_is_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    batch_project(tmp_path)
    add_h1(capsys, sshd)
    gate = tmp_path / "gate"
    try:
        job_id = start_gated(capsys, gate)
        pid = workload_pid(sshd, job_id)
        sshd.stop()
        # Waits until the supervisor finds the hub down: the cancel is pending, not done.
        cancelled = harchos(capsys, "jobs", "cancel", job_id, "--wait", "40")
        assert cancelled.code == 0, cancelled.err
        assert cancelled.out.startswith(f"job {job_id}: cancel pending: hub h1 cannot be reached")
        current = job(job_id)
        assert (current.state, current.cancel_requested) == ("running", True)
        assert current.as_json()["cancel_pending"] is True
        assert alive(pid)
        assert "running, cancel pending" in harchos(capsys, "jobs", "list").out
        # Asked again, it never waits on the hub, and never says the job is already cancelled.
        again = harchos(capsys, "jobs", "cancel", job_id, "--wait", "0")
        assert again.out.startswith(f"job {job_id}: cancel pending"), again.out
        sshd.start()
        final = wait_until(lambda: finished(job_id), timeout=60)
    finally:
        gate.touch()
    assert (final.state, final.exit_code) == ("cancelled", 128 + 15), final.message
    assert final.as_json()["cancel_pending"] is False
    assert not alive(pid)
    assert "finished" not in log_path(job_id).read_text()


def test_a_job_whose_hub_changed_its_host_key_is_lost_until_reattached(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    batch_project(tmp_path)
    add_h1(capsys, sshd)
    gate = tmp_path / "gate"
    try:
        job_id = start_gated(capsys, gate)
        pid = workload_pid(sshd, job_id)
        sshd.restart(new_host_key=True)
        lost = wait_until(lambda: job(job_id) if job(job_id).state == "lost" else None)
        assert lost.failure == "hub"
        assert "has changed" in (lost.message or "")
        assert f"harchos jobs reattach {job_id}" in (lost.message or "")
        assert alive(pid)  # not failed: its workload runs on, and harchos says so
        # Refused while the hub is not trusted: the job stays lost.
        refused = harchos(capsys, "jobs", "reattach", job_id)
        assert refused.code == 4, refused.err
        assert refused.err.startswith("harchos: error:")
        assert "has changed" in refused.err
        assert job(job_id).state == "lost"
        # A new key checked and the old one forgotten, as the message's hint says.
        subprocess.run(
            ["ssh-keygen", "-R", known_hosts_name("127.0.0.1", sshd.port), "-f",
             str(known_hosts_file())],
            check=True, capture_output=True,
        )  # fmt: skip
        reattached = harchos(capsys, "jobs", "reattach", job_id)
        assert reattached.code == 0, reattached.err
        assert f"job {job_id}: reattached" in reattached.out
        assert job(job_id).state == "running"
        gate.touch()
        final = wait_until(lambda: finished(job_id), timeout=60)
    finally:
        gate.touch()
    assert (final.state, final.exit_code, final.failure) == ("done", 0, None), final.message
    assert "finished" in log_path(job_id).read_text()
    again = harchos(capsys, "jobs", "reattach", job_id)
    assert again.code == 2
    assert "only a lost job can be reattached" in again.err
    assert not os.path.exists(f"/proc/{pid}/cmdline") or not alive(pid)
