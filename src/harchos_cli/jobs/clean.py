"""Forget finished jobs: their rows, their local folder, and what they left on their hubs.

A job is forgotten only when nothing of it can still be running: it is finished (done, failed,
cancelled), no supervisor holds it, and every folder it had on a hub is gone or belongs to a
process the hub's runner says has exited. A folder whose process still runs is never removed
(the job is kept, so harchos keeps track of it); an unreachable hub keeps its folders, and the
job is kept for a later clean unless `force`. On a hub, the job's `~/.harchos/jobs/<hub job
id>` folders are removed, and the project's copy there (`<workdir>/<name>-<hash>`) once no job
left in the store uses it (`clean_copy`): never while a job of the project is not finished or a
serving deployment of it is live, and never while it holds checkpoints or outputs (the results
`harchos jobs pull` copies) with no verified copy elsewhere (the same files, by sha256, at the
same place in the local project). A job is kept, as the way to pull them, while its run's
checkpoints there (or, for the last job that used the copy, any results there) have none,
unless `force`. A project's own folder on this machine is never touched.
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
from harchos_cli.hubs.ssh import SYNC_MANIFEST
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
    return sorted(old, key=lambda job: (finished_before(job), job.created_at, job.id))


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

    def clean_copy(
        self, copy: ProjectCopy, job: Job, users: list[Job], outcome: Outcome, *, dry_run: bool
    ) -> bool:
        """Remove the project copy `copy` as `job` is forgotten, unless a job in `users` (the
        store's other jobs of the project on its hub) still uses it or it holds results with no
        verified copy elsewhere. While others use it, only the job's own run's checkpoints must
        be verified (or belong to another job's run too, which can still pull them). False when
        the job must be kept (unverified results, hub down)."""
        from harchos_cli.hubs import transport_for

        hub = copy.hub
        run = job.run_id or job.id
        if any((user.run_id or user.id) == run for user in users):
            return True  # another job of the run can pull its checkpoints
        if hub.name in self.down:
            self._unreachable(hub, outcome)
            return False
        try:
            transport = transport_for(hub)
            folder = transport.expand(copy.folder).rstrip("/")
            workdir = transport.expand(hub.workdir).rstrip("/")
            if not folder.startswith(f"{workdir}/"):
                outcome.kept.append(f"hub {hub.name}: {folder} is not under its workdir")
                return True
            if transport.run(["test", "-d", folder], check=False, timeout=60).returncode != 0:
                return True  # gone already
            results = _results(copy.project_dir)
            if users:  # the copy stays for them: only this run's checkpoints matter here
                results = [f"{base}/{run}" for base in results if base != "outputs"]
            unverified = _unverified_results(copy, folder, results)
            if unverified:
                outcome.kept.append(
                    f"its project copy {folder} on hub {hub.name} holds {unverified} with no "
                    f"verified copy elsewhere: harchos jobs pull {outcome.job_id} copies them "
                    "into the project"
                )
                return False
            if users:
                return True  # the copy goes with the last job that used it
            if not dry_run:
                # Only a folder harchos synced (it holds the sync's manifest), under the workdir.
                transport.run(
                    ["sh", "-c", 'case "$1" in "$2"/?*) ;; *) exit 3 ;; esac; '
                     'test -e "$1/$3" || exit 3; rm -rf -- "$1"',
                     "harchos-clean", folder, workdir, SYNC_MANIFEST],
                    timeout=600,
                )  # fmt: skip
            outcome.removed.append(f"{hub.name}:{folder} (project copy)")
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


@dataclass(frozen=True)
class ProjectCopy:
    """A project's copy on a hub (never this machine's own folder): where it is, and the local
    project it copies."""

    hub: Hub
    folder: str  # as recorded: absolute, or under `~`
    project_dir: str


def copies_of(job: Job) -> list[ProjectCopy]:
    """The copies of the job's project on every hub it ran on that is not this machine."""
    from harchos_cli.hubs import remote_project_dir
    from harchos_cli.hubs.base import in_place

    launch = job.request.get("launch") or {}
    folders: dict[str, str] = {}
    for spec in [launch, *(launch.get("nodes") or [])]:
        name = ((spec or {}).get("hub") or {}).get("name")
        if name and spec.get("cwd"):
            folders.setdefault(str(name), str(spec["cwd"]))
    return [
        ProjectCopy(hub, folders.get(hub.name) or remote_project_dir(hub, Path(job.project_dir)),
                    job.project_dir)
        for hub in hubs_of(job)
        if not in_place(hub)
    ]  # fmt: skip


def _uses(job: Job, copy: ProjectCopy) -> bool:
    """Whether `job` ran, runs or may run in `copy` (its project, on that hub)."""
    if job.project_dir != copy.project_dir:
        return False
    names = {hub.name for hub in hubs_of(job)} | {job.hub} | set(job.request.get("nodes") or [])
    return copy.hub.name in names


def _local_digest(folder: Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder` here (as the hub runner's)."""
    import hashlib

    sums: dict[str, str] = {}
    for here, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(here, name)
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError:
                continue
            sums[os.path.relpath(path, folder)] = digest.hexdigest()
    return sums


def _results(project_dir: str) -> list[str]:
    """The project's results folders, relative to its copy: its checkpoints (when inside the
    project: absolute ones are not in the copy) and `outputs`."""
    from harchos_cli.jobs.spec import load_project

    base = "checkpoints"
    with contextlib.suppress(HarchosError, OSError):
        base = load_project(Path(project_dir), required=False).spec.job.checkpoint_dir
    base = base.rstrip("/") or "checkpoints"
    return ["outputs"] if base.startswith(("/", "~")) else [base, "outputs"]


def _unverified_results(copy: ProjectCopy, folder: str, results: list[str]) -> str | None:
    """What files under the `results` folders of the copy at `folder` (expanded) have no
    verified copy elsewhere: each must be found, with the same sha256, at the same place in the
    local project (where `harchos jobs pull` copies them). None when all have."""
    from harchos_cli.hubs import jobs_for, transport_for

    transport = transport_for(copy.hub)
    missing: list[str] = []
    for rel in results:
        remote = f"{folder}/{rel}"
        if transport.run(["test", "-d", remote], check=False, timeout=60).returncode != 0:
            continue
        sums = jobs_for(copy.hub).digest(remote)
        here = _local_digest(Path(copy.project_dir) / rel) if sums else {}
        missing.extend(f"{rel}/{name}" for name, digest in sums.items() if here.get(name) != digest)
    if not missing:
        return None
    return f"{len(missing)} file(s) of its results (e.g. {sorted(missing)[0]})"


def clean(
    store: JobStore, older_than: timedelta, *, dry_run: bool = False, force: bool = False,
    now: datetime | None = None,
) -> list[Outcome]:  # fmt: skip
    """Forget the finished jobs older than `older_than` (see the module docstring)."""
    from harchos_cli.serve.store import ServeStore

    hubs = _Hubs()
    outcomes = []
    gone: set[str] = set()  # forgotten in this pass (or, with `dry_run`, would be)
    every = store.list()
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
            others = [j for j in every if j.id != job.id and j.id not in gone]
            serving = ServeStore(store.db).live(job.project_dir)
            for copy in copies_of(job):
                if serving:  # a deployment's replicas run in the project's copies
                    outcome.kept.append(
                        f"hub {copy.hub.name}: its project copy stays while "
                        f"deployment {serving[0].id} serves the project"
                    )
                    continue
                users = [other for other in others if _uses(other, copy)]
                ok = hubs.clean_copy(copy, job, users, outcome, dry_run=dry_run)
                complete = ok and complete
        if (complete or force) and not outcome.running:
            outcome.forgotten = dry_run or store.forget(job.id)
            if outcome.forgotten and not dry_run:
                shutil.rmtree(job_dir(job.id), ignore_errors=True)
            if outcome.forgotten:
                gone.add(job.id)
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


def clean_when_due() -> bool:
    """With the `jobs.retention` setting, start the automatic clean in the background when it
    is due (at most hourly); True when one was started. Cheap (a setting and a file's time)
    and never fails its caller: a broken setting is for `harchos jobs clean` to report."""
    from harchos_cli.config import Config

    try:
        age = retention(Config.load().get("jobs.retention"))
        if age is None or not due():
            return False
        clean_in_background(age)
    except (HarchosError, OSError):
        return False
    return True


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
