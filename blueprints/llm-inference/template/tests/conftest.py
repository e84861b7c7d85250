"""Fixtures: the project's settings, and harchos's vLLM test double serving them on loopback.

The test double (`python -m harchos_cli.testing.vllm_double`) is not vLLM: it answers the same
OpenAI-compatible API with fake, deterministic text, so these tests run on any laptop.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from client import wait_ready
from serve import ServeSettings, double_command, load_settings, server_env

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def settings() -> ServeSettings:
    return load_settings(ROOT / "harchos.toml")


@pytest.fixture(scope="session")
def start_server(
    settings: ServeSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """Start a test double with the project's settings; returns its API base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> str:
        port = free_port()
        command = double_command(replace(settings, host="127.0.0.1", port=port))
        env = server_env(settings, {**os.environ, settings.api_key_env: API_KEY})
        log = tmp_path_factory.mktemp("server") / "server.log"
        with log.open("wb") as err:
            procs.append(subprocess.Popen([*command, *extra], env=env, stderr=err))
        url = f"http://127.0.0.1:{port}/v1"
        wait_ready(url, timeout=30, interval=0.05)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(start_server: Callable[..., str]) -> str:
    """One shared server; a token every millisecond, so requests overlap in the load test."""
    return start_server("--token-delay", "0.001")
