"""The serving blueprints render and pass their own tests against the vLLM test double.

The generated tests start `python -m harchos_cli.testing.vllm_double` (a test double, not vLLM)
on loopback and run the project's client, load test and replica picking against it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from harchos_cli import blueprints
from harchos_cli.errors import UsageError


def run_project_tests(dest: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    return done.stdout


def toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_llm_inference_passes_its_own_tests(tmp_path: Path) -> None:
    dest = blueprints.create("llm-inference", tmp_path / "chat-svc", defaults=True)
    assert not list(dest.rglob("*.jinja"))
    assert "# harchos blueprint: llm-inference" in (dest / ".copier-answers.yml").read_text()
    config = toml(dest / "harchos.toml")
    assert config["job"] == {"name": "chat-svc", "kind": "serve", "command": "python serve.py"}
    assert config["hubs"]["local"]["region"] == config["carbon"]["region"] == "eu-west"
    run_project_tests(dest)


def test_llm_inference_answers_make_the_vllm_command(tmp_path: Path) -> None:
    answers = {
        "model": "mistralai/Mistral-7B-Instruct-v0.3",
        "dtype": "bfloat16",
        "max_model_len": "16384",
        "gpu_memory_utilization": "0.8",
        "tensor_parallel_size": "2",
        "port": "8100",
        "shutdown_timeout": "60",
        "api_key_env": "MISTRAL_KEY",
    }
    dest = blueprints.create("llm-inference", tmp_path / "m", data=answers, defaults=True)
    serve = toml(dest / "harchos.toml")["serve"]
    assert serve["api_key_env"] == "MISTRAL_KEY"
    done = subprocess.run(
        [sys.executable, "serve.py", "--dry-run"], cwd=dest, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == [
        "vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.3",
        "--served-model-name", "mistral-7b-instruct-v0.3",
        "--host", "0.0.0.0",
        "--port", "8100",
        "--dtype", "bfloat16",
        "--max-model-len", "16384",
        "--gpu-memory-utilization", "0.8",
        "--tensor-parallel-size", "2",
        "--shutdown-timeout", "60",
    ]  # fmt: skip


def test_multi_hub_inference_passes_its_own_tests(tmp_path: Path) -> None:
    dest = blueprints.create("multi-hub-inference", tmp_path / "fleet", defaults=True)
    assert "# harchos blueprint: multi-hub-inference" in (dest / ".copier-answers.yml").read_text()
    run_project_tests(dest)


@pytest.mark.parametrize(
    ("regions", "budget_ms"),
    [("eu-north, eu-west", 80), ("eu-west,us-east,ap-northeast", 200)],
)
def test_multi_hub_layout_follows_the_regions(tmp_path: Path, regions: str, budget_ms: int) -> None:
    data = {"regions": regions, "replicas_per_hub": "2", "tensor_parallel_size": "2"}
    dest = blueprints.create("multi-hub-inference", tmp_path / "f", data=data, defaults=True)
    config = toml(dest / "harchos.toml")
    names = [r.strip() for r in regions.split(",")]
    assert list(config["hubs"]) == names
    assert [hub["region"] for hub in config["hubs"].values()] == names
    assert all(hub["gpus"] == 4 for hub in config["hubs"].values())
    assert [(r["hub"], r["port"]) for r in config["replicas"]] == [
        (name, port) for name in names for port in (8000, 8001)
    ]
    # Within one continent a greener hub is near; across oceans the budget must be larger.
    assert config["router"]["latency_budget_ms"] == budget_ms
    assert config["router"]["port"] == 9000


def test_multi_hub_needs_two_distinct_regions(tmp_path: Path) -> None:
    for regions in ("eu-west", "eu-west,eu-west"):
        with pytest.raises(UsageError):
            blueprints.create(
                "multi-hub-inference", tmp_path / "f", data={"regions": regions}, defaults=True
            )
        assert not (tmp_path / "f").exists()


def test_the_serving_blueprints_share_their_launcher_and_client() -> None:
    single = REPO / "blueprints" / "llm-inference" / "template"
    multi = REPO / "blueprints" / "multi-hub-inference" / "template"
    for name in ("serve.py", "client.py", "pyproject.toml", "requirements.txt"):
        assert (single / name).read_text() == (multi / name).read_text(), name
