"""The launcher builds the exact `vllm serve` command line from harchos.toml."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from serve import ConfigError, load_settings, parse_settings, server_env, vllm_command

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
extra_args = ["--enable-prefix-caching"]
"""

EXPECTED = [
    "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
    "--served-model-name", "llama",
    "--host", "10.0.0.5",
    "--port", "8100",
    "--dtype", "bfloat16",
    "--max-model-len", "8192",
    "--gpu-memory-utilization", "0.85",
    "--tensor-parallel-size", "2",
    "--shutdown-timeout", "45",
    "--enable-prefix-caching",
]  # fmt: skip


def test_the_command_line_is_exactly_vllm_serve_with_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "harchos.toml"
    config.write_text(CONFIG)
    assert vllm_command(load_settings(config)) == EXPECTED


def test_defaults_fill_what_the_table_leaves_out() -> None:
    command = vllm_command(parse_settings({"model": "org/m"}))
    assert command[:5] == ["vllm", "serve", "org/m", "--served-model-name", "org/m"]
    assert command[command.index("--shutdown-timeout") + 1] == "30"
    assert command[command.index("--port") + 1] == "8000"


def test_the_api_key_travels_in_the_environment_not_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "harchos.toml"
    config.write_text(CONFIG)
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
        ({"model": "m", "max_model_len": "long"}, "max_model_len must be a int"),
        ({"model": "m", "extra_args": "--x"}, "extra_args"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(
    table: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_settings(table)


def test_the_project_settings_are_valid() -> None:
    settings = load_settings(ROOT / "harchos.toml")
    assert vllm_command(settings)[:3] == ["vllm", "serve", settings.model]


def test_dry_run_prints_the_command(tmp_path: Path) -> None:
    config = tmp_path / "harchos.toml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, str(ROOT / "serve.py"), "--config", str(config), "--dry-run",
         "--port", "9001"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = shlex.split(done.stdout)
    assert printed == [*EXPECTED[:8], "9001", *EXPECTED[9:]]


def test_a_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "serve.py"), "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "not found" in done.stderr
