"""The client against replicas played by harchos's vLLM test double; picking a ready replica."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import API_KEY, ROOT, free_port

import client
import topology


def _two_hub_config(path: Path, ports: list[int]) -> Path:
    """The project's harchos.toml with its hubs and replicas swapped for local ones."""
    text = (ROOT / "harchos.toml").read_text(encoding="utf-8")
    serve = text[text.index("[serve]") : text.index("[hubs.")]
    router = text[text.index("[router]") :]
    hubs = "".join(
        f'[hubs.h{i}]\ntransport = "local"\nregion = "eu-north"\ngpus = 8\n\n'
        f'[[replicas]]\nhub = "h{i}"\nport = {port}\n\n'
        for i, port in enumerate(ports)
    )
    path.write_text(serve + hubs + router, encoding="utf-8")
    return path


def test_chat_with_a_replica(start_replica: Callable[[], int]) -> None:
    layout = topology.load(ROOT / "harchos.toml")
    url = f"http://127.0.0.1:{start_replica()}/v1"
    messages = [{"role": "user", "content": "Which region is greenest now?"}]
    with client.make_client(url, API_KEY) as http:
        reply = client.chat(http, layout.serve.served_model_name, messages, max_tokens=6)
        pieces = list(client.stream_chat(http, layout.serve.served_model_name, messages, 6))
    assert len(reply.split()) == 6
    assert "".join(pieces) == reply


def test_pick_skips_starting_and_dead_replicas(
    start_replica: Callable[[], int], tmp_path: Path
) -> None:
    closed, first, second = free_port(), start_replica(), start_replica()
    config = _two_hub_config(tmp_path / "harchos.toml", [closed, first, second])
    layout = topology.load(config)
    urls = [layout.url(r) for r in layout.replicas]
    assert topology.first_ready(urls) == f"http://127.0.0.1:{first}/v1"

    httpx.post(f"http://127.0.0.1:{first}/debug/kill-engine")  # a test-double-only endpoint
    assert topology.first_ready(urls) == f"http://127.0.0.1:{second}/v1"
    done = subprocess.run(
        [sys.executable, str(ROOT / "topology.py"), "pick", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"http://127.0.0.1:{second}/v1"


def test_pick_fails_when_no_replica_is_ready(tmp_path: Path) -> None:
    config = _two_hub_config(tmp_path / "harchos.toml", [free_port(), free_port()])
    done = subprocess.run(
        [sys.executable, str(ROOT / "topology.py"), "pick", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no replica is ready" in done.stderr
