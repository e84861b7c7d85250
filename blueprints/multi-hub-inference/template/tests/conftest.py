"""Fixtures: the project's harchos.toml, and harchos's vLLM test double standing in for replicas.

The test double (`python -m harchos_cli.testing.vllm_double`) is not vLLM: it answers the same
OpenAI-compatible API with fake, deterministic text, so these tests run on any laptop.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from client import wait_ready
from serve import double_command, server_env
from topology import load

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


@pytest.fixture(scope="session")
def start_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], int]]:
    """Start a test double with the project's [serve] settings; returns its port."""
    settings = load(ROOT / "harchos.toml").serve
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        port = free_port()
        command = double_command(replace(settings, host="127.0.0.1", port=port))
        env = server_env(settings, {**os.environ, settings.api_key_env: API_KEY})
        log = tmp_path_factory.mktemp("replica") / "replica.log"
        with log.open("wb") as err:
            procs.append(subprocess.Popen(command, env=env, stderr=err))
        wait_ready(f"http://127.0.0.1:{port}/v1", timeout=30, interval=0.05)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
