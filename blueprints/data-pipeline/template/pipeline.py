"""A carbon-aware batch ETL: the input is split into chunks of records, each committed once.

`python pipeline.py` plans the chunks (first run), then processes every chunk not yet done. The
manifest (SQLite) is the single source of truth:

- The input is a CSV file with a header row, parsed with the csv module: a quoted field may hold
  commas, quotes and newlines. A chunk is a byte range of whole records, planned once and stored
  with the input's SHA-256, so its boundaries never move between runs.
- Every record is checked against `[pipeline.schema]` while planning, before any work: a bad one
  stops the run with the line it starts on, `data/input.csv:42: column 'celsius': 'warm' is not
  a float`.
- A worker leases a chunk in the manifest (owner, expiry) and renews the lease while it works. It
  writes the chunk's output to a temporary file, renames it into place and marks the chunk done in
  one transaction, which succeeds only while it still holds the lease. The lease of a worker that
  died (on this machine) is taken over at once, any other lease once it expired. So a crash, a
  kill -9 or a pause redoes no finished chunk and loses none, and no chunk is committed twice.
- `workers = N` runs N worker processes; other `python pipeline.py` started on the same manifest
  on this machine share the work in the same way.
- harchos's pause contract, the one its training blueprints follow: on SIGUSR1 (harchos pauses
  the job through a dirty spell, or `harchos jobs pause`) or SIGTERM, each worker finishes and
  commits the chunk in hand and exits with code 85; the next run carries on. With
  `$HARCHOS_CONTROL_DIR` set, each worker registers as the empty file `workers/<pid>` there
  (harchos signals exactly those pids) and confirms its pause with `workers/<pid>.paused`.

Settings live in `pipeline.toml`; `--set key=value` overrides one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, NamedTuple

PAUSED_EXIT_CODE = 85
PROJECT = Path(__file__).resolve().parent
FORMATS = ("csv", "parquet")
TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
SCHEMA = """
CREATE TABLE IF NOT EXISTS input (path TEXT NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    start_offset INTEGER NOT NULL,               -- a byte range of whole records
    end_offset INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',      -- pending, running (leased), done
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    finished_at REAL
);
"""
# Added since the first version of this blueprint; a manifest made by it gains them.
COLUMNS = {
    "first_line": "INTEGER",  # the physical line at start_offset (the header is line 1)
    "owner": "TEXT",  # host:pid of the worker that holds (or held) the lease
    "lease_until": "REAL",  # the lease expires then (seconds since the epoch)
}

Row = dict[str, Any]


@dataclass
class PipelineConfig:
    input: str = "data/input.csv"
    output_dir: str = "out"
    manifest: str = "manifest.sqlite"
    chunk_rows: int = 500
    # Rows of synthetic input written when `input` does not exist yet (0: fail instead).
    synthetic_rows: int = 20000
    output_format: str = "csv"
    workers: int = 1
    lease_s: float = 60.0
    # column -> "int", "float" or "str"; a trailing "?" lets the value be empty (None).
    schema: dict[str, str] = field(default_factory=dict)


def load_config(path: Path | None, overrides: list[str]) -> PipelineConfig:
    """Read `[pipeline]` from a TOML file, then apply `key=value` overrides (TOML values)."""
    values: dict[str, object] = {}
    if path is not None and path.is_file():
        values.update(tomllib.loads(path.read_text(encoding="utf-8")).get("pipeline", {}))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r} is not key=value")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(PipelineConfig)})
    if unknown:
        raise SystemExit(f"unknown pipeline setting(s): {', '.join(unknown)}")
    cfg = PipelineConfig(**values)  # type: ignore[arg-type]
    problem = check_config(cfg)
    if problem:
        raise SystemExit(f"pipeline setting {problem}")
    return cfg


def check_config(cfg: PipelineConfig) -> str | None:
    if cfg.output_format not in FORMATS:
        return f'output_format = "{cfg.output_format}": use "csv" or "parquet"'
    for name in ("chunk_rows", "workers"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name} = {value!r}: a whole number, 1 or more"
    if not isinstance(cfg.lease_s, int | float) or not cfg.lease_s > 0:
        return f"lease_s = {cfg.lease_s!r}: seconds, more than 0"
    if not isinstance(cfg.schema, dict):
        return "schema: a table of column = type"
    for column, kind in cfg.schema.items():
        if not isinstance(kind, str) or kind.removesuffix("?") not in TYPES:
            return f'schema.{column} = {kind!r}: one of "int", "float", "str" (with "?": or empty)'
    return None


def transform(rows: list[Row]) -> list[Row]:
    """The T of ETL: replace it with yours.

    Each row maps the header's columns to their values, typed by `[pipeline.schema]` (the other
    columns are strings). It must depend only on its input, so that redoing an uncommitted chunk
    writes the same output.
    """
    out = []
    for row in rows:
        celsius = float(row["celsius"])
        out.append(
            {
                **row,
                "fahrenheit": round(celsius * 9 / 5 + 32, 2),
                "anomaly": int(abs(celsius - 20.0) > 15.0),
            }
        )
    return out


NOTES = ["", "", "", "checked, ok", 'door "A" open', "moved\nto the shade", ""]


def write_synthetic_input(path: Path, rows: int, seed: int = 7) -> None:
    """Made-up sensor readings; some notes hold commas, quotes and newlines, as real CSV does."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "timestamp", "sensor", "celsius", "note"])
        for i in range(rows):
            writer.writerow(
                [
                    i,
                    1_700_000_000 + 60 * i,
                    f"s{i % 17:02d}",
                    f"{rng.gauss(20, 8):.2f}",
                    NOTES[i % len(NOTES)],
                ]
            )
    os.replace(partial, path)


# --- Reading CSV records with their byte offsets and line numbers ---------------------------


class Record(NamedTuple):
    line: int  # the physical line the record starts on
    end: int  # the byte offset just after it
    next_line: int  # the physical line at `end`
    fields: list[str]


class _Lines:
    """The input's physical lines from the handle's position, decoded, counted in bytes."""

    def __init__(self, handle: BinaryIO, source: Path, line: int) -> None:
        self.handle, self.source = handle, source
        self.offset = handle.tell()
        self.line = line - 1  # the last line read

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        try:
            return raw.decode("utf-8-sig" if self.line == 1 else "utf-8")
        except UnicodeDecodeError:
            raise SystemExit(f"{self.source}:{self.line}: not UTF-8 text") from None


def records(handle: BinaryIO, source: Path, line: int, end: int | None = None) -> Iterator[Record]:
    """The CSV records from the handle's position (physical line `line`) up to byte `end`.

    The csv module pulls a line at a time and only as many as a record needs, so the bytes read
    after each record are exactly the record's: its end offset is exact. Blank lines are skipped.
    """
    lines = _Lines(handle, source, line)
    reader = csv.reader(lines, strict=True)
    while end is None or lines.offset < end:
        first = lines.line + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise SystemExit(f"{source}:{first}: not valid CSV ({error})") from None
        if fields:
            yield Record(first, lines.offset, lines.line + 1, fields)


def read_header(handle: BinaryIO, source: Path, schema: dict[str, str]) -> Record:
    handle.seek(0)
    header = next(records(handle, source, 1), None)
    if header is None:
        raise SystemExit(f"{source}: empty, a CSV file with a header row is needed")
    missing = [column for column in schema if column not in header.fields]
    if missing:
        raise SystemExit(
            f"{source}:{header.line}: the header has no column {', '.join(map(repr, missing))}, "
            "which [pipeline.schema] names"
        )
    if len(set(header.fields)) != len(header.fields):
        raise SystemExit(f"{source}:{header.line}: a column name appears twice in the header")
    return header


def parse_row(header: list[str], record: Record, schema: dict[str, str], source: Path) -> Row:
    """The record as a row of typed values; a SystemExit naming its line when it does not fit."""
    if len(record.fields) != len(header):
        raise SystemExit(
            f"{source}:{record.line}: {len(record.fields)} field(s), the header has {len(header)}"
        )
    row: Row = dict(zip(header, record.fields, strict=True))
    for column, kind in schema.items():
        value = row[column]
        if kind.endswith("?") and value == "":
            row[column] = None
            continue
        try:
            row[column] = TYPES[kind.removesuffix("?")](value)
        except ValueError:
            shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
            raise SystemExit(
                f"{source}:{record.line}: column {column!r}: {shown} is not "
                f"{'an' if kind.startswith('int') else 'a'} {kind.removesuffix('?')}"
            ) from None
    return row


def line_at(source: Path, offset: int) -> int:
    """The physical line at byte `offset` (for chunks planned before lines were recorded)."""
    with source.open("rb") as handle:
        return handle.read(offset).count(b"\n") + 1


def read_chunk(
    source: Path, start: int, end: int, first_line: int, schema: dict[str, str]
) -> list[Row]:
    with source.open("rb") as handle:
        header = read_header(handle, source, schema).fields
        handle.seek(start)
        return [
            parse_row(header, record, schema, source)
            for record in records(handle, source, first_line, end)
        ]


# --- The manifest ------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    for name, kind in COLUMNS.items():
        if name not in have:
            with contextlib.suppress(sqlite3.OperationalError):  # another worker added it
                db.execute(f"ALTER TABLE chunks ADD COLUMN {name} {kind}")
    return db


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_unchanged(source: Path, known: str, fingerprint: str) -> None:
    if known != fingerprint:
        raise SystemExit(
            f"{source} changed since it was split into chunks; "
            "start a new run with another manifest (--set manifest=...)"
        )


def plan(db: sqlite3.Connection, source: Path, chunk_rows: int, schema: dict[str, str]) -> None:
    """Split the input into chunks of `chunk_rows` records, once, checking every record; later
    runs check that the input has not changed."""
    fingerprint = sha256(source)
    known = db.execute("SELECT sha256 FROM input").fetchone()
    if known is not None:
        check_unchanged(source, known[0], fingerprint)
        return
    chunks: list[tuple[int, int, int, int, int]] = []
    with source.open("rb") as handle:
        header = read_header(handle, source, schema)
        start, first_line, rows, total = header.end, header.next_line, 0, 0
        last_end = start
        for record in records(handle, source, header.next_line):
            parse_row(header.fields, record, schema, source)
            rows += 1
            if rows == chunk_rows:
                chunks.append((len(chunks), start, record.end, rows, first_line))
                start, first_line, total, rows = record.end, record.next_line, total + rows, 0
            last_end = record.end
        if rows:
            chunks.append((len(chunks), start, last_end, rows, first_line))
            total += rows
    db.execute("BEGIN IMMEDIATE")
    try:
        known = db.execute("SELECT sha256 FROM input").fetchone()
        if known is None:  # not planned by another worker meanwhile
            db.execute("INSERT INTO input VALUES (?, ?, ?)", (str(source), fingerprint, total))
            db.executemany(
                "INSERT INTO chunks (id, start_offset, end_offset, rows, first_line) "
                "VALUES (?, ?, ?, ?, ?)",
                chunks,
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if known is not None:
        check_unchanged(source, known[0], fingerprint)


# --- Leases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    chunk: int
    start: int
    end: int
    first_line: int | None
    attempt: int
    owner: str
    taken_from: str | None  # the worker whose dead or expired lease this one replaces


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is dead too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def lease_is_over(owner: str | None, until: float | None, now: float) -> bool:
    """Expired, or held by a process of this machine that is gone."""
    if until is None or until <= now:
        return True
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker: only its expiry tells
    return int(pid) == os.getpid() or not pid_alive(int(pid))


def acquire(db: sqlite3.Connection, owner: str, lease_s: float) -> Lease | None:
    """Lease the first chunk whose lease is over, else the first pending one (None: none)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        found = None
        for row in db.execute(
            "SELECT id, start_offset, end_offset, first_line, attempts, owner, lease_until "
            "FROM chunks WHERE status = 'running' ORDER BY id"
        ).fetchall():
            if lease_is_over(row[5], row[6], now):
                found, taken_from = row, row[5] or "a worker"
                break
        if found is None:
            found = db.execute(
                "SELECT id, start_offset, end_offset, first_line, attempts, owner, lease_until "
                "FROM chunks WHERE status = 'pending' ORDER BY id LIMIT 1"
            ).fetchone()
            taken_from = None
        if found is None:
            db.execute("COMMIT")
            return None
        db.execute(
            "UPDATE chunks SET status = 'running', attempts = attempts + 1, owner = ?, "
            "lease_until = ? WHERE id = ?",
            (owner, now + lease_s, found[0]),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return Lease(found[0], found[1], found[2], found[3], found[4] + 1, owner, taken_from)


_HELD = "id = ? AND owner = ? AND attempts = ? AND status = 'running'"


def holds(db: sqlite3.Connection, lease: Lease) -> bool:
    row = db.execute(
        f"SELECT 1 FROM chunks WHERE {_HELD}", (lease.chunk, lease.owner, lease.attempt)
    ).fetchone()
    return row is not None


def commit(db: sqlite3.Connection, lease: Lease, output: Path) -> bool:
    """Mark the chunk done, if this lease still holds it (a worker that stalled past its
    lease's expiry finds the chunk taken over, and commits nothing)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        changed = db.execute(
            "UPDATE chunks SET status = 'done', output = ?, finished_at = ?, lease_until = NULL "
            f"WHERE {_HELD}",
            (str(output), time.time(), lease.chunk, lease.owner, lease.attempt),
        ).rowcount
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return changed == 1


class Heartbeat:
    """Renews a lease every lease_s/3 seconds from a thread, while the chunk is processed."""

    def __init__(self, manifest: Path, lease: Lease, lease_s: float) -> None:
        self.manifest, self.lease, self.lease_s = manifest, lease, lease_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        db = sqlite3.connect(self.manifest, isolation_level=None, timeout=60)
        try:
            lease = self.lease
            while not self.stopped.wait(self.lease_s / 3):
                with contextlib.suppress(sqlite3.OperationalError):  # busy: next beat
                    db.execute(
                        f"UPDATE chunks SET lease_until = ? WHERE {_HELD}",
                        (time.time() + self.lease_s, lease.chunk, lease.owner, lease.attempt),
                    )
        finally:
            db.close()


# --- Output --------------------------------------------------------------------------------------


def require_pyarrow() -> None:
    try:
        import pyarrow  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        raise SystemExit(
            'output_format = "parquet" needs pyarrow: pip install pyarrow '
            '(or set output_format = "csv")'
        ) from None


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())


def write_parquet(path: Path, rows: list[Row], schema: dict[str, str]) -> None:
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]

    table = pa.Table.from_pylist(rows)
    declared = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    for index, column in enumerate(table.schema):
        if pa.types.is_null(column.type):  # every value of the chunk empty: keep the type
            kind = schema.get(column.name, "str").removesuffix("?")
            table = table.set_column(index, column.name, table.column(index).cast(declared[kind]))
    pq.write_table(table, path)
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def output_path(out_dir: Path, chunk: int, output_format: str) -> Path:
    return out_dir / f"part-{chunk:05d}.{output_format}"


def process(cfg: PipelineConfig, db: sqlite3.Connection, source: Path, lease: Lease) -> bool:
    """Transform a leased chunk, write it, rename it into place, commit. False: the lease was
    lost (the chunk is another worker's now) and nothing was committed."""
    out_dir = Path(cfg.output_dir)
    output = output_path(out_dir, lease.chunk, cfg.output_format)
    partial = out_dir / f".{output.name}.{lease.attempt}.partial"
    first_line = lease.first_line or line_at(source, lease.start)
    with Heartbeat(Path(cfg.manifest), lease, cfg.lease_s):
        rows = transform(read_chunk(source, lease.start, lease.end, first_line, cfg.schema))
        if cfg.output_format == "parquet":
            write_parquet(partial, rows, cfg.schema)
        else:
            write_csv(partial, rows)
        if not holds(db, lease):
            partial.unlink(missing_ok=True)
            return False
        # A redo writes the same bytes (transform depends only on its input), so a rename by
        # a worker that lost its lease a moment ago replaces the file with an equal one.
        os.replace(partial, output)
        return commit(db, lease, output)


# --- Running -------------------------------------------------------------------------------------


def prepare(cfg: PipelineConfig) -> Path:
    """The input (synthetic when missing), with its chunks planned in the manifest."""
    if cfg.output_format == "parquet":
        require_pyarrow()
    source = Path(cfg.input)
    if not source.exists():
        if not cfg.synthetic_rows:
            raise SystemExit(f"no input at {source}")
        write_synthetic_input(source, cfg.synthetic_rows)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with contextlib.closing(connect(Path(cfg.manifest))) as db:
        plan(db, source, cfg.chunk_rows, cfg.schema)
    return source


def counts(db: sqlite3.Connection) -> tuple[int, int]:
    done, total = db.execute(
        "SELECT COALESCE(SUM(status = 'done'), 0), COUNT(*) FROM chunks"
    ).fetchone()
    return int(done), int(total)


def run(
    cfg: PipelineConfig, should_stop: Callable[[], bool] | None = None, *, worker: bool = False
) -> str:
    """Process chunks until none is left. Returns "finished" or "paused".

    `should_stop` is asked between chunks (the entry point wires it to SIGUSR1/SIGTERM). A worker
    that finds every chunk left leased by live workers waits for them (or for a lease to expire).
    `worker`: one of the processes `run_workers` started (its lines name it; no summary).
    """
    source = prepare(cfg)
    say = f"worker {os.getpid()}: " if worker else ""
    with contextlib.closing(connect(Path(cfg.manifest))) as db:
        if work(cfg, db, source, should_stop, say) == "paused":
            return "paused"
        # Every chunk is done, so no worker writes any more: what killed ones left goes.
        for leftover in Path(cfg.output_dir).glob(".part-*.partial"):
            leftover.unlink(missing_ok=True)
        if not worker:
            done, total = counts(db)
            print(f"finished: {done}/{total} chunks", flush=True)
    return "finished"


def work(
    cfg: PipelineConfig,
    db: sqlite3.Connection,
    source: Path,
    should_stop: Callable[[], bool] | None,
    say: str,
) -> str:
    """Lease, process and commit chunks until every one is done ("finished") or `should_stop`
    says so between two chunks ("paused")."""
    owner = worker_id()
    while True:
        if should_stop is not None and should_stop():
            print(f"{say}paused: every finished chunk is committed", flush=True)
            return "paused"
        lease = acquire(db, owner, cfg.lease_s)
        if lease is None:
            done, total = counts(db)
            if done == total:
                break
            time.sleep(min(0.5, cfg.lease_s / 4))
            continue
        if lease.taken_from:
            print(f"{say}chunk {lease.chunk}: taking over from {lease.taken_from}", flush=True)
        if process(cfg, db, source, lease):
            print(f"{say}chunk {lease.chunk} done", flush=True)
        else:
            print(f"{say}chunk {lease.chunk}: lease lost, another worker does it", flush=True)
    return "finished"


def run_workers(cfg: PipelineConfig, passed: list[str]) -> int:
    """Start `cfg.workers` worker processes (`pipeline.py worker` with the same settings), pass
    them SIGUSR1/SIGTERM, and wait for all of them."""
    prepare(cfg)
    # The workers start with SIGUSR1 and SIGTERM ignored (inherited through exec) until their
    # handlers are in place: a stop asked while one starts up must not kill it mid-chunk.
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    script = str(Path(__file__).resolve())
    procs = [
        subprocess.Popen([sys.executable, script, "worker", *passed]) for _ in range(cfg.workers)
    ]
    print(f"started {cfg.workers} workers: pids {' '.join(str(p.pid) for p in procs)}", flush=True)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, forward)
    by_pid = {proc.pid: proc for proc in procs}
    # os.wait reaps whichever worker ends first, so a killed one is never left a zombie whose
    # lease looks alive to the others.
    while any(proc.returncode is None for proc in procs):
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in by_pid:
            by_pid[pid].returncode = os.waitstatus_to_exitcode(status)
    codes = [proc.returncode for proc in procs]
    with contextlib.closing(connect(Path(cfg.manifest))) as db:
        done, total = counts(db)
    if done == total:
        print(f"finished: {done}/{total} chunks", flush=True)
        return 0
    if PAUSED_EXIT_CODE in codes:
        print(f"paused: {done}/{total} chunks done, every one committed", flush=True)
        return PAUSED_EXIT_CODE
    print(f"workers exited with {codes}, {done}/{total} chunks done; run again to carry on",
          file=sys.stderr, flush=True)  # fmt: skip
    return 1


def status(cfg: PipelineConfig) -> dict[str, int]:
    result = {"pending": 0, "running": 0, "done": 0}
    with contextlib.closing(connect(Path(cfg.manifest))) as db:
        for state, count in db.execute("SELECT status, COUNT(*) FROM chunks GROUP BY status"):
            result[state] = count
    return result


# --- harchos's control folder (the contract its training blueprints follow) --------------------


def control_dir() -> Path | None:
    """The folder where harchos reads which processes to signal (unset without harchos)."""
    folder = os.environ.get("HARCHOS_CONTROL_DIR")
    return Path(folder) if folder else None


def register_worker() -> None:
    """Tell harchos this process works: the empty file `$HARCHOS_CONTROL_DIR/workers/<pid>`."""
    folder = control_dir()
    if folder is None:
        return
    workers = folder / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    (workers / str(os.getpid())).touch()


def report_paused(cfg: PipelineConfig) -> None:
    """Tell harchos this process paused: `workers/<pid>.paused` = {"checkpoint": the manifest,
    "step": chunks done} (JSON), written atomically once its last chunk is committed."""
    folder = control_dir()
    if folder is None:
        return
    workers = folder / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    with contextlib.closing(connect(Path(cfg.manifest))) as db:
        done, _ = counts(db)
    temp = workers / f".{pid}.paused.tmp"
    temp.write_text(
        json.dumps({"checkpoint": os.path.abspath(cfg.manifest), "step": done}) + "\n",
        encoding="utf-8",
    )
    os.replace(temp, workers / f"{pid}.paused")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "status", "worker"],
        help="run (default): process every chunk left; status: count chunks; worker: one "
        "worker process (what `run` starts when workers > 1)",
    )
    parser.add_argument("--config", type=Path, default=PROJECT / "pipeline.toml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set chunk_rows=100",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.command == "status":
        print(json.dumps(status(cfg)))
        return 0
    if args.command == "run" and cfg.workers > 1:
        passed = ["--config", str(args.config)]
        for override in args.overrides:
            passed += ["--set", override]
        return run_workers(cfg, passed)

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        print(
            f"received {signal.Signals(signum).name}: stopping after this chunk",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    signal.signal(signal.SIGUSR1, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    register_worker()
    parent = os.getppid() if args.command == "worker" else None

    def should_stop() -> bool:
        # A worker whose `pipeline.py run` is gone stops too, rather than run on unseen.
        return stop.is_set() or (parent is not None and os.getppid() != parent)

    if run(cfg, should_stop, worker=args.command == "worker") == "paused":
        report_paused(cfg)
        return PAUSED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
