"""Is a job's supervisor alive, and starting one; the same for the scheduler that holds the
detached jobs waiting for their window (`harchos_cli.jobs.scheduler`). Light: imports only the
store.

One supervisor per job, guaranteed by an exclusive `flock` on `supervisor.lock` in the job's
folder, and one scheduler per `HARCHOS_HOME` (`_scheduler/scheduler.lock`): the kernel releases a
lock when its process dies, even by SIGKILL, so "can I take the lock" is an exact liveness test
that no stale pid file or recycled pid can fool.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from harchos_cli import paths
from harchos_cli.jobs.store import ACTIVE, JobStore, ensure_job_dir, job_dir


class AlreadySupervisedError(Exception):
    """Another live process supervises this job."""


@contextlib.contextmanager
def supervisor_lock(job_id: str) -> Iterator[None]:
    """Hold the job's supervisor lock; `AlreadySupervisedError` when another process holds it."""
    with _holding(ensure_job_dir(job_id) / "supervisor.lock", AlreadySupervisedError(job_id)):
        yield


@contextlib.contextmanager
def _holding(path: Path, taken: Exception) -> Iterator[None]:
    """Hold an exclusive flock on `path` (this process's pid written in it); raise `taken`
    when another process holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise taken from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def is_supervised(job_id: str) -> bool:
    """Whether a live process holds the job's supervisor lock (cheap: one open and flock)."""
    return _locked(job_dir(job_id) / "supervisor.lock")


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class AlreadySchedulingError(Exception):
    """Another live process is the scheduler."""


def scheduler_dir() -> Path:
    """The scheduler's folder (lock, log, errors), beside the supervisors' per-job folders."""
    return paths.private_dir(paths.supervisor_dir() / "_scheduler")


@contextlib.contextmanager
def scheduler_lock() -> Iterator[None]:
    """Hold the scheduler lock; `AlreadySchedulingError` when another process holds it."""
    with _holding(scheduler_dir() / "scheduler.lock", AlreadySchedulingError()):
        yield


def is_scheduling() -> bool:
    """Whether a live process is the scheduler (cheap: one open and flock)."""
    return _locked(paths.supervisor_dir() / "_scheduler" / "scheduler.lock")


def start_scheduler() -> subprocess.Popen[bytes] | None:
    """Start the scheduler unless one runs; the process started, or None."""
    if is_scheduling():
        return None
    return _detached(["harchos_cli.jobs.scheduler"], scheduler_dir() / "scheduler.err")


def spawn(job_id: str, module: str = "harchos_cli.jobs.supervisor") -> int:
    """Start `python -m MODULE JOB_ID` (a job's supervisor, or a deployment's controller)
    detached in its own session, its errors in `supervisor.err`; return its pid."""
    return _start(job_id, module).pid


def _start(job_id: str, module: str) -> subprocess.Popen[bytes]:
    return _detached([module, job_id], ensure_job_dir(job_id) / "supervisor.err")


def _detached(module_args: list[str], errors: Path) -> subprocess.Popen[bytes]:
    """`python -m MODULE ARGS...` in a session of its own (it outlives the terminal), its
    errors appended to `errors` (0600)."""
    err_fd = os.open(errors, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    with os.fdopen(err_fd, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )


def _lock_holder(job_id: str) -> int | None:
    """The pid the lock's holder wrote into `supervisor.lock` (it stays after the holder ends)."""
    try:
        text = (job_dir(job_id) / "supervisor.lock").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _kept_lock(job_id: str, child: subprocess.Popen[bytes], wait: float) -> bool:
    """Whether `child` became the job's supervisor: it wrote its pid into the lock, rather than
    ending (another process's child took the lock first). Undecided after `wait` seconds while
    it still runs counts as kept: it has not lost the race yet."""
    deadline = time.monotonic() + wait
    while True:
        if _lock_holder(job_id) == child.pid:
            return True
        if child.poll() is not None:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def revive(store: JobStore | None = None, *, confirm: float = 0.0) -> list[str]:
    """Restart the supervisor of every active job that has none; return their ids.

    Several `harchos` started at once each start one, and only one keeps the lock. With
    `confirm` > 0, wait up to that many seconds per job and return only the jobs whose
    supervisor this process started and that kept the lock, so that one process says so.
    Cheap when nothing is active: one indexed query, no import beyond the store.
    """
    own = store is None
    store = store or JobStore()
    try:
        started: list[tuple[str, subprocess.Popen[bytes]]] = []
        # A job the policy paused waits, supervised, for its planned hour.
        waiting = [j.id for j in store.list(states=["paused"]) if j.request.get("resume_at")]
        # Only the active jobs' ids, through the state index: a store of finished jobs costs
        # nothing here however large it grows. A detached job waiting for its window is the
        # scheduler's, one process for all of them.
        held = set(store.held_ids())
        for job_id in [*store.ids(states=ACTIVE), *waiting]:
            if job_id not in held and not is_supervised(job_id):
                started.append((job_id, _start(job_id, "harchos_cli.jobs.supervisor")))
        if held:
            start_scheduler()
        if confirm <= 0:
            return [job_id for job_id, _ in started]
        return [job_id for job_id, child in started if _kept_lock(job_id, child, confirm)]
    finally:
        if own:
            store.close()
