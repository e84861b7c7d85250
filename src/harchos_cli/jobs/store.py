"""The job store: one row per job in the state database, and each job's local folder.

A job moves `waiting → syncing → running → done | failed | cancelled`; a running job may stop
at a checkpoint (`paused`, no process anywhere) and go on with a new attempt (`paused → syncing`,
on the same hub or another). A running job whose hub refuses harchos for good (a changed host
key) is `lost`, its workload perhaps still running there, until it is reattached
(`lost → running`). Every change is one UPDATE, and stage changes are compare-and-set
(`advance`), so two supervisors can never both move a job on. Every decision about a job (defer,
start, pause, resume, migrate, rescale, cancel) is a row of `job_decisions` with its reason.
The folder `$HARCHOS_HOME/supervisor/<id>/` holds the supervisor's lock, its own
diagnostics and a local copy of the job's log (`$HARCHOS_HOME/jobs/` belongs to the local hub's
job directories).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from harchos_cli import paths, state
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import iso, utcnow

JobStateName = Literal[
    "waiting", "syncing", "running", "paused", "lost", "done", "failed", "cancelled"
]
# The entries of a job's request that belong to one attempt: a new attempt starts without them.
ATTEMPT_KEYS = ("launch", "node_logs")
# States a supervisor drives; a paused job holds no process until it is resumed.
ACTIVE: tuple[JobStateName, ...] = ("waiting", "syncing", "running")
FINISHED: tuple[JobStateName, ...] = ("done", "failed", "cancelled")
# Launched, then its hub refused harchos (a changed host key, a refused login): its workload may
# still run there, unwatched, until `harchos jobs reattach` (or a cancel) takes it up again.
LOST: JobStateName = "lost"
STATES: tuple[JobStateName, ...] = (*ACTIVE, "paused", LOST, *FINISHED)
SLOT_WAIT = "waiting for a slot: "
"""How the message of a job held back by its hub's `max_jobs` begins."""
# The jobs that hold one of a hub's `max_jobs` slots (the hub is the one parameter).
_STARTED_ON = "hub = ? AND state IN ('syncing', 'running')"


@dataclass
class Job:
    """One row of the `jobs` table. `request` is what the user asked for; `plan` the decision."""

    id: str
    kind: str
    name: str
    project_dir: str
    state: JobStateName
    request: dict[str, Any]
    hub: str | None = None
    detached: bool = False
    created_at: str = ""
    updated_at: str = ""
    planned_start: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    remote_dir: str | None = None
    launched: bool = False
    cancel_requested: bool = False
    supervisor_pid: int | None = None
    heartbeat: str | None = None
    log_offset: int = 0  # bytes of the hub's log copied here ...
    local_log_size: int = 0  # ... and the local log's size then (written in the same UPDATE)
    message: str | None = None
    failure: str | None = None  # "hub": a hub or remote step failed (exit 4)
    plan: dict[str, Any] | None = field(default=None)
    attempt: int = 1  # launches so far; the hub knows attempt n as `hub_job_id`
    intent: str | None = None  # what the user asked of the running job: pause, migrate:HUB, scale:N
    run_id: str | None = None  # the training run whose checkpoints this job resumes
    # "h1=0,1;h2=0": the GPUs it holds on each hub while syncing or running (see `held_gpus`)
    gpu_ids: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def cancel_pending(self) -> bool:
        """Cancel asked, not yet confirmed by the hub (it could not be reached, or the job is
        lost): harchos keeps trying to deliver it."""
        return _cancel_pending(self.state, self.cancel_requested)

    @property
    def hub_job_id(self) -> str:
        """The id of this attempt's job folder on its hub (launch is idempotent per attempt)."""
        return self.id if self.attempt <= 1 else f"{self.id}-a{self.attempt}"

    def as_json(self) -> dict[str, Any]:
        """The documented `harchos jobs show --json` object (docs/run.md)."""
        plan = self.plan or {}
        return {
            "job_id": self.id,
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "hub": self.hub,
            "project_dir": self.project_dir,
            "argv": self.request.get("argv"),
            "detached": self.detached,
            "created_at": self.created_at,
            "planned_start": self.planned_start,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            # The plan's region; a job started at once has none, but its hub's is its own.
            "region": plan.get("region")
            or ((self.request.get("launch") or {}).get("hub") or {}).get("region"),
            "zone": plan.get("zone"),
            "provider": plan.get("provider"),
            "expected_intensity": plan.get("expected_intensity"),
            "now_intensity": plan.get("now_intensity"),
            "saving_vs_now": plan.get("saving_vs_now"),
            "deadline": plan.get("deadline"),
            "remote_dir": self.remote_dir,
            "supervisor_pid": self.supervisor_pid,
            "heartbeat": self.heartbeat,
            "message": self.message,
            "failure": self.failure,
            "attempt": self.attempt,
            "run_id": self.run_id or self.id,
            "intent": self.intent,
            "cancel_pending": self.cancel_pending,
            "gpu_ids": {hub: sorted(ids) for hub, ids in held_gpus(self.hub, self.gpu_ids).items()}
            or None,
            # Multi-node: every machine's hub in rank order (null: one hub, `hub`).
            "nodes": self.request.get("nodes"),
        }


@dataclass(frozen=True)
class Booking:
    """A job's planned window, for planning the others around it (`JobStore.bookings`)."""

    id: str
    hub: str | None
    planned_start: str
    planned_end: str | None
    array_id: str | None
    started: bool = False  # syncing or running: it holds its slot until it ends


def _cancel_pending(state: str, cancel_requested: bool) -> bool:
    return bool(cancel_requested) and state in (*ACTIVE, LOST)


@dataclass(frozen=True)
class JobSummary:
    """One line of `harchos jobs list`: the columns it shows, read without decoding the job's
    request or plan (`JobStore.summaries`)."""

    id: str
    name: str
    kind: str
    state: JobStateName
    hub: str | None
    planned_start: str | None
    exit_code: int | None
    cancel_pending: bool


@dataclass(frozen=True)
class Decision:
    """One decision about a job: what, where, why, and the numbers behind it."""

    at: str
    action: str
    hub: str | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "hub": self.hub, "reason": self.reason,
                **self.details}  # fmt: skip


_JSON_COLUMNS = {"request", "plan"}
_BOOL_COLUMNS = {"detached", "launched", "cancel_requested"}
_COLUMNS = [f.name for f in fields(Job)]


def job_dir(job_id: str) -> Path:
    """The job's local folder: supervisor lock and diagnostics, local log copy."""
    return paths.supervisor_dir() / job_id


def ensure_job_dir(job_id: str) -> Path:
    """Make the job's local folder (0700, as its parents); `UsageError` (exit 2) when it cannot
    be made, e.g. a file stands where `$HARCHOS_HOME/supervisor` should be a folder."""
    return paths.private_dir(job_dir(job_id))


def log_path(job_id: str) -> Path:
    return job_dir(job_id) / "log"


def new_id(now: datetime | None = None) -> str:
    """A short, sortable, path- and shell-safe id: `YYYYMMDD-HHMMSS-xxxx`."""
    stamp = (now or utcnow()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS:
        return None if value is None else json.dumps(value)
    if name in _BOOL_COLUMNS:
        return int(bool(value))
    return value


def _damaged(job_id: str, column: str) -> UsageError:
    return UsageError(
        f"job {job_id} in the state database {paths.state_db()} is damaged: its {column} is not "
        "valid JSON",
        hint="move harchos.db aside to start afresh (its jobs are then forgotten)",
    )


def _loads(job_id: str, column: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _damaged(job_id, column) from None


# `summaries` reads no JSON, yet a damaged row must still be refused as `get` and `list` refuse
# it: SQLite vouches for the rows it can (JSON1, built in since 3.38), and hands the others'
# text to Python's parser, the judge (it reads what `json.dumps` wrote, NaN included).
_UNCHECKED_SQL = (
    "CASE WHEN NOT json_valid(request) THEN request WHEN json_type(request) = 'object' THEN NULL "
    "ELSE request END AS unchecked_request, "
    "CASE WHEN plan IS NULL OR json_valid(plan) THEN NULL ELSE plan END AS unchecked_plan"
)
_UNCHECKED_PLAIN = "request AS unchecked_request, plan AS unchecked_plan"


def _sql_json(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, often before)."""
    try:
        db.execute("SELECT json_valid('{}'), json_type('{}')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def _check_unchecked(row: sqlite3.Row) -> None:
    """Refuse the row (`UsageError`, the move-aside hint) when its request or plan, left to
    Python by `_UNCHECKED_SQL`, is not valid JSON (or the request not an object)."""
    if row["unchecked_request"] is not None:
        request = _loads(row["id"], "request", row["unchecked_request"])
        if not isinstance(request, dict):
            raise _damaged(row["id"], "request")
    if row["unchecked_plan"] is not None:
        _loads(row["id"], "plan", row["unchecked_plan"])


def _decode(row: sqlite3.Row) -> Job:
    values: dict[str, Any] = {}
    for name in _COLUMNS:
        value = row[name]
        if name in _JSON_COLUMNS and value is not None:
            value = _loads(row["id"], name, value)
            if name == "request" and not isinstance(value, dict):
                raise _damaged(row["id"], name)
        elif name in _BOOL_COLUMNS:
            value = bool(value)
        values[name] = value
    return Job(**values)


class JobStore:
    """Jobs in the SQLite state database. Cheap to open; safe across processes (WAL)."""

    def __init__(self, db: sqlite3.Connection | None = None) -> None:
        self.db = db or state.connect()
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def create(self, job: Job) -> Job:
        now = iso(utcnow())
        job.created_at = job.created_at or now
        job.updated_at = now
        names = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        # The folder first: a job that cannot have one must not exist, or a later `harchos`
        # would revive and run a job whose `harchos run` reported failure.
        ensure_job_dir(job.id)
        self.db.execute(
            f"INSERT INTO jobs ({names}) VALUES ({marks})",
            [_encode(name, getattr(job, name)) for name in _COLUMNS],
        )
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id, or a unique id prefix; `UsageError` (exit 2) otherwise."""
        if not job_id.strip():
            # An empty prefix would match every job (an unset $JOB_ID must not pick one).
            raise UsageError("no job id given", hint="list jobs with: harchos jobs list")
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY id",
                (job_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
            if len(rows) != 1:
                raise UsageError(
                    f"no job {job_id!r}" if not rows else f"job id {job_id!r} is ambiguous",
                    hint="list jobs with: harchos jobs list",
                )
            row = rows[0]
        return _decode(row)

    # (Before `list`, which would shadow the builtin in the annotations below.)
    def summaries(self, *, limit: int | None = None, before: str | None = None) -> list[JobSummary]:
        """What `harchos jobs list` shows, in `list`'s order and paging, without decoding any
        request or plan; a damaged row is still refused as `list` refuses it."""
        checks = _UNCHECKED_SQL if _sql_json(self.db) else _UNCHECKED_PLAIN
        columns = (
            f"id, name, kind, state, hub, planned_start, exit_code, cancel_requested, {checks}"
        )
        summaries = []
        for row in self._listing(columns, None, limit, before):
            _check_unchecked(row)
            summaries.append(
                JobSummary(row["id"], row["name"], row["kind"], row["state"], row["hub"],
                           row["planned_start"], row["exit_code"],
                           _cancel_pending(row["state"], row["cancel_requested"]))
            )  # fmt: skip
        return summaries

    def array_members(self, array_id: str) -> list[Job]:
        """The jobs of array `array_id` (`harchos run --array`), by index; `UsageError` (exit 2)
        when there is no such array."""
        members = [job for job in self.list() if (job.request.get("array") or {}).get("id")
                   == array_id]  # fmt: skip
        if not members:
            raise UsageError(f"no array {array_id!r}",
                             hint="harchos run --array prints its id (array-...)")  # fmt: skip
        return sorted(members, key=lambda job: int(job.request["array"]["index"]))

    def bookings(self) -> list[Booking]:
        """The planned windows of the waiting, syncing and running jobs: what hubs' slots (and
        arrays' `--max-parallel`) hold. Read in SQL where SQLite has its JSON functions: a plan
        made while a thousand jobs wait must not decode each of them."""
        if not _sql_json(self.db):
            return [
                Booking(job.id, job.hub, job.planned_start, (job.plan or {}).get("planned_end"),
                        (job.request.get("array") or {}).get("id"), job.state != "waiting")
                for job in self.list(states=ACTIVE) if job.planned_start
            ]  # fmt: skip
        rows = self.db.execute(
            "SELECT id, hub, state, planned_start, json_extract(plan, '$.planned_end') AS "
            "planned_end, json_extract(request, '$.array.id') AS array_id FROM jobs "
            "WHERE state IN ('waiting', 'syncing', 'running') AND planned_start IS NOT NULL"
        ).fetchall()
        return [Booking(r["id"], r["hub"], r["planned_start"], r["planned_end"], r["array_id"],
                        r["state"] != "waiting")
                for r in rows]  # fmt: skip

    def started_on(self, hub: str) -> int:
        """How many jobs are starting or running on `hub` (what its slots hold now)."""
        row = self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE {_STARTED_ON}", (hub,)).fetchone()
        return int(row[0])

    def admit(
        self, job_id: str, hub: str | None, slots: int | None, /, *,
        from_states: Sequence[JobStateName] = ("waiting",), bound: str | None = None,
        **values: Any,
    ) -> bool:  # fmt: skip
        """Move the job from one of `from_states` (a start: `waiting`; a resume: `paused`) to
        `syncing` if it is still bound for hub `bound` (default `hub`) and `hub` runs fewer than
        `slots` jobs (`started_on`; None: no limit); True when it moved. The count and the move
        are one UPDATE, which SQLite runs holding the write lock from before it counts: two
        processes that both saw a hub's last slot free never both take it.

        `bound` differs from `hub` for a move (`values` may set the job's `hub` itself, to move
        it in the same step). A job started on `hub` already counts itself there: it needs no
        admission."""
        if slots is None:
            return self.advance(job_id, from_states, "syncing", **values)
        values["state"] = "syncing"
        values["updated_at"] = iso(utcnow())
        assignments = ", ".join(f"{name} = ?" for name in values)
        cursor = self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? "
            f"AND state IN ({', '.join('?' for _ in from_states)}) AND hub = ? "
            f"AND (SELECT COUNT(*) FROM jobs WHERE {_STARTED_ON}) < ?",
            [
                *(_encode(name, value) for name, value in values.items()), job_id, *from_states,
                bound or hub, hub, slots,
            ],
        )  # fmt: skip
        return cursor.rowcount == 1

    def held_ids(self) -> list[str]:
        """The scheduler's jobs: detached ones waiting for their window, and those parked in a
        Slurm queue (one search of `jobs_state`; only running jobs' requests are read)."""
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE (state = 'waiting' AND detached = 1) OR (state = 'running' "
            "AND json_extract(request, '$.parked') IS NOT NULL)"
        )
        return [row["id"] for row in rows.fetchall()]

    def parked_ids(self) -> list[str]:
        """The running jobs left to the scheduler while Slurm queues them (`supervisor.PARKED`)."""
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE state = 'running' "
            "AND json_extract(request, '$.parked') IS NOT NULL"
        )
        return [row["id"] for row in rows.fetchall()]

    def ids(self, *, states: Iterable[str]) -> list[str]:
        """The ids of the jobs in these states, newest first: one search of `jobs_state`,
        nothing decoded (what `revive` checks)."""
        return [row["id"] for row in self._listing("id", states, None, None)]

    def _listing(
        self, columns: str, states: Iterable[str] | None, limit: int | None, before: str | None
    ) -> list[sqlite3.Row]:
        """SELECT `columns` newest first. Sorted and paged along `jobs_created` (created_at
        DESC, id DESC): a page reads only its own rows, and `before` is a key, not an offset,
        so a page neither costs more deeper down nor shifts when new jobs arrive."""
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = list(states)
            where.append(f"state IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(self._key(before))
        query = f"SELECT {columns} FROM jobs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        return self.db.execute(query, params).fetchall()

    def _key(self, job_id: str) -> tuple[str, str]:
        """The job's place in the listing order; a unique id prefix will do."""
        row = self.db.execute("SELECT created_at, id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            job = self.get(job_id)  # a unique prefix, or UsageError (exit 2)
            return job.created_at, job.id
        return row["created_at"], row["id"]

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> list[Job]:
        """Newest first (`created_at`, then `id`); with `before` (a job id or unique prefix),
        only the jobs after it in that order: the next page. `UsageError` (exit 2) when
        `before` names no job."""
        return [_decode(row) for row in self._listing("*", states, limit, before)]

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of one job (and `updated_at`)."""
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job column(s): {sorted(unknown)}")
        values["updated_at"] = iso(utcnow())
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",
            [*(_encode(name, value) for name, value in values.items()), job_id],
        )

    def decide(
        self, job_id: str, action: str, hub: str | None, reason: str, **details: Any
    ) -> Decision:
        """Record a decision about the job (appended; never rewritten)."""
        decision = Decision(iso(utcnow()), action, hub, reason, details)
        self.db.execute(
            "INSERT INTO job_decisions (job_id, seq, at, action, hub, reason, details) "
            "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ? FROM job_decisions "
            "WHERE job_id = ?",
            (job_id, decision.at, action, hub, reason, json.dumps(details), job_id),
        )
        return decision

    def decisions(self, job_id: str) -> tuple[Decision, ...]:
        """The job's decisions, oldest first."""
        rows = self.db.execute(
            "SELECT at, action, hub, reason, details FROM job_decisions WHERE job_id = ? "
            "ORDER BY seq",
            (job_id,),
        ).fetchall()
        return tuple(
            Decision(row["at"], row["action"], row["hub"], row["reason"],
                     _loads(job_id, "decision", row["details"]) if row["details"] else {})
            for row in rows
        )  # fmt: skip

    def latest_run(self, project_dir: str, kind: str) -> Job | None:
        """The newest job of this project and kind: its run is the one a new job resumes."""
        row = self.db.execute(
            "SELECT * FROM jobs WHERE project_dir = ? AND kind = ? "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            (project_dir, kind),
        ).fetchone()
        return None if row is None else _decode(row)

    def claim_gpus(
        self, job_id: str, wants: Mapping[str, tuple[int, int]]
    ) -> dict[str, tuple[int, ...]] | None:
        """Give the job, on each hub of `wants` (hub: (its GPUs, how many the job needs)), GPUs
        that no other syncing or running job holds there, or None when any hub has too few
        free: all or nothing, in one transaction, so two supervisors never get the same GPU and
        two multi-node jobs never each hold half of what they need. A job that stops holding
        (paused, finished, moved) frees its GPUs by its state alone."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = self.db.execute(
                "SELECT hub, gpu_ids FROM jobs WHERE id != ? AND gpu_ids IS NOT NULL "
                "AND state IN ('syncing', 'running')",
                (job_id,),
            ).fetchall()
            taken: dict[str, set[int]] = {}
            for row in rows:
                for hub, ids in held_gpus(row["hub"], row["gpu_ids"]).items():
                    taken.setdefault(hub, set()).update(ids)
            chosen: dict[str, tuple[int, ...]] = {}
            for hub, (total, count) in wants.items():
                free = [i for i in range(total) if i not in taken.get(hub, set())]
                if len(free) < count:
                    self.db.execute("COMMIT")
                    return None
                chosen[hub] = tuple(free[:count])
            self.db.execute(
                "UPDATE jobs SET gpu_ids = ? WHERE id = ?",
                (";".join(f"{hub}={','.join(map(str, ids))}" for hub, ids in chosen.items()),
                 job_id),
            )  # fmt: skip
            self.db.execute("COMMIT")
            return chosen
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def forget(self, job_id: str) -> bool:
        """Delete a finished job's rows (the job, its decisions, its energy samples and their
        offsets) in one transaction; False when the job is not finished (or not here)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            gone = self.db.execute(
                f"DELETE FROM jobs WHERE id = ? AND state IN ({', '.join('?' for _ in FINISHED)})",
                (job_id, *FINISHED),
            ).rowcount == 1  # fmt: skip
            if gone:
                for table in ("job_decisions", "energy_samples", "energy_offsets"):
                    self.db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            self.db.execute("COMMIT")
            return gone
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def advance(
        self, job_id: str, expected: Sequence[str], new: JobStateName, **values: Any
    ) -> bool:
        """Move the job to `new` only if it is in one of `expected`; True when it moved."""
        values["state"] = new
        values["updated_at"] = iso(utcnow())
        assignments = ", ".join(f"{name} = ?" for name in values)
        cursor = self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? "
            f"AND state IN ({', '.join('?' for _ in expected)})",
            [*(_encode(name, value) for name, value in values.items()), job_id, *expected],
        )
        return cursor.rowcount == 1


def held_gpus(hub: str | None, gpu_ids: str | None) -> dict[str, set[int]]:
    """The GPUs a job row holds, per hub: `h1=0,1;h2=0`, or (as first stored) `0,1` on its own
    hub."""
    held: dict[str, set[int]] = {}
    for part in (gpu_ids or "").split(";"):
        if not part.strip():
            continue
        name, sep, ids = part.rpartition("=")
        where = name if sep else hub
        if where is None:
            continue
        held.setdefault(where, set()).update(int(i) for i in ids.split(",") if i.strip())
    return held
