"""Moving a training run's checkpoints from one hub to another, verified before anything uses them.

The copy goes through this machine (hub → here → hub), so it works wherever harchos reaches both
hubs, even when they cannot reach each other. It is resumable (rsync keeps what arrived in the
staging folder and sends only what differs), it never deletes anything on the source, and the
target's copy is checked file by file against the source's own sha256 sums before the job may
resume there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harchos_cli.errors import HubError
from harchos_cli.hubs.base import Hub, in_place
from harchos_cli.jobs import launchers
from harchos_cli.jobs.spec import Project


@dataclass(frozen=True)
class Moved:
    """What a checkpoint copy moved, and how long it took."""

    files: int
    bytes: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


def project_dir_on(hub: Hub, project: Project) -> str:
    """Where `project` lives on `hub` (in place on this machine)."""
    from harchos_cli.hubs import remote_project_dir

    return str(project.root) if in_place(hub) else remote_project_dir(hub, project.root)


def run_checkpoint_dir(hub: Hub, project: Project, run_id: str) -> str:
    return launchers.checkpoint_dir(project_dir_on(hub, project), project, run_id)


def copy_run_checkpoints(
    project: Project, run_id: str, source: Hub, target: Hub, *, staging: Path
) -> Moved:
    """Copy the run's checkpoint folder from `source` to `target` and verify it.

    Raises:
        HubError: a hub could not be reached, a copy failed, or the target's copy does not
            match the source's checksums (the target is then never used).
    """
    from harchos_cli.hubs import jobs_for, transport_for

    started = time.monotonic()
    source_dir = run_checkpoint_dir(source, project, run_id)
    target_dir = run_checkpoint_dir(target, project, run_id)
    source_jobs, target_jobs = jobs_for(source), jobs_for(target)
    expected = source_jobs.digest(source_dir)
    if not expected:
        raise HubError(f"hub {source.name!r} holds no checkpoint of this run in {source_dir}")
    same_place = in_place(source) and in_place(target)
    if not same_place:
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        transport_for(source).sync_down(source_dir, staging)
        transport_for(target).push_dir(staging, target_dir)
    found = target_jobs.digest(target_dir)
    wrong = sorted(name for name, digest in expected.items() if found.get(name) != digest)
    if wrong:
        raise HubError(
            f"the copy of the checkpoints on hub {target.name!r} does not match the source "
            f"({len(wrong)} file(s) differ, e.g. {wrong[0]})",
            hint="the job stays where it was; try the move again",
        )
    size = (
        sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        if (not same_place)
        else 0
    )
    return Moved(len(expected), size, time.monotonic() - started)


def delete_run_checkpoints(project: Project, run_id: str, hub: Hub) -> str:
    """Delete the run's checkpoint folder on `hub` (a move's source, once the target made
    progress); the folder deleted."""
    from harchos_cli.hubs import transport_for

    transport = transport_for(hub)
    folder = transport.expand(run_checkpoint_dir(hub, project, run_id))
    transport.run(["rm", "-rf", "--", folder], timeout=600)
    return folder


def pull(project: Project, run_id: str, hub: Hub, remote_project: str, dest: Path) -> list[str]:
    """Copy a job's `outputs/` and its run's checkpoints from `hub` (where it ran last) into
    `dest`, keeping the project's layout; the folders copied (none when they are here already).
    """
    from harchos_cli.hubs import transport_for

    transport = transport_for(hub)
    checkpoints = launchers.checkpoint_dir(remote_project, project, run_id)
    wanted = {
        "outputs": f"{remote_project.rstrip('/')}/outputs",
        _relative_checkpoints(project, run_id): checkpoints,
    }
    copied: list[str] = []
    for name, source in wanted.items():
        exists = transport.run(["test", "-d", source], check=False, timeout=60).returncode == 0
        if not exists:
            continue
        target = dest / name
        if in_place(hub) and Path(source).resolve() == target.resolve():
            continue
        transport.sync_down(source, target)
        copied.append(name)
    return copied


def _relative_checkpoints(project: Project, run_id: str) -> str:
    base = project.spec.job.checkpoint_dir.rstrip("/") or "checkpoints"
    if base.startswith(("/", "~")):
        return f"checkpoints/{run_id}"
    return f"{base}/{run_id}"
