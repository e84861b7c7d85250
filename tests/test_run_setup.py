"""A project's `setup` command runs once per hub and project content, not on every run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from clirunner import harchos


def run_once(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "run", "batch", "--hub", "local", "--json", "--", sys.executable, "-V")
    assert result.code == 0, result.err


def test_setup_runs_once_per_content_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "harchos.toml").write_text('[job]\nkind = "batch"\nsetup = "echo setup >> setup.log"\n')
    # setup.log is the setup's own output, not project content.
    (root / ".gitignore").write_text("setup.log\n")
    (root / "requirements.txt").write_text("numpy\n")
    os.chdir(root)

    run_once(capsys)
    run_once(capsys)
    assert (root / "setup.log").read_text().splitlines() == ["setup"]

    (root / "requirements.txt").write_text("numpy\nhttpx\n")
    run_once(capsys)
    run_once(capsys)
    assert (root / "setup.log").read_text().splitlines() == ["setup", "setup"]
