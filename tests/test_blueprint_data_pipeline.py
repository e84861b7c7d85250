"""The data-pipeline blueprint renders with defaults and passes its own tests (real SIGKILL)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from harchos_cli import blueprints


def test_data_pipeline_passes_its_own_tests(tmp_path: Path) -> None:
    project = blueprints.create(
        "data-pipeline", tmp_path / "etl", defaults=True, data={"chunk_rows": "250"}
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout
    settings = tomllib.loads((project / "pipeline.toml").read_text())["pipeline"]
    assert settings["chunk_rows"] == 250
    job = tomllib.loads((project / "harchos.toml").read_text())["job"]
    assert job["command"] == "python pipeline.py"
    assert job["pause_exit_code"] == 85


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
