"""Training's launcher is checked before a job waits for its green window, not after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from test_run_local import new_project

from harchos_cli.jobs.store import JobStore


def test_a_project_whose_python_lacks_accelerate_is_refused_before_it_waits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = new_project(capsys, tmp_path)
    # The project's own environment (which harchos prefers on this machine) has no accelerate.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    os.chdir(root)
    waited = harchos(capsys, "run", "train", "--defer-until-green", "--deadline", "12h")
    assert waited.code == 2, waited.err
    assert "cannot import accelerate" in waited.err
    assert "pip install 'accelerate>=1.0'" in waited.err
    store = JobStore()
    try:
        assert store.list() == []  # nothing was queued to fail hours later
    finally:
        store.close()
    shown = harchos(capsys, "run", "train", "--dry-run", "--json")
    assert shown.code == 0, shown.err
    (problem,) = shown.json()["checks"]["launcher"]
    assert str(root / ".venv" / "bin" / "python") in problem
    text = harchos(capsys, "run", "train", "--dry-run")
    assert "check: " in text.out
    assert "a real run stops here" in text.out


def test_a_project_that_can_launch_passes_the_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.chdir(new_project(capsys, tmp_path))
    shown = harchos(capsys, "run", "train", "--dry-run", "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["checks"] == {"launcher": "ok"}
