"""Shared fixtures: every test gets its own HARCHOS_HOME and a quiet, fixed-width terminal."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpfake import FakeServer
from slurm import slurm_cluster_fixture, slurm_pair_fixture  # noqa: F401  (offer the clusters)

REPO = Path(__file__).resolve().parent.parent


def traces_dir() -> Path:
    """The shared real traces (beside the checkout in development and CI)."""
    return Path(os.environ.get("HARCHOS_TRACES", REPO.parent / "shared" / "traces"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "harchos-home"
    monkeypatch.setenv("HARCHOS_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TZ", "UTC")
    for name in (
        "ELECTRICITYMAPS_API_TOKEN",
        "WATTTIME_USER",
        "WATTTIME_PASSWORD",
        "ENTSOE_SECURITY_TOKEN",
        "HARCHOS_ENTSOE_URL",
        "HARCHOS_PROVIDER",
        "HARCHOS_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    # A project harchos.toml above the test's cwd must not leak in.
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A real HTTP server on 127.0.0.1 serving registered routes (see httpfake)."""
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def traces() -> Path:
    path = traces_dir()
    if not path.is_dir():
        pytest.fail(
            f"the shared traces are missing at {path}; set HARCHOS_TRACES (the README says "
            "where to get them)"
        )
    return path
