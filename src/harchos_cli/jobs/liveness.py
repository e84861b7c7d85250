"""Is a job's supervisor alive, and starting one. Light: imports only the store.

One supervisor per job, guaranteed by an exclusive `flock` on `supervisor.lock` in the job's
folder: the kernel releases it when the process dies, even by SIGKILL, so "can I take the lock"
is an exact liveness test that no stale pid file or recycled pid can fool.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator

from harchos_cli.jobs.store import ACTIVE, JobStore, ensure_job_dir, job_dir


class AlreadySupervisedError(Exception):
    """Another live process supervises this job."""


@contextlib.contextmanager
def supervisor_lock(job_id: str) -> Iterator[None]:
    """Hold the job's supervisor lock; `AlreadySupervisedError` when another process holds it."""
    folder = ensure_job_dir(job_id)
    fd = os.open(folder / "supervisor.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadySupervisedError(job_id) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def is_supervised(job_id: str) -> bool:
    """Whether a live process holds the job's supervisor lock (cheap: one open and flock)."""
    path = job_dir(job_id) / "supervisor.lock"
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


def spawn(job_id: str, module: str = "harchos_cli.jobs.supervisor") -> int:
    """Start `python -m MODULE JOB_ID` (a job's supervisor, or a deployment's controller)
    detached in its own session, its errors in `supervisor.err`; return its pid."""
    folder = ensure_job_dir(job_id)
    err_fd = os.open(folder / "supervisor.err", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    with os.fdopen(err_fd, "ab") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", module, job_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    return process.pid


def revive(store: JobStore | None = None) -> list[str]:
    """Restart the supervisor of every active job that has none; return their ids.

    Cheap when nothing is active: one indexed query, no import beyond the store.
    """
    own = store is None
    store = store or JobStore()
    try:
        revived = []
        # A job the policy paused waits, supervised, for its planned hour.
        waiting = [j for j in store.list(states=["paused"]) if j.request.get("resume_at")]
        for job in [*store.list(states=ACTIVE), *waiting]:
            if not is_supervised(job.id):
                spawn(job.id)
                revived.append(job.id)
        return revived
    finally:
        if own:
            store.close()
