"""The launcher builds the exact `vllm serve` command line from harchos.toml."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from serve import (
    TEST_DOUBLE,
    ConfigError,
    load_settings,
    parse_settings,
    server_env,
    vllm_command,
)

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[serve]
model = "meta-llama/Llama-3.1-8B-Instruct"
served_model_name = "llama"
dtype = "bfloat16"
max_model_len = 8192
gpu_memory_utilization = 0.85
tensor_parallel_size = 2
host = "10.0.0.5"
port = 8100
shutdown_timeout = 45
api_key_env = "MY_KEY"
extra_args = ["--max-num-seqs", "64"]
vllm_command = "/opt/vllm/bin/vllm"
replicas = 3
hubs = ["gpu-a", "gpu-b"]
router_port = 9090
latency_budget_ms = 2500
"""

# What harchos runs for a replica, word for word: `<vllm_command> serve MODEL` and the flags.
EXPECTED = [
    "/opt/vllm/bin/vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
    "--served-model-name", "llama",
    "--dtype", "bfloat16",
    "--max-model-len", "8192",
    "--gpu-memory-utilization", "0.85",
    "--tensor-parallel-size", "2",
    "--host", "10.0.0.5",
    "--port", "8100",
    "--shutdown-timeout", "45",
    "--max-num-seqs", "64",
]  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "harchos.toml"
    path.write_text(CONFIG)
    return path


def test_the_command_line_is_exactly_vllm_serve_with_the_settings(config: Path) -> None:
    settings = load_settings(config, environ={})
    assert vllm_command(settings) == EXPECTED
    assert (settings.replicas, settings.hubs, settings.router_port) == (3, ("gpu-a", "gpu-b"), 9090)
    assert settings.latency_budget_ms == 2500


def test_harchos_vllm_command_wins_over_the_table(config: Path) -> None:
    env = {"HARCHOS_VLLM_COMMAND": "/usr/bin/python3 -m my.vllm_wrapper"}
    command = vllm_command(load_settings(config, environ=env))
    assert command[:4] == ["/usr/bin/python3", "-m", "my.vllm_wrapper", "serve"]
    assert command[4:] == EXPECTED[2:]


def test_defaults_fill_what_the_table_leaves_out() -> None:
    settings = parse_settings({"model": "org/m"})
    command = vllm_command(settings)
    assert command[:5] == ["vllm", "serve", "org/m", "--served-model-name", "org/m"]
    assert command[command.index("--shutdown-timeout") + 1] == "30"
    assert command[command.index("--port") + 1] == "8000"
    assert (settings.replicas, settings.hubs, settings.router_port) == (1, None, 8080)
    assert settings.latency_budget_ms == 5000


def test_the_api_key_travels_in_the_environment_not_the_command_line(config: Path) -> None:
    settings = load_settings(config)
    env = server_env(settings, {"MY_KEY": "s3cret", "PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "s3cret"
    assert not any("s3cret" in arg for arg in vllm_command(settings))
    assert "VLLM_API_KEY" not in server_env(settings, {"PATH": "/bin"})


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ({}, "model is missing"),
        ({"model": "m", "dtype": "int4"}, "dtype"),
        ({"model": "m", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"model": "m", "port": 0}, "port"),
        ({"model": "m", "router_port": 70000}, "router_port"),
        ({"model": "m", "max_model_len": "long"}, "max_model_len must be a int"),
        ({"model": "m", "extra_args": "--x"}, "extra_args"),
        ({"model": "m", "replicas": 0}, "replicas"),
        ({"model": "m", "hubs": "gpu-a"}, "hubs must be a list"),
        ({"model": "m", "latency_budget_ms": 0}, "latency_budget_ms"),
        ({"model": "m", "vllm_command": " "}, "vllm_command is empty"),
        ({"model": "m", "vllm_command": "'vllm"}, "vllm_command is not a command line"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(
    table: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_settings(table)


def test_the_project_settings_are_valid() -> None:
    settings = load_settings(ROOT / "harchos.toml", environ={})
    assert vllm_command(settings)[:3] == ["vllm", "serve", settings.model]


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "serve.py"), *args],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip


def test_dry_run_prints_the_command(config: Path) -> None:
    done = _serve("--config", str(config), "--dry-run", "--port", "9001", "--", "--seed", "7")
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == [*EXPECTED[:16], "9001", *EXPECTED[17:], "--seed", "7"]
    done = _serve("--config", str(config), "--dry-run", "--test-double")
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == [*shlex.split(TEST_DOUBLE), *EXPECTED[1:]]


def test_the_test_double_takes_the_command_line_vllm_gets(config: Path) -> None:
    # harchos's test double parses vLLM's flags with vLLM's types; a flag vLLM would refuse
    # (here a fractional --shutdown-timeout, an int in vLLM) it refuses too, with exit code 2.
    done = _serve("--config", str(config), "--test-double", "--", "--shutdown-timeout", "0.5")
    assert done.returncode == 2
    assert "--shutdown-timeout: invalid int value" in done.stderr


def test_a_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    done = _serve("--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert "not found" in done.stderr
