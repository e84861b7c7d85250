"""The data-pipeline blueprint renders, passes its own tests (real SIGKILL, two workers, pauses),
and harchos pauses a running pipeline through dirty hours with the training blueprints' contract."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli import blueprints
from harchos_cli.jobs.store import log_path


def test_data_pipeline_passes_its_own_tests(tmp_path: Path) -> None:
    project = blueprints.create(
        "data-pipeline", tmp_path / "etl", defaults=True, data={"chunk_rows": "250"}
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"18 passed in [0-9.]+s( \([0-9:]+\))?", summary), summary
    settings = tomllib.loads((project / "pipeline.toml").read_text())["pipeline"]
    assert settings["chunk_rows"] == 250
    assert (settings["output_format"], settings["workers"]) == ("csv", 1)
    job = tomllib.loads((project / "harchos.toml").read_text())["job"]
    assert job["command"] == "python pipeline.py"
    assert job["pause_exit_code"] == 85
    assert "pyarrow" in (project / "requirements.txt").read_text()


def test_the_default_pipeline_runs_to_the_end_and_reports(tmp_path: Path) -> None:
    project = blueprints.create("data-pipeline", tmp_path / "etl", defaults=True)
    first = subprocess.run(
        [sys.executable, "pipeline.py"], cwd=project, capture_output=True, text=True, check=True
    )
    assert first.stdout.strip().splitlines()[-1] == "finished: 40/40 chunks"
    status = subprocess.run(
        [sys.executable, "pipeline.py", "status"],
        cwd=project, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert status.stdout.strip() == '{"pending": 0, "running": 0, "done": 40}'
    assert len(list((project / "out").glob("part-*.csv"))) == 40
    # The README's first screen says how to run it locally, on a hub, and green.
    first_screen = "\n".join((project / "README.md").read_text().splitlines()[:30])
    for words in ("python pipeline.py", "harchos run batch --hub", "--interruptible",
                  "--defer-until-green", "harchos jobs pause"):  # fmt: skip
        assert words in first_screen, words


def test_parquet_and_two_workers_are_questions(tmp_path: Path) -> None:
    project = blueprints.create(
        "data-pipeline", tmp_path / "etl", defaults=True,
        data={"output_format": "parquet", "workers": "2"},
    )  # fmt: skip
    settings = tomllib.loads((project / "pipeline.toml").read_text())["pipeline"]
    assert (settings["output_format"], settings["workers"]) == ("parquet", 2)


def test_harchos_pauses_the_pipelines_workers_through_dirty_hours_and_nothing_is_redone(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = blueprints.create("data-pipeline", tmp_path / "etl", defaults=True,
                                data={"workers": "2", "region": "DE"})  # fmt: skip
    # Each chunk takes a while, as real work does, so the job still runs at harchos's first look.
    script = project / "pipeline.py"
    slow = script.read_text().replace("    out = []\n", "    time.sleep(0.06)\n    out = []\n", 1)
    assert slow != script.read_text()
    script.write_text(slow)
    monkeypatch.chdir(project)
    # Germany on 2022-03-01: 543 g at 03:00, greenest at 10-11. At 7200x a clock hour is half a
    # second; the 40 chunks on two workers (about a second) are the job's 2 hours.
    result = harchos(
        capsys, "run", "batch", "--interruptible", "--duration", "2h", "--deadline", "10h",
        "--provider", f"replay:{traces / 'eco4cast' / 'DE_2022_hourly.csv'}",
        "--at", "2022-03-01T03:00:00Z", "--speedup", "7200", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["state"] == "done", data
    assert data["attempt"] >= 2
    shown = harchos(capsys, "jobs", "show", data["job_id"], "--json").json()
    actions = [d["action"] for d in shown["decisions"]]
    assert actions[:3] == ["plan", "start", "auto-pause"]
    assert "resume" in actions[3:]
    # harchos signalled both registered workers; each committed its chunk in hand and stopped.
    log = log_path(data["job_id"]).read_text()
    assert log.count("received SIGUSR1: stopping after this chunk") == 2, log
    assert re.search(r"^paused: \d+/40 chunks done, every one committed$", log, re.M), log
    with sqlite3.connect(project / "manifest.sqlite") as db:
        rows = db.execute("SELECT status, attempts FROM chunks").fetchall()
    assert rows == [("done", 1)] * 40  # no chunk was started twice
    assert log.strip().splitlines()[-1] == "finished: 40/40 chunks"
