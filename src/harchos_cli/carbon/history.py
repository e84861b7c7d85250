"""The history store: every hourly actual a live provider returned, kept for the embedded model.

Live providers give the last 24 hours (ENTSO-E a week) on each call; the embedded model forecasts
better from a week. So every actual harchos fetches is kept in the state database, per series
(zone, signal, method, and the part of the zone a provider's values describe), hour and provider,
with whether the provider estimated it and when it was fetched. The forecast service conditions
the model on what the store holds for the last `HISTORY_HOURS` together with what it just fetched,
and backfills a week where a provider offers past ranges (see `ForecastService`).

Rules:

- One row per (series, hour, provider). A new value for the same row replaces the stored one when
  it is measured and the stored one is estimated, or when both are alike and the new one was
  fetched at the same time or later. A measured value is never replaced by an estimate.
- Different providers never overwrite each other: each keeps its own rows. When a forecast reads
  an hour several providers gave, it takes the provider it is using now, then a measured value
  over an estimate, then the latest fetch (then the provider's name, so the choice is stable).
- Rows older than `RETENTION` before the newest row of their zone are deleted on every write, so
  the store cannot grow without bound (about 35 days × 24 h per zone, series and provider).
- A failing store never fails a forecast: reads answer nothing, writes are dropped, and the
  forecast goes on with what it fetched (as the response cache does). A read never creates the
  database; the first write does.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from harchos_cli.carbon.types import HistoryInfo, Observation, Region
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import as_utc, floor_hour, iso

HOUR = timedelta(hours=1)
#: Rows older than this before the newest row of their zone are pruned.
RETENTION = timedelta(days=35)
#: A backfill that failed (network, HTTP 5xx) is tried again after this long.
RETRY_FAILED = timedelta(hours=6)
#: A backfill the provider refused (the plan lacks the endpoint) is asked again after this long.
RETRY_REFUSED = timedelta(days=7)
#: How long a write waits for another process's write lock before it is dropped (milliseconds).
BUSY_TIMEOUT_MS = 2000

BackfillStatus = Literal["done", "failed", "refused"]

_UPSERT = """
INSERT INTO carbon_history
    (zone, signal, method, area, start, provider, intensity, estimated, fetched_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (zone, signal, method, area, start, provider) DO UPDATE SET
    intensity = excluded.intensity,
    estimated = excluded.estimated,
    fetched_at = excluded.fetched_at
WHERE excluded.estimated < carbon_history.estimated
   OR (excluded.estimated = carbon_history.estimated
       AND excluded.fetched_at >= carbon_history.fetched_at)
"""


@dataclass(frozen=True)
class Series:
    """What a row's value measures: the zone, the signal and method, and the part of the zone.

    `area` is empty for values about the whole zone (Electricity Maps, ENTSO-E, national UK);
    `ukgrid:13` for a NESO region, `watttime:CAISO_NORTH` for a WattTime region.
    """

    zone: str
    signal: str
    method: str
    area: str = ""

    @property
    def lifecycle(self) -> bool:
        """Whether the embedded model (average, lifecycle, whole zone) may condition on it."""
        return self.signal == "average" and self.method == "lifecycle" and not self.area


def lifecycle_series(zone: str) -> Series:
    """The series the embedded model conditions on: average lifecycle intensity of the zone."""
    return Series(zone, "average", "lifecycle")


def area_for(provider: str, region: Region) -> str:
    """The part of `region.zone` that `provider`'s values for `region` describe ('' = all)."""
    if provider == "ukgrid" and region.ukgrid_region is not None:
        return f"ukgrid:{region.ukgrid_region}"
    if provider == "watttime" and region.watttime_region:
        return f"watttime:{region.watttime_region}"
    return ""


@dataclass(frozen=True)
class StoredHour:
    """One hourly value of a series from one provider."""

    start: datetime
    intensity: float
    estimated: bool
    provider: str
    fetched_at: datetime

    def observation(self) -> Observation:
        return Observation(self.start, self.start + HOUR, self.intensity, self.estimated)


@dataclass(frozen=True)
class BackfillMark:
    """What the last backfill of a series from a provider did, and when."""

    status: BackfillStatus
    attempted_at: datetime
    since: datetime | None = None
    through: datetime | None = None
    note: str = ""

    def covers(self, hour: datetime) -> bool:
        """Whether a completed backfill asked for (or already had) `hour`."""
        return (
            self.status == "done"
            and self.since is not None
            and self.through is not None
            and self.since <= hour < self.through
        )


def complete_hours(observations: Iterable[Observation], now: datetime) -> list[Observation]:
    """The observations that are whole UTC hours over by `now`, with a finite value."""
    now = as_utc(now)
    return [
        o
        for o in observations
        if o.end - o.start == HOUR
        and floor_hour(o.start) == o.start
        and o.end <= now
        and math.isfinite(o.intensity)
    ]


def resolve(rows: Iterable[StoredHour], prefer: str | None = None) -> list[StoredHour]:
    """One value per hour, in time order, by the rule in the module docstring: the provider
    `prefer` first, then measured over estimated, then the latest fetch, then the name."""

    def rank(row: StoredHour) -> tuple[bool, bool, float, str]:
        return (row.provider != prefer, row.estimated, -row.fetched_at.timestamp(), row.provider)

    best: dict[datetime, StoredHour] = {}
    for row in rows:
        current = best.get(row.start)
        if current is None or rank(row) < rank(current):
            best[row.start] = row
    return [best[start] for start in sorted(best)]


def _time(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


class HistoryStore:
    """The `carbon_history` tables of the state database (see the module docstring).

    Args:
        path: The state database (default: the user's, under `HARCHOS_HOME`).
        enabled: False: every read is empty and every write is dropped.
        busy_timeout_ms: How long a write waits for another process's lock.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        enabled: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._path = path
        self._enabled = enabled
        self._busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        #: Why the store could not be used (None while it works).
        self.error: str | None = None
        self._write_failed = False

    # --- connection ---------------------------------------------------------------------------

    def _target(self) -> Path:
        from harchos_cli import paths

        return self._path or paths.state_db()

    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        if not self._enabled:
            return None
        if self._db is None:
            from harchos_cli import state

            try:
                if not create and not self._target().exists():
                    return None
                db = state.connect(self._path)
            except (sqlite3.Error, OSError, UsageError) as exc:
                self._disable(exc)
                return None
            try:
                db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            except sqlite3.Error as exc:
                db.close()
                self._disable(exc)
                return None
            self._db = db
        return self._db

    def _disable(self, exc: BaseException) -> None:
        self.error = str(exc) or type(exc).__name__
        self._enabled = False
        self.close()

    @property
    def writable(self) -> bool:
        """Whether writes have worked so far (no write failed, the database opens)."""
        return self._enabled and not self._write_failed

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _write(self, statements: Sequence[tuple[str, Sequence[Any] | list[Sequence[Any]]]]) -> bool:
        """Run `(sql, params)` pairs in one transaction (params a list: executemany)."""
        db = self._connection(create=True)
        if db is None or self._write_failed:
            return False
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if isinstance(params, list):
                        db.executemany(sql, params)
                    else:
                        db.execute(sql, params)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # Locked past the busy timeout, read-only, full disk: drop the write and stop writing
            # in this process (a backfill that cannot be remembered would repeat every call).
            self.error = str(exc) or type(exc).__name__
            self._write_failed = True
            return False
        return True

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        db = self._connection(create=False)
        if db is None:
            return []
        try:
            return list(db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            self.error = str(exc) or type(exc).__name__
            return []

    # --- values -------------------------------------------------------------------------------

    def record(
        self,
        series: Series,
        provider: str,
        observations: Iterable[Observation],
        fetched_at: datetime,
    ) -> int:
        """Keep the whole hours of `observations` over by `fetched_at`; returns how many were
        offered to the store (0 when none, or the write failed). Prunes the zone's old rows."""
        fetched_at = as_utc(fetched_at)
        hours = complete_hours(observations, fetched_at)
        if not hours:
            return 0
        rows = [
            (
                series.zone,
                series.signal,
                series.method,
                series.area,
                iso(o.start),
                provider,
                float(o.intensity),
                int(o.estimated),
                iso(fetched_at),
            )
            for o in hours
        ]
        newest = max(o.start for o in hours)
        stored = self._read("SELECT MAX(start) FROM carbon_history WHERE zone=?", (series.zone,))
        if stored and stored[0][0]:
            newest = max(newest, _time(stored[0][0]))
        ok = self._write(
            [
                (_UPSERT, list(rows)),
                (
                    "DELETE FROM carbon_history WHERE zone=? AND start<?",
                    (series.zone, iso(newest - RETENTION)),
                ),
            ]
        )
        return len(rows) if ok else 0

    def rows(self, series: Series, start: datetime, end: datetime) -> list[StoredHour]:
        """Every provider's rows of `series` for the hours starting in [start, end)."""
        found = self._read(
            "SELECT start, intensity, estimated, provider, fetched_at FROM carbon_history"
            " WHERE zone=? AND signal=? AND method=? AND area=? AND start>=? AND start<?",
            (series.zone, series.signal, series.method, series.area, iso(start), iso(end)),
        )
        return [
            StoredHour(_time(s), float(v), bool(e), str(p), _time(f)) for s, v, e, p, f in found
        ]

    def known(self, series: Series, provider: str, start: datetime, end: datetime) -> set[datetime]:
        """The hours in [start, end) that `provider` gave for `series`."""
        return {row.start for row in self.rows(series, start, end) if row.provider == provider}

    # --- backfill markers ---------------------------------------------------------------------

    def mark(
        self,
        provider: str,
        series: Series,
        status: BackfillStatus,
        *,
        attempted_at: datetime,
        since: datetime | None = None,
        through: datetime | None = None,
        note: str = "",
    ) -> bool:
        """Remember what a backfill of `series` from `provider` did; a completed one, which hours
        [since, through) it covered."""
        return self._write(
            [
                (
                    "INSERT OR REPLACE INTO carbon_history_backfill"
                    " (provider, zone, signal, method, area, status, attempted_at, since,"
                    " through, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        provider,
                        series.zone,
                        series.signal,
                        series.method,
                        series.area,
                        status,
                        iso(attempted_at),
                        iso(since) if since else None,
                        iso(through) if through else None,
                        note,
                    ),
                )
            ]
        )

    def marker(self, provider: str, series: Series) -> BackfillMark | None:
        """The last backfill of `series` from `provider`, or None."""
        found = self._read(
            "SELECT status, attempted_at, since, through, note FROM carbon_history_backfill"
            " WHERE provider=? AND zone=? AND signal=? AND method=? AND area=?",
            (provider, series.zone, series.signal, series.method, series.area),
        )
        if not found:
            return None
        status, attempted, since, through, note = found[0]
        if status not in ("done", "failed", "refused"):
            return None
        return BackfillMark(
            status,
            _time(attempted),
            _time(since) if since else None,
            _time(through) if through else None,
            note,
        )

    # --- listing and clearing -----------------------------------------------------------------

    def summary(self, zone: str | None = None) -> list[dict[str, Any]]:
        """Per zone, series and provider: hours kept, the first and last, how many estimated,
        and the last backfill (for `harchos forecast history`)."""
        where, params = ("WHERE zone=?", (zone,)) if zone else ("", ())
        found = self._read(
            "SELECT zone, signal, method, area, provider, COUNT(*), MIN(start), MAX(start),"
            f" SUM(estimated) FROM carbon_history {where}"
            " GROUP BY zone, signal, method, area, provider ORDER BY zone, signal, method, area,"
            " provider",
            params,
        )
        marks = {
            tuple(row[:5]): row[5:]
            for row in self._read(
                "SELECT provider, zone, signal, method, area, status, attempted_at, since, through,"
                " note"
                f" FROM carbon_history_backfill {where}",
                params,
            )
        }

        def entry(key: tuple[Any, ...], counts: tuple[Any, ...]) -> dict[str, Any]:
            provider, zone_, signal, method, area = key
            hours, first, last, estimated = counts
            return {
                "zone": zone_, "signal": signal, "method": method, "area": area or None,
                "provider": provider, "hours": int(hours), "estimated_hours": int(estimated or 0),
                "first": first, "last": last, "backfill": _mark_json(marks.pop(key, None)),
            }  # fmt: skip

        out = [
            entry((provider, zone_, signal, method, area), (hours, first, last, estimated))
            for zone_, signal, method, area, provider, hours, first, last, estimated in found
        ]
        # Series with a backfill marker and no value (the backfill found nothing).
        out += [entry(key, (0, None, None, 0)) for key in list(marks)]
        return out

    def clear(self, zone: str | None = None) -> int:
        """Forget the values and backfill markers (of one zone); returns the values removed."""
        where, params = ("WHERE zone=?", (zone,)) if zone else ("", ())
        found = self._read(f"SELECT COUNT(*) FROM carbon_history {where}", params)
        count = int(found[0][0]) if found else 0
        ok = self._write(
            [
                (f"DELETE FROM carbon_history {where}", params),
                (f"DELETE FROM carbon_history_backfill {where}", params),
            ]
        )
        return count if ok else 0


def _mark_json(mark: Sequence[Any] | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    status, attempted, since, through, note = mark
    return {
        "status": status,
        "attempted_at": attempted,
        "since": since,
        "through": through,
        "note": note or None,
    }


@dataclass
class Gathered:
    """The history one forecast has: the chosen value per hour of the window and where it came
    from (this run's fetch, this run's backfill, or the store from earlier runs)."""

    series: Series
    hours: list[StoredHour]
    provider: str | None = None
    fetched: set[datetime] = field(default_factory=set)
    backfilled: set[datetime] = field(default_factory=set)
    backfill: str | None = None

    @property
    def observations(self) -> list[Observation]:
        return [h.observation() for h in self.hours]

    def _origin(self, hour: StoredHour) -> str:
        if hour.provider == self.provider and hour.start in self.fetched:
            return "fetched"
        if hour.provider == self.provider and hour.start in self.backfilled:
            return "backfilled"
        return "stored"

    @property
    def sources(self) -> list[str]:
        """The providers the hours came from, most hours first."""
        counts = Counter(h.provider for h in self.hours)
        return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @property
    def main_source(self) -> str | None:
        sources = self.sources
        if self.provider in sources:
            return self.provider
        return sources[0] if sources else None

    def info(self, *, used_by_model: bool) -> HistoryInfo:
        origins = Counter(self._origin(h) for h in self.hours)
        return HistoryInfo(
            fetched_hours=origins["fetched"],
            stored_hours=origins["stored"],
            backfilled_hours=origins["backfilled"],
            backfill=self.backfill,
            sources=tuple(self.sources),
            signal=self.series.signal,
            method=self.series.method,
            used_by_model=used_by_model,
        )

    def describe(self) -> str:
        """`168 h of electricitymaps history (24 h fetched now, 144 h backfilled)`."""
        if not self.hours:
            return "no recent history"
        origins = Counter(self._origin(h) for h in self.hours)
        parts = [
            f"{origins[key]} h {label}"
            for key, label in (
                ("fetched", "fetched now"),
                ("backfilled", "backfilled now"),
                ("stored", "from the history store"),
            )
            if origins[key]
        ]
        names = "+".join(self.sources)
        text = f"{len(self.hours)} h of {names} history"
        if len(parts) > 1 or origins["fetched"] != len(self.hours):
            text += f" ({', '.join(parts)}; newest {iso(self.hours[-1].start)})"
        return text
