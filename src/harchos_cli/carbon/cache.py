"""Response cache for live providers, keyed by provider, zone, endpoint and half-hour slot.

Grid data changes every 5–60 minutes and free plans are rate-limited, so one answer per half hour
is reused. The cache lives in the state database; a cache failure never fails a command.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from harchos_cli.errors import UsageError
from harchos_cli.timeparse import as_utc, iso


def half_hour_slot(moment: datetime) -> str:
    moment = as_utc(moment)
    return iso(moment.replace(minute=30 if moment.minute >= 30 else 0, second=0, microsecond=0))


class ResponseCache:
    """Stores raw response bodies; with `enabled=False` every lookup misses."""

    def __init__(self, path: Path | None = None, *, enabled: bool = True) -> None:
        self._path = path
        self._enabled = enabled
        self._db: sqlite3.Connection | None = None

    @property
    def path(self) -> Path | None:
        """The state database the cache lives in (None: the user's default one)."""
        return self._path

    def _connection(self) -> sqlite3.Connection | None:
        if not self._enabled:
            return None
        if self._db is None:
            from harchos_cli import state

            try:
                self._db = state.connect(self._path)
            except (sqlite3.Error, OSError, UsageError):
                self._enabled = False
                return None
        return self._db

    def get(self, provider: str, zone: str, endpoint: str, now: datetime) -> bytes | None:
        db = self._connection()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT body FROM response_cache"
                " WHERE provider=? AND zone=? AND endpoint=? AND slot=?",
                (provider, zone, endpoint, half_hour_slot(now)),
            ).fetchone()
        except sqlite3.Error:
            return None
        return bytes(row[0]) if row else None

    def put(self, provider: str, zone: str, endpoint: str, now: datetime, body: bytes) -> None:
        db = self._connection()
        if db is None:
            return
        try:
            db.execute(
                "INSERT OR REPLACE INTO response_cache"
                " (provider, zone, endpoint, slot, fetched_at, body) VALUES (?, ?, ?, ?, ?, ?)",
                (provider, zone, endpoint, half_hour_slot(now), iso(now), body),
            )
            # Old slots are worthless; keep the table small.
            db.execute(
                "DELETE FROM response_cache WHERE provider=? AND zone=? AND endpoint=? AND slot<>?",
                (provider, zone, endpoint, half_hour_slot(now)),
            )
        except sqlite3.Error:
            return

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
