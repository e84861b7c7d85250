"""Fixtures: the project's settings, and harchos's vLLM test double serving them on loopback.

The test double (`python -m harchos_cli.testing.vllm_double`) is not vLLM: it answers the same
OpenAI-compatible API with fake, deterministic text, so these tests run on any laptop. It is
started the way vLLM is: `python serve.py` execs `$HARCHOS_VLLM_COMMAND serve MODEL ...`, the
command line harchos gives vLLM, with the API key in `VLLM_API_KEY`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import wait_ready
from serve import TEST_DOUBLE, VLLM_COMMAND_ENV, ServeSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def settings() -> ServeSettings:
    return load_settings(ROOT / "harchos.toml")


@pytest.fixture(scope="session")
def start_server(
    settings: ServeSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """Start `python serve.py` with the test double as vLLM; returns the API base URL. Arguments
    go on to `vllm serve` (after `--`)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> str:
        port = free_port()
        env = {**os.environ, settings.api_key_env: API_KEY, VLLM_COMMAND_ENV: TEST_DOUBLE}
        command = [sys.executable, str(ROOT / "serve.py"), "--config", str(ROOT / "harchos.toml"),
                   "--host", "127.0.0.1", "--port", str(port), "--", *extra]  # fmt: skip
        log = tmp_path_factory.mktemp("server") / "server.log"
        with log.open("wb") as err:
            procs.append(subprocess.Popen(command, env=env, stderr=err))
        url = f"http://127.0.0.1:{port}/v1"
        wait_ready(url, timeout=30, interval=0.05)
        return url

    yield start
    for proc in procs:  # all at once: each takes a moment to drain and stop
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(start_server: Callable[..., str]) -> str:
    """One shared server; a token every millisecond, so requests overlap in the load test."""
    return start_server("--token-delay", "0.001")
