"""Hubs: this machine, GPU boxes reached over SSH, or Slurm clusters, and the processes harchos
runs on them.

The small public API the job layer uses:

    hub = inventory.get(name)                 # or inventory.local_hub()
    transport = transport_for(hub)            # Transport: run, sync_up, sync_down, expand
    jobs = jobs_for(hub)                      # HubJobs (RemoteJobs): launch, status, read_log, ...
    remote = transport.sync_up(project, remote_project_dir(hub, project))
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from harchos_cli.hubs.base import SLURM, Hub, Transport, in_place

if TYPE_CHECKING:
    from harchos_cli.hubs.processes import HubJobs


def transport_for(hub: Hub) -> Transport:
    """The transport that reaches `hub`: a local one for `local` (and a Slurm cluster whose login
    node this is), else the system ssh/rsync."""
    if in_place(hub):
        from harchos_cli.hubs.local import LocalTransport

        return LocalTransport(hub)
    from harchos_cli.hubs.ssh import SshTransport

    return SshTransport(hub)


def jobs_for(hub: Hub) -> HubJobs:
    """Detached jobs on `hub` (job directories under `~/.harchos/jobs/<id>/` there; on a Slurm
    hub, on its shared filesystem, the jobs submitted with `sbatch`)."""
    from harchos_cli.hubs.processes import HubJobs

    if hub.transport == SLURM:
        from harchos_cli.hubs.slurm import SlurmJobs

        return SlurmJobs(transport_for(hub))
    return HubJobs(transport_for(hub))


def remote_project_dir(hub: Hub, project: Path) -> str:
    """The project's own folder on `hub`: `<workdir>/<name>-<hash of its local path>`.

    One folder per local project, stable across runs, so checkpoints the job writes there
    survive the next sync and two projects with the same name never share a folder.
    """
    resolved = project.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name).strip("._") or "project"
    return f"{hub.workdir.rstrip('/') or '/'}/{name}-{digest}"
