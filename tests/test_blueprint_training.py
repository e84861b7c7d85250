"""The training blueprints render with defaults and pass their own test suites.

The generated tests run real training on the CPU (one process, and two over gloo) with this venv's
torch and accelerate, and interrupt it with real signals.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from harchos_cli import blueprints
from harchos_cli.errors import UsageError


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
    assert "9 passed" in out


@pytest.mark.slow
def test_multi_region_training_passes_its_own_tests(tmp_path: Path) -> None:
    out = render_and_test("multi-region-training", tmp_path / "fleet")
    assert " passed" in out
    assert "failed" not in out


def test_the_training_blueprints_share_one_train_py() -> None:
    single = REPO / "blueprints" / "pytorch-training" / "template" / "train.py.jinja"
    multi = REPO / "blueprints" / "multi-region-training" / "template" / "train.py.jinja"
    assert single.read_text() == multi.read_text()


def test_multi_region_training_runs_on_the_gpus_of_a_hub(tmp_path: Path) -> None:
    project = blueprints.create("multi-region-training", tmp_path / "fleet", defaults=True)
    job = tomllib.loads((project / "harchos.toml").read_text())["job"]
    # Without [job] gpus, harchos would launch the training on a GPU hub's CPU.
    assert job["gpus"] >= 1
    assert job["gpus"] == job["max_processes"]
    batch = tomllib.loads((project / "train.toml").read_text())["train"]["batch_size"]
    assert all(batch % n == 0 for n in range(job["min_processes"], job["max_processes"] + 1))


def test_multi_region_training_refuses_more_processes_than_a_hub_has(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must be at most gpus_per_hub"):
        blueprints.create(
            "multi-region-training", tmp_path / "fleet", defaults=True,
            data={"gpus_per_hub": "2", "max_processes": "4"},
        )  # fmt: skip
    assert not (tmp_path / "fleet").exists()
