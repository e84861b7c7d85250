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


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the state database."""
    target = path or paths.state_db()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(target, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        _migrate(db)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise UsageError(
            f"cannot open the state database {target}: {exc}",
            hint="check that HARCHOS_HOME (or your user data folder) is writable; move a damaged "
            "harchos.db aside",
        ) from None
    return db


def _migrate(db: sqlite3.Connection) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= len(MIGRATIONS):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        for index in range(version, len(MIGRATIONS)):
            MIGRATIONS[index](db)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
