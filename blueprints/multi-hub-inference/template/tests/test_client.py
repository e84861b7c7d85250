"""Replicas started from the layout's own commands, played by harchos's vLLM test double."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import API_KEY, ROOT

import client
import topology
from serve import TEST_DOUBLE


def two_free_ports() -> int:
    """A port p such that p and p + 1 are both free."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _local_layout(path: Path, data: dict[str, Any], port: int) -> Path:
    """The project's harchos.toml with two local hubs of two replica slots each."""
    serve = {**data["serve"], "host": "127.0.0.1", "port": port, "replicas": 3,
             "hubs": ["h0", "h1"]}  # fmt: skip
    lines = ["[serve]", *(f"{key} = {_toml(value)}" for key, value in serve.items())]
    for name in ("h0", "h1"):
        gpus = 2 * data["serve"]["tensor_parallel_size"]
        lines += [f"[hubs.{name}]", 'transport = "local"', 'region = "eu-north"', f"gpus = {gpus}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_printed_commands_start_working_replicas(
    start_replica: Callable[[list[str]], None],
    double_env: dict[str, str],
    project_data: dict[str, Any],
    tmp_path: Path,
) -> None:
    port = two_free_ports()
    config = _local_layout(tmp_path / "harchos.toml", project_data, port)
    done = subprocess.run(
        [sys.executable, str(ROOT / "topology.py"), "commands", "--config", str(config)],
        capture_output=True, text=True, check=False, env=double_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if not line.startswith("#")]
    # A hub's replicas count up from [serve] port; with $HARCHOS_VLLM_COMMAND, the test double.
    assert [c[c.index("--port") + 1] for c in commands] == [str(port), str(port + 1)] * 2
    assert all(c[:4] == [*shlex.split(TEST_DOUBLE), "serve"] for c in commands)
    # Both hubs are this machine here, so start the first hub's two replicas and talk to each.
    model = project_data["serve"]["served_model_name"]
    messages = [{"role": "user", "content": "Which region is greenest now?"}]
    slots = topology.load(config, environ={}).slots()
    for command, slot in zip(commands[:2], slots[:2], strict=True):
        start_replica(command)
        with client.make_client(slot.url, API_KEY) as http:
            reply = client.chat(http, model, messages, max_tokens=6)
            pieces = list(client.stream_chat(http, model, messages, 6))
        assert len(reply.split()) == 6
        assert "".join(pieces) == reply
