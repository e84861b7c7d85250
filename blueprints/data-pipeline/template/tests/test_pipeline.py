"""Every chunk is processed and committed exactly once, through crashes, kills and pauses."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pipeline
import pytest
from conftest import PROJECT

WATCHDOG_S = 300


def settings(folder: Path, chunk_rows: int) -> list[str]:
    values = {
        "input": folder / "input.csv",
        "output_dir": folder / "out",
        "manifest": folder / "manifest.sqlite",
    }
    args = [f'{key}="{value}"' for key, value in values.items()] + [f"chunk_rows={chunk_rows}"]
    return [word for arg in args for word in ("--set", arg)]


def config(folder: Path, chunk_rows: int) -> pipeline.PipelineConfig:
    return pipeline.load_config(None, settings(folder, chunk_rows)[1::2])


def chunks(folder: Path) -> dict[int, tuple[str, int, float | None]]:
    with sqlite3.connect(folder / "manifest.sqlite") as db:
        rows = db.execute("SELECT id, status, attempts, finished_at FROM chunks").fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def output_rows(folder: Path) -> list[str]:
    rows: list[str] = []
    for part in sorted((folder / "out").glob("part-*.csv")):
        with part.open(newline="") as handle:
            rows += [row["row"] for row in csv.DictReader(handle)]
    return rows


def input_rows(folder: Path) -> list[str]:
    with (folder / "input.csv").open(newline="") as handle:
        return [row["row"] for row in csv.DictReader(handle)]


def start(folder: Path, chunk_rows: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "pipeline.py"), *settings(folder, chunk_rows)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_after(proc: subprocess.Popen[str], done_lines: int, signum: signal.Signals) -> str:
    """Send `signum` once the run has committed `done_lines` chunks; return its output."""
    watchdog = threading.Timer(WATCHDOG_S, proc.kill)
    watchdog.start()
    lines: list[str] = []
    sent = False
    try:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if not sent and sum(seen.endswith(" done\n") for seen in lines) == done_lines:
                os.kill(proc.pid, signum)
                sent = True
        proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    assert sent, output
    assert "finished:" not in output, "the run ended before it could be stopped"
    return output


def test_every_row_is_transformed_once(tmp_path: Path) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 1050)
    assert pipeline.run(config(tmp_path, 100)) == "finished"
    assert output_rows(tmp_path) == input_rows(tmp_path)
    state = chunks(tmp_path)
    assert len(state) == 11
    assert {status for status, _, _ in state.values()} == {"done"}
    with (tmp_path / "out" / "part-00000.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))
    assert float(first["fahrenheit"]) == pytest.approx(
        float(first["celsius"]) * 9 / 5 + 32, abs=0.01
    )


def test_killed_mid_run_and_restarted_every_chunk_is_processed_exactly_once(
    tmp_path: Path,
) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 100_000)
    proc = start(tmp_path, 100)
    stop_after(proc, 5, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = chunks(tmp_path)
    finished = {cid: row for cid, row in before.items() if row[0] == "done"}
    assert 5 <= len(finished) < len(before)

    again = subprocess.run(
        [sys.executable, str(PROJECT / "pipeline.py"), *settings(tmp_path, 100)],
        capture_output=True, text=True, timeout=WATCHDOG_S, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    after = chunks(tmp_path)
    assert {status for status, _, _ in after.values()} == {"done"}
    # No finished chunk was redone: same attempt count, same commit time.
    assert all(after[cid] == row for cid, row in finished.items())
    redone = {cid for cid in after if f"chunk {cid} done" in again.stdout}
    assert redone == set(after) - set(finished)
    # Only the chunk in flight at the kill can have been started twice.
    assert sum(attempts for _, attempts, _ in after.values()) <= len(after) + 1
    # Every input row is in the output exactly once, and no partial file is left.
    assert output_rows(tmp_path) == input_rows(tmp_path)
    assert not list((tmp_path / "out").glob(".*partial"))


def test_sigusr1_pauses_between_chunks_with_85_and_the_next_run_carries_on(
    tmp_path: Path,
) -> None:
    pipeline.write_synthetic_input(tmp_path / "input.csv", 50_000)
    proc = start(tmp_path, 100)
    output = stop_after(proc, 3, signal.SIGUSR1)
    assert proc.returncode == pipeline.PAUSED_EXIT_CODE, output
    assert "paused" in output
    paused = chunks(tmp_path)
    # A pause never leaves a chunk half done.
    assert {status for status, _, _ in paused.values()} == {"done", "pending"}
    assert pipeline.main(settings(tmp_path, 100)) == 0
    after = chunks(tmp_path)
    assert all(status == "done" and attempts == 1 for status, attempts, _ in after.values())
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
