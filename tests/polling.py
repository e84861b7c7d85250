"""Waiting for things that happen in other processes: the store, the hub, a server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harchos_cli.jobs.store import Job, JobStore


def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


def job(job_id: str) -> Job:
    """The job as the store has it now."""
    store = JobStore()
    try:
        return store.get(job_id)
    finally:
        store.close()
