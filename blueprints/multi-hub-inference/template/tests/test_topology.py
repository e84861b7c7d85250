"""harchos.toml's hubs and the replicas [serve] asks for: valid, and bad layouts refused."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT

import topology
from serve import ConfigError


def test_the_project_layout_is_valid() -> None:
    layout = topology.load(ROOT / "harchos.toml", environ={})
    assert len(layout.hubs) >= 2
    assert len({hub.region for hub in layout.hubs.values()}) == len(layout.hubs)
    assert [hub.name for hub in layout.candidates()] == list(layout.hubs)
    assert layout.serve.replicas <= len(layout.slots())
    assert layout.serve.latency_budget_ms > 0
    assert topology.unknown_regions(layout) == []


def test_check_and_commands() -> None:
    layout = topology.load(ROOT / "harchos.toml", environ={})
    env = {k: v for k, v in os.environ.items() if k != "HARCHOS_VLLM_COMMAND"}  # the real vllm
    done = subprocess.run(
        [sys.executable, "topology.py", "check"], cwd=ROOT, capture_output=True, text=True,
        check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(layout.hubs)
    assert lines[-1].startswith(f"{layout.serve.replicas} replica(s)")
    done = subprocess.run(
        [sys.executable, "topology.py", "commands"], cwd=ROOT, capture_output=True, text=True,
        check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == len(layout.slots())
    for line, slot in zip(commands, layout.slots(), strict=True):
        assert line.startswith(f"vllm serve {layout.serve.model} ")
        assert f"--port {slot.port} " in line


def _edit(data: dict[str, Any], change: str) -> None:
    first_hub = next(iter(data["hubs"]))
    if change == "unknown hub":
        data["serve"]["hubs"] = [first_hub, "atlantis"]
    elif change == "no hubs":
        data["serve"]["hubs"] = []
    elif change == "too few gpus":
        for hub in data["hubs"].values():
            hub["gpus"] = 0
    elif change == "too many replicas":
        data["serve"]["replicas"] = 99
    elif change == "transport":
        data["hubs"][first_hub]["transport"] = "carrier-pigeon"
    elif change == "no region":
        del data["hubs"][first_hub]["region"]
    elif change == "replicas":
        data["serve"]["replicas"] = 0


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ("unknown hub", "atlantis, not in \\[hubs\\]"),
        ("no hubs", "hubs is empty"),
        ("too few gpus", "the hubs hold 0"),
        ("too many replicas", "replicas = 99"),
        ("transport", "transport"),
        ("no region", "needs a region"),
        ("replicas", "replicas must be at least 1"),
    ],
)
def test_bad_layouts_are_refused(project_data: dict[str, Any], change: str, complaint: str) -> None:
    _edit(project_data, change)
    with pytest.raises(ConfigError, match=complaint):
        topology.parse(project_data)


def test_an_unknown_region_is_reported_with_a_hint(project_data: dict[str, Any]) -> None:
    first_hub = next(iter(project_data["hubs"]))
    project_data["hubs"][first_hub]["region"] = "eu-wset"
    problems = topology.unknown_regions(topology.parse(project_data))
    assert len(problems) == 1
    assert "did you mean: eu-west" in problems[0]
