"""The training blueprints render with defaults and pass their own test suites.

The generated tests run real training on the CPU (one process, and two over gloo) with this venv's
torch and accelerate, and interrupt it with real signals.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from harchos_cli import blueprints


def render_and_test(name: str, dest: Path) -> str:
    blueprints.create(name, dest, defaults=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_pytorch_training_passes_its_own_tests(tmp_path: Path) -> None:
    out = render_and_test("pytorch-training", tmp_path / "demo")
    assert "5 passed" in out


@pytest.mark.slow
def test_multi_region_training_passes_its_own_tests(tmp_path: Path) -> None:
    out = render_and_test("multi-region-training", tmp_path / "fleet")
    assert " passed" in out
    assert "failed" not in out


def test_the_training_blueprints_share_one_train_py() -> None:
    single = REPO / "blueprints" / "pytorch-training" / "template" / "train.py.jinja"
    multi = REPO / "blueprints" / "multi-region-training" / "template" / "train.py.jinja"
    assert single.read_text() == multi.read_text()
