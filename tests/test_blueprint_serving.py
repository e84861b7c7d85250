"""The serving blueprints render and pass their own tests against the vLLM test double.

The generated tests start `python -m harchos_cli.testing.vllm_double` (a test double, not vLLM)
on loopback, through the same `vllm serve` command line harchos and the projects' `serve.py` build,
and run the project's client, load test and layout checks against it.
"""

from __future__ import annotations

import json
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
from harchos_cli.jobs import spec
from harchos_cli.serve.settings import ServeSettings


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


def flags(argv: list[str]) -> dict[str, str]:
    """`serve MODEL --flag value ...` as {flag: value}; the model under "MODEL"."""
    start = argv.index("serve")
    pairs = argv[start + 2 :]
    assert len(pairs) % 2 == 0, argv
    return {"MODEL": argv[start + 1], **dict(zip(pairs[::2], pairs[1::2], strict=True))}


def dry_run(dest: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "serve.py", "--dry-run"], cwd=dest, capture_output=True, text=True,
        check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout)


def harchos_reads(dest: Path) -> None:
    """harchos accepts the project's harchos.toml, and launches a replica with the very flags
    the project's `serve.py` uses."""
    spec.parse(dest / "harchos.toml")
    serve = ServeSettings.model_validate(toml(dest / "harchos.toml")["serve"])
    assert serve.vllm_command == "vllm"
    assert flags(serve.replica_argv(serve.port)) == flags(dry_run(dest))


def test_llm_inference_passes_its_own_tests(tmp_path: Path) -> None:
    dest = blueprints.create("llm-inference", tmp_path / "chat-svc", defaults=True)
    assert not list(dest.rglob("*.jinja"))
    assert "# harchos blueprint: llm-inference" in (dest / ".copier-answers.yml").read_text()
    config = toml(dest / "harchos.toml")
    assert config["job"] == {"name": "chat-svc", "kind": "serve", "command": "python serve.py"}
    assert config["hubs"]["local"]["region"] == config["carbon"]["region"] == "eu-west"
    serve = config["serve"]
    assert (serve["replicas"], serve["router_port"], serve["latency_budget_ms"]) == (1, 8080, 5000)
    assert "hubs" not in serve
    assert "vllm_command" not in serve
    assert '# vllm_command = "vllm"' in (dest / "harchos.toml").read_text()
    assert "vllm>=0.18" in (dest / "requirements-vllm.txt").read_text().splitlines()
    # The README's first screen: how to run it locally, on a hub, and green.
    readme = (dest / "README.md").read_text()
    first_screen = readme.split("\n## ", 1)[0]
    for words in ("**Locally**", "**On a GPU hub**", "**Green**", "harchos run serve --hubs"):
        assert words in first_screen, words
    assert "vllm bench serve" in readme
    assert any(step.startswith("python loadtest.py") for step in blueprints.next_steps(dest))
    lines = (dest / "prompts.jsonl").read_text().splitlines()
    assert lines
    assert all(json.loads(line)["prompt"] for line in lines)
    harchos_reads(dest)
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
        "replicas": "2",
        "router_port": "9100",
    }
    dest = blueprints.create("llm-inference", tmp_path / "m", data=answers, defaults=True)
    config = toml(dest / "harchos.toml")
    assert config["serve"]["api_key_env"] == "MISTRAL_KEY"
    assert (config["serve"]["replicas"], config["serve"]["router_port"]) == (2, 9100)
    assert config["hubs"]["local"]["gpus"] == 4  # two replicas of two GPUs
    assert dry_run(dest) == [
        "vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.3",
        "--served-model-name", "mistral-7b-instruct-v0.3",
        "--dtype", "bfloat16",
        "--max-model-len", "16384",
        "--gpu-memory-utilization", "0.8",
        "--tensor-parallel-size", "2",
        "--host", "0.0.0.0",
        "--port", "8100",
        "--shutdown-timeout", "60",
    ]  # fmt: skip
    harchos_reads(dest)


def test_multi_hub_inference_passes_its_own_tests(tmp_path: Path) -> None:
    dest = blueprints.create("multi-hub-inference", tmp_path / "fleet", defaults=True)
    assert "# harchos blueprint: multi-hub-inference" in (dest / ".copier-answers.yml").read_text()
    harchos_reads(dest)
    run_project_tests(dest)


@pytest.mark.parametrize(
    ("regions", "replicas"), [("eu-north, eu-west", 1), ("eu-west,us-east,ap-northeast", 2)]
)
def test_multi_hub_layout_follows_the_regions(tmp_path: Path, regions: str, replicas: int) -> None:
    data = {"regions": regions, "max_replicas_per_hub": "2", "tensor_parallel_size": "2"}
    dest = blueprints.create("multi-hub-inference", tmp_path / "f", data=data, defaults=True)
    config = toml(dest / "harchos.toml")
    names = [r.strip() for r in regions.split(",")]
    assert list(config["hubs"]) == names
    assert [hub["region"] for hub in config["hubs"].values()] == names
    assert all(hub["gpus"] == 4 for hub in config["hubs"].values())
    serve = config["serve"]
    # One hub fewer replicas than hubs by default: a replica always has a hub to move to.
    assert (serve["hubs"], serve["replicas"]) == (names, replicas)
    assert (serve["port"], serve["router_port"], serve["latency_budget_ms"]) == (8000, 8080, 5000)
    # harchos's router replaced the blueprint's own tables.
    assert "router" not in config
    assert "replicas" not in config
    harchos_reads(dest)


def test_multi_hub_refuses_what_cannot_be_placed(tmp_path: Path) -> None:
    for data in (
        {"regions": "eu-west"},
        {"regions": "eu-west,eu-west"},
        {"regions": "eu-west,eu-north", "replicas": "3"},  # two hubs of one replica each
    ):
        with pytest.raises(UsageError):
            blueprints.create("multi-hub-inference", tmp_path / "f", data=data, defaults=True)
        assert not (tmp_path / "f").exists()


def test_the_serving_blueprints_share_their_launcher_and_client() -> None:
    single = REPO / "blueprints" / "llm-inference" / "template"
    multi = REPO / "blueprints" / "multi-hub-inference" / "template"
    # One file each in blueprints/_shared/serving, linked from both blueprints.
    shared = REPO / "blueprints" / "_shared" / "serving"
    for name in ("serve.py", "client.py"):
        assert (single / name).resolve() == (multi / name).resolve() == shared / name, name
    for name in ("pyproject.toml", "requirements.txt", "requirements-vllm.txt"):
        assert (single / name).read_text() == (multi / name).read_text(), name
