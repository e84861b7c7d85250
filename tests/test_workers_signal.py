"""A job's signals reach the workers of its launch, and a pause they confirm is recorded as one.

The launcher here behaves as torchrun does under `accelerate launch` (observed, see
../shared/reference/launching.md): its workers run in sessions (process groups) of their own,
it dies of SIGUSR1, and it exits 1 when a worker exits 85. The workers follow the training
contract: they register in `$HARCHOS_CONTROL_DIR/workers/` and confirm a pause there before
exiting 85. The real `accelerate launch` path is covered in test_pause_migrate.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_remote_jobs import alive, wait_exited, wait_log

from harchos_cli.hubs import jobs_for
from harchos_cli.hubs.base import LaunchSpec
from harchos_cli.hubs.inventory import local_hub
from harchos_cli.hubs.processes import HubJobs
from harchos_cli.hubs.ssh import SshTransport

__all__ = ["client_key_fixture", "sshd_fixture"]

WORKER = """
import json, os, signal, sys, time
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
folder = os.path.join(os.environ["HARCHOS_CONTROL_DIR"], "workers")
register = sys.argv[1] == "register"
if sys.argv[2] == "late":
    time.sleep(1.0)  # still starting up (imports, model) when the pause comes
if register:
    open(os.path.join(folder, str(os.getpid())), "w").close()
print("ready", os.getpid(), flush=True)
for _ in range(1200):  # at most a minute
    if stop:
        if sys.argv[2] == "crash":
            sys.exit(3)
        if register:
            tmp = os.path.join(folder, ".%d.tmp" % os.getpid())
            with open(tmp, "w") as handle:
                json.dump({"checkpoint": "ckpt", "step": 1}, handle)
            os.replace(tmp, os.path.join(folder, "%d.paused" % os.getpid()))
        sys.exit(85)
    time.sleep(0.05)
sys.exit(0)
"""

LAUNCHER = """
import subprocess, sys
modes = sys.argv[2:]
workers = [
    subprocess.Popen([sys.executable, "-c", sys.argv[1], "register" if m != "silent" else "no", m],
                     start_new_session=True)
    for m in modes
]
print("launcher", flush=True)
codes = [w.wait() for w in workers]
sys.exit(1 if any(codes) else 0)
"""


@pytest.fixture(params=["local", "ssh"])
def jobs(request: pytest.FixtureRequest) -> HubJobs:
    if request.param == "local":
        return jobs_for(local_hub())
    server: Sshd = request.getfixturevalue("sshd")
    return HubJobs(SshTransport(server.hub()))


def launch(jobs: HubJobs, job_id: str, tmp_path: Path, *modes: str) -> list[int]:
    argv = [sys.executable, "-c", LAUNCHER, WORKER, *modes]
    jobs.launch(LaunchSpec(job_id, argv, cwd=str(tmp_path)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = jobs.read_log(job_id, 0).decode()
        pids = [int(line.split()[1]) for line in log.splitlines() if line.startswith("ready ")]
        if len(pids) == len(modes):
            registered = Path(jobs.job_dir(job_id), "control", "workers")
            expected = sum(mode != "silent" for mode in modes)
            if registered.is_dir() and len(list(registered.iterdir())) == expected:
                return pids
        time.sleep(0.05)
    raise AssertionError(jobs.read_log(job_id, 0).decode())


def test_a_pause_reaches_every_worker_and_is_recorded_as_85(jobs: HubJobs, tmp_path: Path) -> None:
    pids = launch(jobs, "pause", tmp_path, "pause", "pause")
    assert jobs.signal("pause", signal.SIGUSR1)
    status = wait_exited(jobs, "pause")
    folder = Path(jobs.job_dir("pause"))
    # The launcher survived SIGUSR1 (it never got it) and exited 1, as torchrun does.
    assert (folder / "launcher_exit_code").read_text() == "1"
    assert status.exit_code == 85
    assert {p.name for p in (folder / "control" / "workers").iterdir()} == {
        *(str(pid) for pid in pids),
        *(f"{pid}.paused" for pid in pids),
    }
    assert not any(alive(pid) for pid in pids)


def test_a_worker_that_fails_instead_of_pausing_is_a_failure(jobs: HubJobs, tmp_path: Path) -> None:
    launch(jobs, "crash", tmp_path, "pause", "crash")
    assert jobs.signal("crash", signal.SIGTERM)
    status = wait_exited(jobs, "crash")
    assert status.exit_code == 1
    assert not (Path(jobs.job_dir("crash")) / "launcher_exit_code").exists()


def test_unregistered_workers_get_it_through_their_own_groups(
    jobs: HubJobs, tmp_path: Path
) -> None:
    pids = launch(jobs, "silent", tmp_path, "silent", "silent")
    # Within its first two minutes a pause waits for workers to register; past that (aged here
    # through the pid file's time), it goes to the process groups under the launcher.
    assert not jobs.signal("silent", signal.SIGUSR1)
    pid_file = Path(jobs.job_dir("silent"), "pid")
    os.utime(pid_file, (time.time() - 300, time.time() - 300))
    assert jobs.signal("silent", signal.SIGUSR1)
    status = wait_exited(jobs, "silent")
    # The launcher was spared (no death by SIGUSR1, 138) and reported its workers' failure;
    # without their confirmation harchos cannot call it a pause.
    assert status.exit_code == 1
    assert not any(alive(pid) for pid in pids)


def test_workers_a_dead_launcher_left_behind_are_stopped_before_the_exit_is_recorded(
    tmp_path: Path,
) -> None:
    jobs = jobs_for(local_hub())
    pids = launch(jobs, "orphans", tmp_path, "pause", "pause")
    launcher = jobs.status("orphans").pid
    assert launcher is not None
    os.kill(launcher, signal.SIGKILL)
    status = wait_exited(jobs, "orphans")
    # The monitor adopted the orphans, asked them to stop (SIGTERM: they saved and exited).
    assert not any(alive(pid) for pid in pids)
    assert (Path(jobs.job_dir("orphans")) / "launcher_exit_code").read_text() == "137"
    assert status.exit_code == 85


def test_sigkill_reaches_every_group_of_the_tree(jobs: HubJobs, tmp_path: Path) -> None:
    pids = launch(jobs, "kill", tmp_path, "silent", "silent")
    assert jobs.signal("kill", signal.SIGKILL)
    wait_exited(jobs, "kill")
    assert not any(alive(pid) for pid in pids)
    wait_log(jobs, "kill", b"launcher")


def test_a_pause_before_the_workers_registered_waits_for_them(
    jobs: HubJobs, tmp_path: Path
) -> None:
    argv = [sys.executable, "-c", LAUNCHER, WORKER, "late"]
    jobs.launch(LaunchSpec("early", argv, cwd=str(tmp_path)))
    wait_log(jobs, "early", b"launcher")
    # Sent now it would kill the launcher (138) and orphan the worker: it is held instead.
    assert not jobs.signal("early", signal.SIGUSR1)
    assert jobs.status("early").state == "running"
    registered = Path(jobs.job_dir("early"), "control", "workers")
    deadline = time.monotonic() + 30
    while not any(registered.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.signal("early", signal.SIGUSR1)
    assert wait_exited(jobs, "early").exit_code == 85
