"""Forget finished jobs: their rows, their local folder, and what they left on their hubs.

A job is forgotten only when nothing of it can still be running: it is finished (done, failed,
cancelled), no supervisor holds it, and every folder it had on a hub is gone or belongs to a
process the hub's runner says has exited. A folder whose process still runs is never removed
(the job is kept, so harchos keeps track of it); an unreachable hub keeps its folders, and the
job is kept for a later clean unless `force`. Only `~/.harchos/jobs/<hub job id>` folders are
removed on a hub: a project's copy and its checkpoints are never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harchos_cli import paths
from harchos_cli.errors import HarchosError
from harchos_cli.jobs.liveness import is_supervised
from harchos_cli.jobs.store import FINISHED, Job, JobStore, job_dir
from harchos_cli.timeparse import parse_duration, parse_instant, utcnow

if TYPE_CHECKING:
    from harchos_cli.hubs.base import Hub

DEFAULT_AGE = "7d"
# Automatic cleaning (the `jobs.retention` setting) runs at most this often.
AUTO_INTERVAL = timedelta(hours=1)


@dataclass
class Outcome:
    """What happened to one job: forgotten or kept (with why), and the hub folders removed."""

    job_id: str
    state: str
    finished_at: str
    forgotten: bool = False
    running: bool = False  # a folder's process still runs on a hub: never forgotten
    unreachable: bool = False  # a hub holding its folders could not be reached
    removed: list[str] = field(default_factory=list)  # "hub:folder"
    kept: list[str] = field(default_factory=list)  # why something was left

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "finished_at": self.finished_at,
                "forgotten": self.forgotten, "running": self.running,
                "unreachable": self.unreachable, "removed": self.removed,
                "kept": self.kept}  # fmt: skip


def finished_before(job: Job) -> datetime:
    """When the job finished (a job cancelled before it started has only its last update)."""
    return parse_instant(job.finished_at or job.updated_at or job.created_at)


def candidates(store: JobStore, older_than: timedelta, now: datetime | None = None) -> list[Job]:
    """Finished jobs that finished more than `older_than` ago, oldest first."""
    cutoff = (now or utcnow()) - older_than
    old = [job for job in store.list(states=FINISHED) if finished_before(job) < cutoff]
    return sorted(old, key=finished_before)


def hub_job_ids(job: Job) -> list[str]:
    """Every folder name the job may have on a hub: `<id>` for attempt 1, `<id>-a<n>` after,
    and `-n<rank>` after either for the other machines of a multi-node job."""
    launch = job.request.get("launch") or {}
    machines = max(1 + len(launch.get("nodes") or []), len(job.request.get("nodes") or []))
    ids = []
    for attempt in range(1, max(job.attempt, 1) + 1):
        base = job.id if attempt == 1 else f"{job.id}-a{attempt}"
        ids.append(base)
        ids.extend(f"{base}-n{rank}" for rank in range(1, machines))
    return ids


def hubs_of(job: Job) -> list[Hub]:
    """Every hub the job was launched on, as it was then (none: it never launched)."""
    from harchos_cli.hubs import inventory

    launch = job.request.get("launch") or {}
    saved = [*(job.request.get("hubs_used") or []), launch.get("hub"),
             *((node or {}).get("hub") for node in launch.get("nodes") or [])]  # fmt: skip
    hubs: dict[str, Hub] = {}
    for data in saved:
        if isinstance(data, dict) and data.get("name") and data["name"] not in hubs:
            hubs[data["name"]] = inventory.from_json(data)
    return list(hubs.values())


class _Hubs:
    """Reaches each hub at most until it first fails: one unreachable hub costs one timeout."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}

    def clean(self, hub: Hub, hub_job_id: str, outcome: Outcome, *, dry_run: bool) -> bool:
        """Remove the folder of `hub_job_id` on `hub` when its process exited; False when it
        must be kept (still running, or the hub cannot be reached)."""
        from harchos_cli.hubs import jobs_for, transport_for

        if hub.name in self.down:
            self._unreachable(hub, outcome)
            return False
        try:
            runner = jobs_for(hub)
            state = runner.status(hub_job_id).state
            if state == "absent":
                return True
            if state != "exited":
                outcome.running = True
                outcome.kept.append(f"{hub_job_id} still runs on hub {hub.name}")
                return False
            folder = runner.job_dir(hub_job_id)
            # The runner's folder for this id, and nothing above it (never a project's copy).
            if folder.rstrip("/").rsplit("/", 1)[-1] != hub_job_id:
                outcome.kept.append(f"hub {hub.name}: unexpected folder {folder}")
                return False
            if not dry_run:
                transport_for(hub).run(["rm", "-rf", "--", folder])
            outcome.removed.append(f"{hub.name}:{folder}")
            return True
        except HarchosError as exc:
            self.down[hub.name] = exc.message
            self._unreachable(hub, outcome)
            return False

    def _unreachable(self, hub: Hub, outcome: Outcome) -> None:
        outcome.unreachable = True
        why = f"hub {hub.name} unreachable ({self.down[hub.name]}): its folders kept"
        if why not in outcome.kept:
            outcome.kept.append(why)


def clean(
    store: JobStore, older_than: timedelta, *, dry_run: bool = False, force: bool = False,
    now: datetime | None = None,
) -> list[Outcome]:  # fmt: skip
    """Forget the finished jobs older than `older_than` (see the module docstring)."""
    hubs = _Hubs()
    outcomes = []
    for job in candidates(store, older_than, now):
        outcome = Outcome(job.id, job.state, job.finished_at or job.updated_at)
        outcomes.append(outcome)
        if is_supervised(job.id):  # its supervisor is still writing its last records
            outcome.kept.append("its supervisor is still finishing")
            continue
        complete = True
        for hub in hubs_of(job):
            for hub_job_id in hub_job_ids(job):
                complete = hubs.clean(hub, hub_job_id, outcome, dry_run=dry_run) and complete
                if hub.name in hubs.down:
                    break
        if (complete or force) and not outcome.running:
            outcome.forgotten = dry_run or store.forget(job.id)
            if outcome.forgotten and not dry_run:
                shutil.rmtree(job_dir(job.id), ignore_errors=True)
    return outcomes


def _stamp() -> Path:
    return paths.supervisor_dir() / "last-clean"


def retention(value: object) -> timedelta | None:
    """The `jobs.retention` setting as a duration (None: keep every job)."""
    if value is None or str(value).strip().lower() in ("", "none", "keep"):
        return None
    return parse_duration(str(value))


def due(now: float | None = None) -> bool:
    """Whether the automatic clean last ran more than `AUTO_INTERVAL` ago (or never)."""
    try:
        last = _stamp().stat().st_mtime
    except OSError:
        return True
    return (now or time.time()) - last >= AUTO_INTERVAL.total_seconds()


def clean_in_background(older_than: timedelta) -> None:
    """Start `python -m harchos_cli.jobs.clean AGE` detached and mark the hour as done, so that
    the command that asked (`harchos jobs list`) never waits on a hub."""
    stamp = _stamp()
    paths.private_dir(stamp.parent)
    stamp.touch(mode=0o600)
    with open(os.devnull, "wb") as quiet:
        subprocess.Popen(
            [sys.executable, "-m", "harchos_cli.jobs.clean", f"{older_than.total_seconds():.0f}s"],
            stdin=subprocess.DEVNULL, stdout=quiet, stderr=quiet, start_new_session=True,
            close_fds=True,
        )  # fmt: skip


@contextlib.contextmanager
def _store() -> Iterator[JobStore]:
    store = JobStore()
    try:
        yield store
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m harchos_cli.jobs.clean AGE`: the quiet automatic clean (jobs whose hub cannot
    be reached are kept for the next one)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harchos_cli.jobs.clean AGE", file=sys.stderr)
        return 2
    try:
        with _store() as store:
            clean(store, parse_duration(args[0]))
    except HarchosError as exc:
        print(f"harchos clean: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
