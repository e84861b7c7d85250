"""The one SQLite state database (WAL), with a small ordered list of schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from harchos_cli import paths
from harchos_cli.errors import UsageError

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next schema migration. Never reorder or edit a released one."""
    MIGRATIONS.append(fn)
    return fn


@migration
def _m001_response_cache(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE response_cache (
            provider TEXT NOT NULL,
            zone TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            slot TEXT NOT NULL,
            fetched_at TEXT NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (provider, zone, endpoint, slot)
        )
        """
    )


@migration
def _m002_hubs(db: sqlite3.Connection) -> None:
    """The hub inventory (owned by harchos_cli.hubs); one column per `Hub` field."""
    db.execute(
        """
        CREATE TABLE hubs (
            name TEXT PRIMARY KEY,
            transport TEXT NOT NULL,
            host TEXT,
            user TEXT,
            port INTEGER,
            identity TEXT,
            region TEXT,
            gpus INTEGER,
            gpu_type TEXT,
            price_per_gpu_hour REAL,
            pue REAL NOT NULL,
            workdir TEXT NOT NULL,
            python TEXT NOT NULL,
            host_key_policy TEXT NOT NULL
        )
        """
    )


@migration
def _m003_jobs(db: sqlite3.Connection) -> None:
    """The job store (owned by harchos_cli.jobs)."""
    db.execute(
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            project_dir TEXT NOT NULL,
            hub TEXT,
            state TEXT NOT NULL,
            detached INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            planned_start TEXT,
            started_at TEXT,
            finished_at TEXT,
            exit_code INTEGER,
            remote_dir TEXT,
            launched INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            supervisor_pid INTEGER,
            heartbeat TEXT,
            log_offset INTEGER NOT NULL DEFAULT 0,
            local_log_size INTEGER NOT NULL DEFAULT 0,
            message TEXT,
            failure TEXT,
            request TEXT NOT NULL,
            plan TEXT
        )
        """
    )
    db.execute("CREATE INDEX jobs_state ON jobs (state)")


@migration
def _m004_job_attempts_and_decisions(db: sqlite3.Connection) -> None:
    """Pause, move and rescale. A job is launched once per attempt (`<id>` on the hub for the
    first, `<id>-a<n>` after), carries the user's pending wish (`intent`), belongs to a training
    run whose checkpoints it resumes (`run_id`), holds GPUs of its hub while it syncs or runs
    (`gpu_ids`), and records every decision (`job_decisions`)."""
    db.execute("ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE jobs ADD COLUMN intent TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN run_id TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN gpu_ids TEXT")
    db.execute(
        """
        CREATE TABLE job_decisions (
            job_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            hub TEXT,
            reason TEXT NOT NULL,
            details TEXT,
            PRIMARY KEY (job_id, seq)
        )
        """
    )
    db.execute("CREATE INDEX jobs_run ON jobs (project_dir, kind, run_id)")


@migration
def _m005_serving(db: sqlite3.Connection) -> None:
    """Serving (owned by harchos_cli.serve): one row per `harchos run serve` deployment, one per
    replica it runs (a replica keeps its row across restarts and moves: `generation` counts its
    launches); decisions go to `job_decisions` under the deployment's id."""
    db.execute(
        """
        CREATE TABLE serve_deployments (
            id TEXT PRIMARY KEY,
            project_dir TEXT NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            settings TEXT NOT NULL,
            router_url TEXT,
            controller_pid INTEGER,
            heartbeat TEXT,
            stop_requested INTEGER NOT NULL DEFAULT 0,
            message TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE serve_replicas (
            deployment_id TEXT NOT NULL,
            id TEXT NOT NULL,
            hub TEXT NOT NULL,
            slot INTEGER NOT NULL,
            port INTEGER NOT NULL,
            gpu_ids TEXT,
            generation INTEGER NOT NULL DEFAULT 1,
            state TEXT NOT NULL,
            url TEXT NOT NULL,
            region TEXT,
            hub_json TEXT NOT NULL,
            stats TEXT,
            restarts INTEGER NOT NULL DEFAULT 0,
            launched_at TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (deployment_id, id)
        )
        """
    )
    db.execute("CREATE INDEX serve_deployments_state ON serve_deployments (state)")


@migration
def _m006_metering(db: sqlite3.Connection) -> None:
    """Energy accounting (owned by harchos_cli.meter): the meter's samples as each hub recorded
    them (`sample` is the hub's JSON line; `at` its time in seconds since the epoch), how much of
    each attempt's meter file was read, the measured power of workloads for the next plan, and
    the hubs' energy prices."""
    db.execute(
        """
        CREATE TABLE energy_samples (
            job_id TEXT NOT NULL,
            hub_job_id TEXT NOT NULL,
            hub TEXT NOT NULL,
            at REAL NOT NULL,
            sample TEXT NOT NULL,
            PRIMARY KEY (job_id, hub_job_id, at)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE energy_offsets (
            job_id TEXT NOT NULL,
            hub_job_id TEXT NOT NULL,
            offset INTEGER NOT NULL,
            PRIMARY KEY (job_id, hub_job_id)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE workload_power (
            project_dir TEXT NOT NULL,
            kind TEXT NOT NULL,
            watts REAL NOT NULL,
            gpus INTEGER NOT NULL,
            job_id TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (project_dir, kind)
        )
        """
    )
    db.execute("ALTER TABLE hubs ADD COLUMN electricity_price_per_kwh REAL")
    db.execute("ALTER TABLE hubs ADD COLUMN currency TEXT")
    db.execute("ALTER TABLE hubs ADD COLUMN cpu_tdp_w REAL")


@migration
def _m007_slurm_hubs(db: sqlite3.Connection) -> None:
    """Slurm clusters as hubs: where their jobs are submitted."""
    for column in ("partition", "account", "qos"):
        db.execute(f"ALTER TABLE hubs ADD COLUMN {column} TEXT")


@migration
def _m008_jobs_listing(db: sqlite3.Connection) -> None:
    """`harchos jobs list` pages through the jobs newest first (`created_at`, then `id`, as
    `JobStore.list` sorts them) along an index, so a page costs the same with 10 or 100,000 jobs
    in the store; the active jobs that `revive` checks come from `jobs_state`."""
    db.execute("CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC)")


@migration
def _m009_hub_slots(db: sqlite3.Connection) -> None:
    """How many jobs a hub runs at once: plans place waiting jobs so that no hour holds more."""
    db.execute("ALTER TABLE hubs ADD COLUMN max_jobs INTEGER")


@migration
def _m010_carbon_history(db: sqlite3.Connection) -> None:
    """The history store (owned by harchos_cli.carbon.history): every hourly actual a live
    provider returned, one row per series (zone, signal, method, provider's sub-area), hour and
    provider, and per provider and series what the last backfill did and which hours
    [since, through) it covered (`carbon_history_backfill`)."""
    db.execute(
        """
        CREATE TABLE carbon_history (
            zone TEXT NOT NULL,
            signal TEXT NOT NULL,
            method TEXT NOT NULL,
            area TEXT NOT NULL,
            start TEXT NOT NULL,
            provider TEXT NOT NULL,
            intensity REAL NOT NULL,
            estimated INTEGER NOT NULL,
            fetched_at TEXT NOT NULL,
            PRIMARY KEY (zone, signal, method, area, start, provider)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE carbon_history_backfill (
            provider TEXT NOT NULL,
            zone TEXT NOT NULL,
            signal TEXT NOT NULL,
            method TEXT NOT NULL,
            area TEXT NOT NULL,
            status TEXT NOT NULL,
            attempted_at TEXT NOT NULL,
            since TEXT,
            through TEXT,
            note TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (provider, zone, signal, method, area)
        )
        """
    )


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the state database.

    The database (and SQLite's -wal and -shm files, which take its mode) is 0600 in a 0700
    folder: it holds the jobs' environments.

    Raises:
        UsageError: the database cannot be opened, is damaged, or was written by a newer
            harchos (exit 2, with the "move harchos.db aside" hint).
    """
    target = path or paths.state_db()
    hint = (
        "check that HARCHOS_HOME (or your user data folder) is writable; move a damaged "
        "harchos.db aside"
    )
    paths.private_dir(target.parent)
    paths.private_file(target)
    try:
        db = sqlite3.connect(target, timeout=30, isolation_level=None)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise UsageError(f"cannot open the state database {target}: {exc}", hint=hint) from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        _migrate(db, target)
    except BaseException as exc:
        db.close()
        if isinstance(exc, OSError | sqlite3.DatabaseError):
            raise UsageError(f"cannot open the state database {target}: {exc}", hint=hint) from None
        raise
    for suffix in ("-wal", "-shm"):
        side = target.with_name(target.name + suffix)
        if side.exists():
            paths.private_file(side)
    return db


def _check_version(version: int, target: Path) -> None:
    if version > len(MIGRATIONS):
        raise UsageError(
            f"the state database {target} has schema version {version}, newer than this "
            f"harchos knows ({len(MIGRATIONS)}): a newer harchos wrote it",
            hint="use the newer harchos, or move harchos.db aside to start afresh "
            "(its jobs are then forgotten)",
        )


def _migrate(db: sqlite3.Connection, target: Path) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    _check_version(version, target)
    if version == len(MIGRATIONS):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        _check_version(version, target)
        for index in range(version, len(MIGRATIONS)):
            MIGRATIONS[index](db)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
