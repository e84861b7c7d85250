"""harchos.toml's hubs, replicas and router settings are valid, and bad ones are refused."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT

import topology
from serve import ConfigError


def test_the_project_layout_is_valid() -> None:
    layout = topology.load(ROOT / "harchos.toml")
    assert len(layout.hubs) >= 2
    assert len({hub.region for hub in layout.hubs.values()}) == len(layout.hubs)
    assert {r.hub for r in layout.replicas} == set(layout.hubs)
    assert layout.router.carbon_policy in topology.POLICIES
    assert layout.router.latency_budget_ms > 0
    assert topology.unknown_regions(layout) == []


def test_check_and_commands(tmp_path: Any) -> None:
    layout = topology.load(ROOT / "harchos.toml")
    done = subprocess.run(
        [sys.executable, "topology.py", "check"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [r.id for r in layout.replicas]
    done = subprocess.run(
        [sys.executable, "topology.py", "commands"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    commands = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == len(layout.replicas)
    for line, replica in zip(commands, layout.replicas, strict=True):
        assert line.startswith(f"vllm serve {layout.serve.model} ")
        assert f"--port {replica.port} " in line


def _edit(data: dict[str, Any], change: str) -> None:
    first_hub = next(iter(data["hubs"]))
    if change == "unknown hub":
        data["replicas"][0]["hub"] = "atlantis"
    elif change == "same port twice":
        data["replicas"].append(dict(data["replicas"][0]))
        data["hubs"][data["replicas"][0]["hub"]]["gpus"] = 64
    elif change == "policy":
        data["router"]["carbon_policy"] = "cheapest"
    elif change == "budget":
        data["router"]["latency_budget_ms"] = 0
    elif change == "too few gpus":
        data["hubs"][first_hub]["gpus"] = 0
    elif change == "no replicas":
        data["replicas"] = []
    elif change == "retries":
        data["router"]["failover"]["retries"] = -1
    elif change == "transport":
        data["hubs"][first_hub]["transport"] = "carrier-pigeon"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ("unknown hub", "not in \\[hubs\\]"),
        ("same port twice", "use port"),
        ("policy", "carbon_policy"),
        ("budget", "latency_budget_ms"),
        ("too few gpus", "GPUs"),
        ("no replicas", "replicas"),
        ("retries", "retries"),
        ("transport", "transport"),
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
