"""Every chunk is processed and committed exactly once: through crashes, kills, pauses and several
workers; real CSV records, a schema check that names the line, CSV or Parquet output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pipeline
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT

WATCHDOG_S = 300


def settings(folder: Path, chunk_rows: int, *extra: str) -> list[str]:
    """`--set` arguments: the files under `folder`, one worker, CSV output, then `extra`."""
    values = {
        "input": folder / "input.csv",
        "output_dir": folder / "out",
        "manifest": folder / "manifest.sqlite",
    }
    args = [f'{key}="{value}"' for key, value in values.items()]
    args += [f"chunk_rows={chunk_rows}", "workers=1", 'output_format="csv"', *extra]
    return [word for arg in args for word in ("--set", arg)]


def config(folder: Path, chunk_rows: int, *extra: str) -> pipeline.PipelineConfig:
    """The project's pipeline.toml (its schema included) with `settings` applied."""
    return pipeline.load_config(
        PROJECT / "pipeline.toml", settings(folder, chunk_rows, *extra)[1::2]
    )


class Chunk(NamedTuple):
    status: str
    attempts: int
    finished_at: float | None
    owner: str | None


def chunks(folder: Path, manifest: str = "manifest.sqlite") -> dict[int, Chunk]:
    with contextlib.closing(sqlite3.connect(folder / manifest)) as db:
        rows = db.execute("SELECT id, status, attempts, finished_at, owner FROM chunks").fetchall()
    return {row[0]: Chunk(*row[1:]) for row in rows}


def output_rows(folder: Path) -> list[str]:
    rows: list[str] = []
    for part in sorted((folder / "out").glob("part-*.csv")):
        with part.open(newline="") as handle:
            rows += [row["row"] for row in csv.DictReader(handle)]
    return rows


def input_rows(folder: Path, column: str = "row") -> list[str]:
    with (folder / "input.csv").open(newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def start(folder: Path, chunk_rows: int, *extra: str, env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "pipeline.py"), *settings(folder, chunk_rows, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def follow(proc: subprocess.Popen[str], act: Callable[[list[str]], bool]) -> str:
    """Read the run's output to its end; after each line, until it returns True, `act` is
    given the lines so far (and acts on the run when the moment has come). Returns the output."""
    watchdog = threading.Timer(WATCHDOG_S, proc.kill)
    watchdog.start()
    lines: list[str] = []
    acted = False
    try:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            acted = acted or act(lines)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    output = "".join(lines)
    assert acted, output
    return output


def done_lines(lines: list[str], pid: int | None = None) -> int:
    prefix = f"worker {pid}: " if pid else ""
    return sum(line.startswith(prefix) and line.endswith(" done\n") for line in lines)


def stop_after(proc: subprocess.Popen[str], done: int, signum: signal.Signals) -> str:
    """Send `signum` once the run has committed `done` chunks; return its output."""

    def send(lines: list[str]) -> bool:
        if done_lines(lines) < done:
            return False
        os.kill(proc.pid, signum)
        return True

    output = follow(proc, send)
    assert "finished:" not in output, "the run ended before it could be stopped"
    return output


def test_every_row_is_transformed_once(tmp_path: Path) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 1050)
    assert pipeline.run(config(tmp_path, 100)) == "finished"
    assert output_rows(tmp_path) == input_rows(tmp_path)
    state = chunks(tmp_path)
    assert len(state) == 11
    assert {chunk.status for chunk in state.values()} == {"done"}
    with (tmp_path / "out" / "part-00000.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))
    assert float(first["fahrenheit"]) == pytest.approx(
        float(first["celsius"]) * 9 / 5 + 32, abs=0.01
    )


# Quoted fields with commas, quotes and newlines (LF and CRLF), CRLF line ends, a blank line.
RECORDS = (
    b"row,sensor,celsius,note\r\n"  # line 1
    b'0,"s01\nnote",20.5,\r\n'  # lines 2-3: the field that broke the line-based chunker
    b"1,s02,21,plain\r\n"  # line 4
    b"\r\n"  # line 5, blank
    b'2,s03,22,"a, b and ""c"""\r\n'  # line 6
    b'3,s04,-4.5,"two\r\nlines\nand three"\r\n'  # lines 7-9
    b"4,s05,30,\r\n"  # line 10
)


def test_quoted_newlines_are_chunked_by_record_at_stable_boundaries(tmp_path: Path) -> None:
    (tmp_path / "input.csv").write_bytes(RECORDS)
    schema = 'schema={row="int", celsius="float"}'
    assert pipeline.run(config(tmp_path, 2, schema)) == "finished"
    with (tmp_path / "input.csv").open(newline="") as handle:
        expected = list(csv.DictReader(handle))
    written: list[dict[str, str]] = []
    for part in sorted((tmp_path / "out").glob("part-*.csv")):
        with part.open(newline="") as handle:
            written += csv.DictReader(handle)
    assert [(r["row"], r["sensor"], r["note"]) for r in written] == [
        (r["row"], r["sensor"], r["note"]) for r in expected
    ]
    assert [float(r["celsius"]) for r in written] == [float(r["celsius"]) for r in expected]

    with contextlib.closing(sqlite3.connect(tmp_path / "manifest.sqlite")) as db:
        plan = db.execute(
            "SELECT start_offset, end_offset, rows, first_line FROM chunks ORDER BY id"
        ).fetchall()
    assert [(rows, line) for _, _, rows, line in plan] == [(2, 2), (2, 5), (1, 10)]
    for begin, end, rows, line in plan:
        # Each byte range holds whole records: the csv module alone finds them there.
        alone = [r for r in csv.reader(io.StringIO(RECORDS[begin:end].decode(), newline="")) if r]
        assert len(alone) == rows
        assert RECORDS[:begin].count(b"\n") + 1 == line
    # Planned again from scratch, the boundaries are the same.
    again = config(tmp_path, 2, schema, 'manifest="' + str(tmp_path / "again.sqlite") + '"')
    with contextlib.closing(pipeline.connect(Path(again.manifest))) as db:
        pipeline.plan(db, tmp_path / "input.csv", 2, again.schema)
        replan = db.execute(
            "SELECT start_offset, end_offset, rows, first_line FROM chunks ORDER BY id"
        ).fetchall()
    assert replan == plan


def test_a_bad_row_stops_the_run_before_any_work_with_its_line(tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    source.write_bytes(b'row,sensor,celsius\n0,"s01\nnote",20.5\n1,s02,21\n2,s03,warm\n3,s04,1\n')
    done = subprocess.run(
        [sys.executable, str(PROJECT / "pipeline.py"),
         *settings(tmp_path, 2, 'schema={row="int", celsius="float"}')],
        capture_output=True, text=True, timeout=WATCHDOG_S, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == f"{source}:5: column 'celsius': 'warm' is not a float\n"
    assert done.stdout == ""
    assert chunks(tmp_path) == {}
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b'row,sensor,celsius\n0,"s\n01",1\n1,s02\n', 4, "2 field(s), the header has 3"),
        (b"row,sensor,celsius\n0,s01,1\n1,s02,2,9\n", 3, "4 field(s), the header has 3"),
        (b'row,sensor,celsius\n0,s01,1\n1,"s02,2\n', 3, "not valid CSV (unexpected end of data)"),
        (b"row,sensor,celsius\n1.5,s01,1\n", 2, "column 'row': '1.5' is not an int"),
        (b"row,sensor\n1,s01\n", 1, "the header has no column 'celsius', which [pipeline.s"),
    ],
)
def test_the_schema_check_names_the_line_in_one_line(
    tmp_path: Path, data: bytes, line: int, message: str
) -> None:
    (tmp_path / "input.csv").write_bytes(data)
    with pytest.raises(SystemExit) as refused:
        pipeline.run(config(tmp_path, 2, 'schema={row="int", celsius="float"}'))
    assert str(refused.value).startswith(f"{tmp_path / 'input.csv'}:{line}: {message}")
    assert "\n" not in str(refused.value)
    assert chunks(tmp_path) == {}


def test_parquet_output_holds_every_row_once_with_the_schema_types(tmp_path: Path) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 1050)
    cfg = config(tmp_path, 100, 'output_format="parquet"')
    assert pipeline.run(cfg) == "finished"
    parts = sorted((tmp_path / "out").glob("part-*"))
    assert [part.name for part in parts] == [f"part-{i:05d}.parquet" for i in range(11)]
    table = pa.concat_tables([pq.read_table(part) for part in parts])
    assert table.column("row").to_pylist() == [int(row) for row in input_rows(tmp_path)]
    assert table.column("note").to_pylist() == input_rows(tmp_path, "note")
    types = {name: str(table.schema.field(name).type) for name in table.column_names}
    assert types == {
        "row": "int64", "timestamp": "int64", "sensor": "string", "celsius": "double",
        "note": "string", "fahrenheit": "double", "anomaly": "int64",
    }  # fmt: skip
    celsius = table.column("celsius").to_pylist()
    fahrenheit = table.column("fahrenheit").to_pylist()
    assert fahrenheit == pytest.approx([c * 9 / 5 + 32 for c in celsius], abs=0.01)
    first = chunks(tmp_path)
    assert pipeline.run(cfg) == "finished"
    assert chunks(tmp_path) == first


def test_csv_needs_no_pyarrow_and_parquet_without_it_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails from here on
    pipeline.write_synthetic_input(tmp_path / "input.csv", 300)
    with pytest.raises(SystemExit) as refused:
        pipeline.run(config(tmp_path, 100, 'output_format="parquet"'))
    assert str(refused.value).startswith('output_format = "parquet" needs pyarrow: pip install')
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "manifest.sqlite").exists()
    assert pipeline.run(config(tmp_path, 100)) == "finished"
    assert output_rows(tmp_path) == input_rows(tmp_path)


def test_killed_mid_run_and_restarted_every_chunk_is_processed_exactly_once(
    tmp_path: Path,
) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 30_000)
    proc = start(tmp_path, 100)
    stop_after(proc, 5, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = chunks(tmp_path)
    finished = {cid: row for cid, row in before.items() if row.status == "done"}
    assert 5 <= len(finished) < len(before)

    again = subprocess.run(
        [sys.executable, str(PROJECT / "pipeline.py"), *settings(tmp_path, 100)],
        capture_output=True, text=True, timeout=WATCHDOG_S, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    after = chunks(tmp_path)
    assert {chunk.status for chunk in after.values()} == {"done"}
    # No finished chunk was redone: same attempt count, same commit time.
    assert all(after[cid] == row for cid, row in finished.items())
    redone = {cid for cid in after if f"chunk {cid} done" in again.stdout}
    assert redone == set(after) - set(finished)
    # Only the chunk in flight at the kill can have been started twice.
    assert sum(chunk.attempts for chunk in after.values()) <= len(after) + 1
    # Every input row is in the output exactly once, and no partial file is left.
    assert output_rows(tmp_path) == input_rows(tmp_path)
    assert not list((tmp_path / "out").glob(".*partial"))


def test_two_workers_share_the_chunks_and_one_killed_with_sigkill_repeats_nothing(
    tmp_path: Path,
) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 30_000)
    proc = start(tmp_path, 100, "workers=2")
    pids: list[int] = []

    def kill_one(lines: list[str]) -> bool:
        started = re.search(r"^started 2 workers: pids (\d+) (\d+)$", "".join(lines), re.M)
        if started is None:
            return False
        pids[:] = [int(started[1]), int(started[2])]
        if min(done_lines(lines, pid) for pid in pids) < 3:
            return False
        os.kill(pids[0], signal.SIGKILL)
        return True

    output = follow(proc, kill_one)
    killed, survivor = pids
    assert proc.returncode == 0, output
    assert output.splitlines()[-1] == "finished: 300/300 chunks"
    state = chunks(tmp_path)
    assert {chunk.status for chunk in state.values()} == {"done"}
    # Each chunk was committed once, by one of the two workers, and both did some.
    committed = [int(cid) for cid in re.findall(r"^worker \d+: chunk (\d+) done$", output, re.M)]
    assert sorted(committed) == sorted(state)
    owners = {chunk.owner.rpartition(":")[2] for chunk in state.values() if chunk.owner}
    assert owners == {str(killed), str(survivor)}
    # At most the chunk the killed worker held was started twice; the survivor took it over.
    twice = [cid for cid, chunk in state.items() if chunk.attempts > 1]
    assert len(twice) <= 1
    for cid in twice:
        assert state[cid].attempts == 2
        assert f"worker {survivor}: chunk {cid}: taking over from " in output
        assert str(state[cid].owner).endswith(f":{survivor}")
    assert output_rows(tmp_path) == input_rows(tmp_path)
    assert not list((tmp_path / "out").glob(".*partial"))


# A worker that leases a chunk and hangs (alive, its lease no longer renewed); told to go on,
# it tries to finish the chunk.
HUNG = """
import sys
from pathlib import Path
sys.path.insert(0, {project!r})
import pipeline
cfg = pipeline.load_config(None, {overrides!r})
source = pipeline.prepare(cfg)
db = pipeline.connect(Path(cfg.manifest))
lease = pipeline.acquire(db, pipeline.worker_id(), cfg.lease_s)
print(lease.chunk, flush=True)
sys.stdin.readline()
print("committed" if pipeline.process(cfg, db, source, lease) else "refused", flush=True)
"""


def test_a_hung_workers_lease_expires_is_taken_over_and_its_late_commit_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 500)
    overrides = settings(tmp_path, 100, "lease_s=1")[1::2]
    hung = subprocess.Popen(
        [sys.executable, "-c", HUNG.format(project=str(PROJECT), overrides=overrides)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hung.stdout is not None and hung.stdin is not None
        held = int(hung.stdout.readline())
        assert pipeline.run(config(tmp_path, 100, "lease_s=1")) == "finished"
        said = capsys.readouterr().out
        assert f"chunk {held}: taking over from {socket.gethostname()}:{hung.pid}" in said
        state = chunks(tmp_path)
        assert state[held].attempts == 2
        assert state[held].owner == pipeline.worker_id()
        assert {chunk.status for chunk in state.values()} == {"done"}
        hung.stdin.write("go on\n")
        hung.stdin.flush()
        assert hung.stdout.readline() == "refused\n"
    finally:
        hung.kill()
        hung.communicate()
    assert chunks(tmp_path) == state
    assert output_rows(tmp_path) == input_rows(tmp_path)
    assert not list((tmp_path / "out").glob(".*partial"))


def test_a_working_worker_renews_its_lease(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 300)
    cfg = config(tmp_path, 100, "lease_s=0.6")
    pipeline.prepare(cfg)
    db = pipeline.connect(Path(cfg.manifest))
    request.addfinalizer(db.close)
    # Workers of other machines: only the expiry of their leases tells they are gone.
    mine = pipeline.acquire(db, "elsewhere:1", cfg.lease_s)
    assert mine is not None
    with pipeline.Heartbeat(Path(cfg.manifest), mine, cfg.lease_s):
        time.sleep(1.3)  # two leases long: renewed every 0.2 s
        other = pipeline.acquire(db, "elsewhere:2", cfg.lease_s)
        assert other is not None and other.chunk != mine.chunk
    time.sleep(0.7)
    late = pipeline.acquire(db, "elsewhere:3", cfg.lease_s)
    assert late is not None
    assert (late.chunk, late.taken_from) == (mine.chunk, "elsewhere:1")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_to_the_registered_workers_pauses_between_chunks_with_85(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """harchos's side of a pause, as for training: signal the pids registered under
    `$HARCHOS_CONTROL_DIR/workers/`, and read their `.paused` files."""
    pipeline.write_synthetic_input(tmp_path / "input.csv", 20_000)
    control = tmp_path / "control"
    proc = start(tmp_path, 100, f"workers={workers}", env={"HARCHOS_CONTROL_DIR": str(control)})
    registered: list[int] = []

    def pause(lines: list[str]) -> bool:
        folder = control / "workers"
        pids = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if (
            folder.is_dir()) else []  # fmt: skip
        if len(pids) < workers or done_lines(lines) < 3:
            return False
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        registered[:] = pids
        return True

    output = follow(proc, pause)
    assert proc.returncode == pipeline.PAUSED_EXIT_CODE, output
    assert "finished:" not in output
    assert "paused" in output
    if workers == 1:
        assert registered == [proc.pid]
    else:  # the workers register, not the process that started them
        assert len(registered) == 2 and proc.pid not in registered
    paused = chunks(tmp_path)
    # A pause never leaves a chunk half done.
    assert {chunk.status for chunk in paused.values()} == {"done", "pending"}
    done = sum(chunk.status == "done" for chunk in paused.values())
    for pid in registered:
        confirmed = json.loads((control / "workers" / f"{pid}.paused").read_text())
        assert confirmed["checkpoint"] == str(tmp_path / "manifest.sqlite")
        assert 3 <= confirmed["step"] <= done

    monkeypatch.delenv("HARCHOS_CONTROL_DIR", raising=False)
    assert pipeline.main(settings(tmp_path, 100)) == 0
    after = chunks(tmp_path)
    assert all(chunk.status == "done" and chunk.attempts == 1 for chunk in after.values())
    assert output_rows(tmp_path) == input_rows(tmp_path)


def test_a_finished_run_is_a_no_op_and_a_changed_input_is_refused(tmp_path: Path) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 300)
    cfg = config(tmp_path, 100)
    assert pipeline.run(cfg) == "finished"
    first = chunks(tmp_path)
    assert pipeline.run(cfg) == "finished"
    assert chunks(tmp_path) == first
    pipeline.write_synthetic_input(tmp_path / "input.csv", 300, seed=8)
    with pytest.raises(SystemExit, match="changed since it was split"):
        pipeline.run(cfg)


# The manifest of the blueprint's first version: no lines, no leases.
FIRST_SCHEMA = """
CREATE TABLE input (path TEXT NOT NULL, sha256 TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL, rows INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, output TEXT, finished_at REAL);
"""


def test_a_manifest_of_the_first_version_carries_on(tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [["row", "celsius"], *([i, f"{i / 10:.1f}"] for i in range(250))]
        )
    with source.open("rb") as handle:  # its plan: 100 lines a chunk
        ends = [0, *(handle.tell() for _ in iter(handle.readline, b""))]
    cuts = [ends[1], ends[101], ends[201], ends[251]]
    with contextlib.closing(sqlite3.connect(tmp_path / "manifest.sqlite")) as db:
        db.executescript(FIRST_SCHEMA)
        db.execute("INSERT INTO input VALUES (?, ?, 250)", (str(source), pipeline.sha256(source)))
        db.executemany(  # chunk 1 was in hand when that version was killed
            "INSERT INTO chunks (id, start_offset, end_offset, rows, status, attempts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(0, cuts[0], cuts[1], 100, "pending", 0), (1, cuts[1], cuts[2], 100, "running", 1),
             (2, cuts[2], cuts[3], 50, "pending", 0)],
        )  # fmt: skip
        db.commit()
    assert pipeline.run(config(tmp_path, 100, "schema={}")) == "finished"
    assert output_rows(tmp_path) == input_rows(tmp_path)
    assert [chunk.attempts for _, chunk in sorted(chunks(tmp_path).items())] == [1, 2, 1]
