"""A carbon-aware batch ETL: the input is split into chunks, each processed and committed once.

`python pipeline.py` plans the chunks (first run), then processes every chunk not yet done. The
manifest (SQLite) is the single source of truth:

- A chunk's output is written to a temporary file and renamed into place, then the chunk is
  marked done in one transaction. A crash at any point leaves the chunk either done (output in
  place) or not done (it is redone from scratch, and the rename makes the redo overwrite any
  partial output). So a crash or a pause redoes no finished chunk and loses none.
- On SIGUSR1 (harchos pauses the job outside a green window) or SIGTERM, the chunk in progress is
  finished and committed, then the script exits with code 85; the next run carries on.

Settings live in `pipeline.toml`; `--set key=value` overrides one.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

PAUSED_EXIT_CODE = 85
PROJECT = Path(__file__).resolve().parent
SCHEMA = """
CREATE TABLE IF NOT EXISTS input (path TEXT NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',      -- pending, running, done
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    finished_at REAL
);
"""


@dataclass
class PipelineConfig:
    input: str = "data/input.csv"
    output_dir: str = "out"
    manifest: str = "manifest.sqlite"
    chunk_rows: int = 500
    # Rows of synthetic input written when `input` does not exist yet (0: fail instead).
    synthetic_rows: int = 20000


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
    return PipelineConfig(**values)  # type: ignore[arg-type]


def transform(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The T of ETL: replace it with yours.

    It must depend only on its input, so that redoing an uncommitted chunk writes the same output.
    """
    out = []
    for row in rows:
        celsius = float(row["celsius"])
        out.append(
            {
                **row,
                "fahrenheit": f"{celsius * 9 / 5 + 32:.2f}",
                "anomaly": "1" if abs(celsius - 20.0) > 15.0 else "0",
            }
        )
    return out


def write_synthetic_input(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "timestamp", "sensor", "celsius"])
        for i in range(rows):
            writer.writerow(
                [i, 1_700_000_000 + 60 * i, f"s{i % 17:02d}", f"{rng.gauss(20, 8):.2f}"]
            )
    os.replace(partial, path)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan(db: sqlite3.Connection, source: Path, chunk_rows: int) -> None:
    """Split the input into chunks by byte range, once; later runs check it has not changed."""
    fingerprint = sha256(source)
    known = db.execute("SELECT path, sha256 FROM input").fetchone()
    if known is not None:
        if known[1] != fingerprint:
            raise SystemExit(
                f"{source} changed since it was split into chunks; "
                "start a new run with another manifest (--set manifest=...)"
            )
        return
    chunks: list[tuple[int, int, int, int]] = []
    with source.open("rb") as handle:
        handle.readline()  # header
        start, rows, total = handle.tell(), 0, 0
        while handle.readline():
            rows += 1
            if rows == chunk_rows:
                chunks.append((len(chunks), start, handle.tell(), rows))
                start, total, rows = handle.tell(), total + rows, 0
        if rows:
            chunks.append((len(chunks), start, handle.tell(), rows))
            total += rows
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO input VALUES (?, ?, ?)", (str(source), fingerprint, total))
    db.executemany(
        "INSERT INTO chunks (id, start_offset, end_offset, rows) VALUES (?, ?, ?, ?)", chunks
    )
    db.execute("COMMIT")


def read_chunk(source: Path, start: int, end: int) -> list[dict[str, str]]:
    with source.open("rb") as handle:
        header = handle.readline().decode("utf-8")
        handle.seek(start)
        body = handle.read(end - start).decode("utf-8")
    return list(csv.DictReader(io.StringIO(header + body)))


def write_atomically(path: Path, rows: list[dict[str, str]]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def pending(db: sqlite3.Connection) -> Iterator[tuple[int, int, int]]:
    # 'running' here means a previous run died inside that chunk: it was never committed.
    yield from db.execute(
        "SELECT id, start_offset, end_offset FROM chunks WHERE status != 'done' ORDER BY id"
    ).fetchall()


def run(cfg: PipelineConfig, should_stop: threading.Event | None = None) -> str:
    """Process every chunk not yet done. Returns "finished" or "paused"."""
    source = Path(cfg.input)
    if not source.exists():
        if not cfg.synthetic_rows:
            raise SystemExit(f"no input at {source}")
        write_synthetic_input(source, cfg.synthetic_rows)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    db = connect(Path(cfg.manifest))
    plan(db, source, cfg.chunk_rows)
    for chunk_id, start, end in pending(db):
        if should_stop is not None and should_stop.is_set():
            print("paused: every finished chunk is committed", flush=True)
            return "paused"
        db.execute(
            "UPDATE chunks SET status = 'running', attempts = attempts + 1 WHERE id = ?",
            (chunk_id,),
        )
        output = out_dir / f"part-{chunk_id:05d}.csv"
        write_atomically(output, transform(read_chunk(source, start, end)))
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE chunks SET status = 'done', output = ?, finished_at = ? WHERE id = ?",
            (str(output), time.time(), chunk_id),
        )
        db.execute("COMMIT")
        print(f"chunk {chunk_id} done", flush=True)
    done, total = db.execute("SELECT SUM(status = 'done'), COUNT(*) FROM chunks").fetchone()
    print(f"finished: {done}/{total} chunks", flush=True)
    return "finished"


def status(cfg: PipelineConfig) -> dict[str, int]:
    db = connect(Path(cfg.manifest))
    counts = {"pending": 0, "running": 0, "done": 0}
    for state, count in db.execute("SELECT status, COUNT(*) FROM chunks GROUP BY status"):
        counts[state] = count
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "status"])
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
    return PAUSED_EXIT_CODE if run(cfg, stop) == "paused" else 0


if __name__ == "__main__":
    sys.exit(main())
