"""`harchos hubs check`: can harchos reach a hub, and what is there (Python, GPUs, disk)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from harchos_cli.errors import HubError
from harchos_cli.hubs.base import (
    HostKeyError,
    Hub,
    HubUnreachableError,
    Transport,
    in_place,
)

HostKeyState = Literal["pinned", "new", "changed", "unpinned"]
# Per hub: up to 3 connection attempts of 2 s each with 0.5 s and 1 s backoff, a 9 s cap on any
# one command, and 9.5 s for all of it, so a dead hub is called unreachable within 10 s but a
# single blip is not.
CHECK_CONNECT_TIMEOUT_S = 2.0
CHECK_ATTEMPTS = 3
CHECK_COMMAND_TIMEOUT_S = 9.0
CHECK_BUDGET_S = 9.5


@dataclass
class HubCheck:
    """What `check_hub` found. `host_key`: pinned (known and matching), new (accepted and
    pinned just now), changed (refused), unpinned (strict and unknown, or never reached);
    None for the local hub."""

    hub: str
    reachable: bool
    host_key: HostKeyState | None = None
    python: str | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    free_disk_gb: float | None = None
    workdir_writable: bool | None = None
    accelerate: bool | None = None  # whether the hub's Python finds it (training needs it)
    rsync: bool | None = None
    # A Slurm hub: its partition as `sinfo`/`scontrol` describe it
    # ({"partition", "state", "nodes", "cpus", "gpus", "node_states"}).
    slurm: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and self.error is None

    def as_json(self) -> dict[str, Any]:
        """The stable JSON shape (`hubs check --json`)."""
        return asdict(self)


def _probe(transport: Transport, hub: Hub) -> dict[str, Any]:
    from harchos_cli.hubs.processes import HubJobs

    return HubJobs(transport, attempts=1).info(hub.workdir, timeout_s=CHECK_COMMAND_TIMEOUT_S)


def check_hub(hub: Hub) -> HubCheck:
    """Check one hub; never raises for a hub-side problem (it goes in `error`)."""
    from harchos_cli.hubs import transport_for

    if in_place(hub):
        transport = transport_for(hub)
        try:
            info = _probe(transport, hub)
        except HubError as exc:
            return HubCheck(hub.name, reachable=True, error=str(exc))
        return _with_partition(_found(hub, info, reachable=True, host_key=None), hub, transport)

    from harchos_cli.hubs.ssh import SshTransport

    ssh = SshTransport(
        hub,
        connect_timeout_s=CHECK_CONNECT_TIMEOUT_S,
        attempts=CHECK_ATTEMPTS,
        budget_s=CHECK_BUDGET_S,
    )
    pinned = ssh.host_key_pinned()
    try:
        info = _probe(ssh, hub)
    except HostKeyError as exc:
        state: HostKeyState = "changed" if exc.changed else "unpinned"
        return HubCheck(hub.name, reachable=False, host_key=state, error=str(exc))
    except HubUnreachableError as exc:
        return HubCheck(
            hub.name, reachable=False, host_key="pinned" if pinned else "unpinned", error=str(exc)
        )
    except HubError as exc:
        # Connected (authentication or the hub's Python failed): the key was checked.
        reached = "refused the login" not in exc.message
        state = "pinned" if pinned else ("new" if ssh.host_key_pinned() else "unpinned")
        return HubCheck(hub.name, reachable=reached, host_key=state, error=str(exc))
    found = _found(hub, info, reachable=True, host_key="pinned" if pinned else "new")
    return _with_partition(found, hub, ssh)


def _with_partition(found: HubCheck, hub: Hub, transport: Transport) -> HubCheck:
    """A Slurm hub's check adds its partition: nodes, CPUs, GPUs (from `Gres`) and states."""
    if hub.transport != "slurm":
        return found
    from harchos_cli.hubs.slurm_cli import partition_info

    try:
        partition = partition_info(transport.run, hub.partition or "")
    except HubError as exc:
        found.error = found.error or str(exc)
        return found
    states: dict[str, int] = {}
    for node in partition.nodes:
        states[node.state] = states.get(node.state, 0) + 1
    found.slurm = {
        "partition": partition.name, "state": partition.state, "nodes": len(partition.nodes),
        "cpus": partition.cpus, "gpus": partition.gpus, "node_states": states,
    }  # fmt: skip
    if not partition.nodes:
        found.error = found.error or f"Slurm partition {partition.name!r} has no nodes"
    return found


def _found(
    hub: Hub, info: dict[str, Any], *, reachable: bool, host_key: HostKeyState | None
) -> HubCheck:
    found = HubCheck(
        hub=hub.name,
        reachable=reachable,
        host_key=host_key,
        python=str(info.get("python")),
        gpus=list(info.get("gpus") or []),
        free_disk_gb=info.get("free_disk_gb"),
        workdir_writable=info.get("workdir_writable"),
        accelerate=info.get("accelerate"),
        rsync=info.get("rsync"),
    )
    if found.workdir_writable is False:
        found.error = (
            f"cannot write to {info.get('disk_path')} on the hub, where projects go "
            f"({hub.workdir}); give a writable --workdir"
        )
    if found.accelerate is False:
        found.warnings.append(
            f"{hub.python} there cannot import accelerate: training needs it (pip install "
            "'accelerate>=1.0' there, or a [job] setup that installs it)"
        )
    if found.rsync is False and not in_place(hub):
        found.error = found.error or "rsync is not installed on the hub; harchos syncs with it"
    return found


def check_hubs(hubs: Sequence[Hub], *, max_workers: int = 8) -> list[HubCheck]:
    """Check several hubs at once (threads), in the order given."""
    if len(hubs) <= 1:
        return [check_hub(hub) for hub in hubs]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hubs))) as pool:
        return list(pool.map(check_hub, hubs))
