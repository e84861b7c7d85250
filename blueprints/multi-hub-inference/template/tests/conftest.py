"""Fixtures: the project's harchos.toml, and harchos's vLLM test double standing in for replicas.

The test double (`python -m harchos_cli.testing.vllm_double`) is not vLLM: it answers the same
OpenAI-compatible API with fake, deterministic text, so these tests run on any laptop. A replica
is started the way harchos starts vLLM, with `$HARCHOS_VLLM_COMMAND` set to the test double.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import wait_ready
from serve import TEST_DOUBLE, VLLM_COMMAND_ENV

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def project_data() -> dict[str, Any]:
    """The project's harchos.toml as a dict, to edit in a test."""
    return tomllib.loads((ROOT / "harchos.toml").read_text(encoding="utf-8"))


@pytest.fixture
def double_env() -> dict[str, str]:
    """The environment harchos gives a replica, with the test double as `vllm`."""
    return {**os.environ, VLLM_COMMAND_ENV: TEST_DOUBLE, "VLLM_API_KEY": API_KEY}


@pytest.fixture
def start_replica(
    double_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[list[str]], None]]:
    """Run a replica's command line (as `topology.py commands` prints it) until it is ready."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(command: list[str]) -> None:
        port = command[command.index("--port") + 1]
        with (tmp_path / f"replica-{port}.log").open("wb") as err:
            procs.append(subprocess.Popen(command, env=double_env, stderr=err))
        wait_ready(f"http://127.0.0.1:{port}/v1", timeout=30, interval=0.05)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
