"""Deployments and their replicas in the state database: what `harchos serve status` reads and
what a revived controller takes over."""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

from harchos_cli import state
from harchos_cli.errors import UsageError
from harchos_cli.jobs.store import Decision, JobStore
from harchos_cli.timeparse import iso, utcnow

DeploymentState = Literal["starting", "running", "stopping", "stopped", "failed"]
LIVE: tuple[DeploymentState, ...] = ("starting", "running", "stopping")


@dataclass
class Deployment:
    """One `harchos run serve`: its settings (resolved), router and controller."""

    id: str
    project_dir: str
    name: str
    state: DeploymentState
    settings: dict[str, Any]
    router_url: str | None = None
    controller_pid: int | None = None
    heartbeat: str | None = None
    stop_requested: bool = False
    message: str | None = None
    created_at: str = ""
    updated_at: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass
class ReplicaRow:
    """One replica as last recorded: where it runs and what the router saw of it."""

    deployment_id: str
    id: str  # "<hub>/<slot>"
    hub: str
    slot: int
    port: int
    url: str
    state: str
    hub_json: dict[str, Any]
    region: str | None = None
    gpu_ids: str | None = None
    generation: int = 1
    stats: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    launched_at: str | None = None
    updated_at: str = ""

    @property
    def hub_job_id(self) -> str:
        """The replica's launch on its hub (a new one per restart or move)."""
        return f"{self.deployment_id}-{self.hub}-{self.slot}-g{self.generation}"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "hub": self.hub, "region": self.region, "url": self.url,
            "state": self.state, "port": self.port, "gpu_ids": self.gpu_ids,
            "restarts": self.restarts, "launched_at": self.launched_at,
            "hub_job_id": self.hub_job_id, **self.stats,
        }  # fmt: skip


def new_deployment_id() -> str:
    return f"serve-{utcnow().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class ServeStore:
    """Deployments and replicas; cheap to open, safe across processes (WAL)."""

    def __init__(self, db: sqlite3.Connection | None = None) -> None:
        self.db = db or state.connect()
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # -- deployments -------------------------------------------------------------------------

    def create(self, deployment: Deployment) -> Deployment:
        now = iso(utcnow())
        deployment.created_at = deployment.updated_at = now
        self.db.execute(
            "INSERT INTO serve_deployments (id, project_dir, name, state, settings, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (deployment.id, deployment.project_dir, deployment.name, deployment.state,
             json.dumps(deployment.settings), now, now),
        )  # fmt: skip
        return deployment

    def get(self, deployment_id: str) -> Deployment:
        """The deployment with this id or a unique prefix; `UsageError` (exit 2) otherwise."""
        if not deployment_id.strip():
            raise UsageError("no deployment id given", hint="see them with: harchos serve status")
        rows = self.db.execute(
            "SELECT * FROM serve_deployments WHERE id = ? OR id LIKE ? ESCAPE '\\' "
            "ORDER BY id = ? DESC",
            (deployment_id, _like_prefix(deployment_id), deployment_id),
        ).fetchall()
        if rows and rows[0]["id"] == deployment_id:
            return _deployment(rows[0])
        if len(rows) != 1:
            what = "no deployment" if not rows else f"{len(rows)} deployments"
            raise UsageError(f"{what} matches {deployment_id!r}",
                             hint="see them with: harchos serve status")  # fmt: skip
        return _deployment(rows[0])

    def live(self, project_dir: str | None = None) -> list[Deployment]:
        """Live deployments (of one project), newest first."""
        marks = ", ".join("?" for _ in LIVE)
        query = f"SELECT * FROM serve_deployments WHERE state IN ({marks})"
        args: list[Any] = list(LIVE)
        if project_dir is not None:
            query += " AND project_dir = ?"
            args.append(project_dir)
        return [_deployment(r) for r in self.db.execute(query + " ORDER BY id DESC", args)]

    def newest(self, project_dir: str | None = None) -> Deployment | None:
        query, args = "SELECT * FROM serve_deployments", []
        if project_dir is not None:
            query, args = query + " WHERE project_dir = ?", [project_dir]
        row = self.db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _deployment(row) if row else None

    def update(self, deployment_id: str, **values: Any) -> None:
        values["updated_at"] = iso(utcnow())
        if "settings" in values:
            values["settings"] = json.dumps(values["settings"])
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.db.execute(
            f"UPDATE serve_deployments SET {assignments} WHERE id = ?",
            [*values.values(), deployment_id],
        )

    def advance(
        self, deployment_id: str, expected: tuple[str, ...], new: str, **values: Any
    ) -> bool:
        """Move the deployment to `new` only from one of `expected`; True when it moved."""
        values = {**values, "state": new, "updated_at": iso(utcnow())}
        assignments = ", ".join(f"{name} = ?" for name in values)
        cursor = self.db.execute(
            f"UPDATE serve_deployments SET {assignments} WHERE id = ? "
            f"AND state IN ({', '.join('?' for _ in expected)})",
            [*values.values(), deployment_id, *expected],
        )
        return cursor.rowcount == 1

    # -- replicas ----------------------------------------------------------------------------

    def save_replica(self, replica: ReplicaRow) -> None:
        replica.updated_at = iso(utcnow())
        self.db.execute(
            "INSERT INTO serve_replicas (deployment_id, id, hub, slot, port, gpu_ids, generation, "
            "state, url, region, hub_json, stats, restarts, launched_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (deployment_id, id) DO UPDATE SET hub = excluded.hub, "
            "slot = excluded.slot, port = excluded.port, gpu_ids = excluded.gpu_ids, "
            "generation = excluded.generation, state = excluded.state, url = excluded.url, "
            "region = excluded.region, hub_json = excluded.hub_json, stats = excluded.stats, "
            "restarts = excluded.restarts, launched_at = excluded.launched_at, "
            "updated_at = excluded.updated_at",
            (replica.deployment_id, replica.id, replica.hub, replica.slot, replica.port,
             replica.gpu_ids, replica.generation, replica.state, replica.url, replica.region,
             json.dumps(replica.hub_json), json.dumps(replica.stats), replica.restarts,
             replica.launched_at, replica.updated_at),
        )  # fmt: skip

    def replicas(self, deployment_id: str) -> list[ReplicaRow]:
        rows = self.db.execute(
            "SELECT * FROM serve_replicas WHERE deployment_id = ? ORDER BY hub, slot",
            (deployment_id,),
        ).fetchall()
        return [
            ReplicaRow(
                deployment_id=r["deployment_id"],
                id=r["id"],
                hub=r["hub"],
                slot=r["slot"],
                port=r["port"],
                url=r["url"],
                state=r["state"],
                hub_json=json.loads(r["hub_json"]),
                region=r["region"],
                gpu_ids=r["gpu_ids"],
                generation=r["generation"],
                stats=json.loads(r["stats"] or "{}"),
                restarts=r["restarts"],
                launched_at=r["launched_at"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    def forget_replica(self, deployment_id: str, replica_id: str) -> None:
        self.db.execute(
            "DELETE FROM serve_replicas WHERE deployment_id = ? AND id = ?",
            (deployment_id, replica_id),
        )

    # -- decisions ---------------------------------------------------------------------------

    def decide(
        self, deployment_id: str, action: str, hub: str | None, reason: str, **details: Any
    ) -> Decision:
        return JobStore(self.db).decide(deployment_id, action, hub, reason, **details)

    def decisions(self, deployment_id: str) -> tuple[Decision, ...]:
        return JobStore(self.db).decisions(deployment_id)


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        id=row["id"], project_dir=row["project_dir"], name=row["name"], state=row["state"],
        settings=json.loads(row["settings"]), router_url=row["router_url"],
        controller_pid=row["controller_pid"], heartbeat=row["heartbeat"],
        stop_requested=bool(row["stop_requested"]), message=row["message"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip
