"""`harchos run serve` and `harchos serve status|stop|logs`: the library behind the commands."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harchos_cli.errors import UsageError
from harchos_cli.hubs.base import LOCAL, Hub
from harchos_cli.jobs.spec import Project, load_project
from harchos_cli.serve.store import Deployment, ReplicaRow, ServeStore, new_deployment_id


@dataclass
class ServeOptions:
    """`harchos run serve` options (None: not given)."""

    hubs: str | None = None
    replicas: int | None = None
    router_port: int | None = None
    provider: str | None = None
    at: str | None = None
    speedup: float | None = None
    project_dir: Path | None = None


def prepare(options: ServeOptions) -> Deployment:
    """Check the options, choose the replicas' hubs (greenest first), sync the project there,
    and record the deployment (state `starting`) for a controller to run.

    Raises:
        UsageError: bad options or `[serve]` table, an unknown hub, too few hubs, or a live
            deployment of this project already (exit 2).
        HubError: a hub could not be reached to sync the project (exit 4).
    """
    from harchos_cli.hubs import inventory
    from harchos_cli.jobs.request import default_hub, get_hub, start_clock
    from harchos_cli.plan.serving import place
    from harchos_cli.serve.controller import IntensitySource
    from harchos_cli.serve.settings import load

    project = load_project(options.project_dir, required=True)
    settings = load(project, {"replicas": options.replicas, "router_port": options.router_port})
    if options.speedup is not None and options.speedup <= 0:
        raise UsageError(f"--speedup {options.speedup:g} must be positive")
    store = ServeStore()
    try:
        live = store.live(str(project.root))
        if live:
            raise UsageError(
                f"this project is served already (deployment {live[0].id}, {live[0].state})",
                hint="see it with `harchos serve status`; stop it with `harchos serve stop`",
            )
        names = _hub_names(options.hubs, settings.hubs, project, default_hub(project))
        hubs = [get_hub(name, project) for name in names]
        clock = start_clock(options.at, options.speedup, None)
        if options.provider and options.provider.startswith("replay:") and options.at is None:
            raise UsageError("--provider replay:... needs --at (a time inside the trace)",
                             hint="e.g. --at 2022-03-01T03:00Z")  # fmt: skip
        if hasattr(clock, "anchor"):
            clock.anchor = time.time()
        source = IntensitySource(options.provider, str(project.root), clock)
        intensities = {hub.name: source.of_region(hub.region) for hub in hubs}
        tp = settings.tensor_parallel_size
        capacity = {hub.name: (hub.gpus // tp if hub.gpus else None) for hub in hubs}
        try:
            placement = place(names, intensities, settings.replicas, capacity)
        except ValueError as exc:
            raise UsageError(
                f"cannot place {settings.replicas} replica(s) of {tp} GPU(s): {exc}",
                hint="add hubs with --hubs, lower --replicas, or give hubs more GPUs",
            ) from None
        remote_dirs = {hub.name: _sync(hub, project) for hub in hubs if hub.name in placement}
        deployment = Deployment(
            id=new_deployment_id(), project_dir=str(project.root), name=project.name,
            state="starting",
            settings={
                "serve": settings.model_dump(),
                "hubs": {hub.name: inventory.as_json(hub) for hub in hubs},
                "provider": options.provider, "clock": clock.as_json(), "placement": placement,
                "remote_dirs": remote_dirs,
                # Whether the replicas are protected by a key (never the key itself).
                "api_key": bool(os.environ.get(settings.api_key_env)),
            },
        )  # fmt: skip
        store.create(deployment)
        shown = ", ".join(
            f"{name} ({'no data' if value is None else f'{value:.0f} g'})"
            for name, value in intensities.items()
        )
        store.decide(deployment.id, "place", None,
                     f"replicas on {', '.join(placement)}, the greenest of: {shown}",
                     placement=placement, intensities=intensities)  # fmt: skip
        return deployment
    finally:
        store.close()


def _hub_names(
    flag: str | None, table: list[str] | None, project: Project, fallback: str
) -> list[str]:
    if flag is not None:
        names = [name.strip() for name in flag.split(",") if name.strip()]
        if not names:
            raise UsageError("--hubs names no hub", hint="e.g. --hubs gpu1,gpu2")
    else:
        names = list(table or project.spec.carbon.hubs or [fallback])
    if len(set(names)) != len(names):
        raise UsageError(f"--hubs {','.join(names)} names a hub twice", hint="name each once")
    return names


def _sync(hub: Hub, project: Project) -> str:
    """The project on `hub` (files a replica's flags may name: chat templates, LoRA adapters)."""
    if hub.transport == LOCAL:
        return str(project.root)
    from harchos_cli.hubs import remote_project_dir, transport_for

    return transport_for(hub).sync_up(project.root, remote_project_dir(hub, project.root),
                                      protect=["/outputs/", "/checkpoints/"])  # fmt: skip


def find_deployment(store: ServeStore, deployment_id: str | None) -> Deployment:
    """The deployment a `harchos serve` command means: the id given, else this project's newest
    (its live one, if any: a project has at most one, and no newer), else the only live one."""
    from harchos_cli.jobs.spec import find

    if deployment_id:
        return store.get(deployment_id)
    project_file = find()
    newest = store.newest(str(project_file.parent)) if project_file is not None else None
    if newest is not None:
        return newest
    live = store.live()
    if len(live) == 1:
        return live[0]
    raise UsageError(
        "no deployment here" if not live else f"{len(live)} deployments are live",
        hint="start one with `harchos run serve` in a serving project, or name one: "
        "harchos serve status --deployment ID",
    )


def status(store: ServeStore, deployment: Deployment) -> dict[str, Any]:
    """`harchos serve status --json` (docs/serving.md)."""
    replicas = [row.as_json() for row in store.replicas(deployment.id) if row.state != "stopped"]
    return {
        "deployment_id": deployment.id, "name": deployment.name, "state": deployment.state,
        "project_dir": deployment.project_dir, "router_url": deployment.router_url,
        "heartbeat": deployment.heartbeat, "message": deployment.message,
        "replicas": replicas,
        "decisions": [d.as_json() for d in store.decisions(deployment.id)],
    }  # fmt: skip


def request_stop(store: ServeStore, deployment: Deployment, *, wait_s: float) -> Deployment:
    """Ask the deployment's controller to drain and stop everything (reviving it if it died);
    wait up to `wait_s` for it to be stopped."""
    from harchos_cli.serve.controller import revive

    if not deployment.live:
        return deployment
    store.update(deployment.id, stop_requested=1)
    store.decide(deployment.id, "stop-requested", None, "asked with harchos serve stop")
    revive(store)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        current = store.get(deployment.id)
        if not current.live:
            return current
        time.sleep(0.2)
    return store.get(deployment.id)


def replica_log(
    store: ServeStore, deployment: Deployment, replica_id: str
) -> tuple[ReplicaRow, bytes]:
    """The replica's log (its current launch) as its hub has it."""
    from harchos_cli.hubs import inventory, jobs_for

    rows = {row.id: row for row in store.replicas(deployment.id)}
    row = rows.get(replica_id)
    if row is None:
        raise UsageError(
            f"deployment {deployment.id} has no replica {replica_id!r}",
            hint=f"its replicas: {', '.join(rows) or 'none'}",
        )
    jobs = jobs_for(inventory.from_json(row.hub_json))
    chunks: list[bytes] = []
    offset = 0
    while True:
        data = jobs.read_log(row.hub_job_id, offset)
        if not data:
            return row, b"".join(chunks)
        chunks.append(data)
        offset += len(data)


def wait_for_launch(store: ServeStore, deployment_id: str, timeout_s: float) -> Deployment:
    """The deployment once its router listens and its replicas are launched (state `running`),
    or it stopped or failed, within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = store.get(deployment_id)
        if current.state != "starting":
            return current
        if time.monotonic() > deadline:
            return current
        time.sleep(0.1)
