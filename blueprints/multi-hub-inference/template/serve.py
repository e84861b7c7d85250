"""Start `vllm serve` with the settings in harchos.toml's [serve] table.

    python serve.py              # exec `vllm serve ...` (on the GPU machine)
    python serve.py --dry-run    # print the command instead
    python serve.py --test-double --host 127.0.0.1
                                 # harchos's vLLM test double (not vLLM) with the same settings,
                                 # to try the client and load test on a laptop

The launcher replaces itself with vLLM (exec), so the SIGTERM harchos sends to drain a replica
reaches vLLM directly. The API key is handed over in vLLM's own `VLLM_API_KEY` variable, never on
the command line, where any user of the machine could read it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


class ConfigError(Exception):
    """harchos.toml's [serve] table is missing or holds a bad value."""


@dataclass(frozen=True)
class ServeSettings:
    """The [serve] table."""

    model: str
    served_model_name: str
    dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    host: str = "0.0.0.0"
    port: int = 8000
    shutdown_timeout: int = 30
    api_key_env: str = "VLLM_API_KEY"
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"[serve] {key} is missing")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"[serve] {key} must be a {kind.__name__}, not {value!r}")
    return value


def parse_settings(table: Mapping[str, Any]) -> ServeSettings:
    """Validate a [serve] table.

    Raises:
        ConfigError: a value is missing, of the wrong type or out of range.
    """
    model = _get(table, "model", str)
    extra = table.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise ConfigError("[serve] extra_args must be a list of strings")
    settings = ServeSettings(
        model=model,
        served_model_name=_get(table, "served_model_name", str, model),
        dtype=_get(table, "dtype", str, "auto"),
        max_model_len=_get(table, "max_model_len", int, 4096),
        gpu_memory_utilization=_get(table, "gpu_memory_utilization", float, 0.9),
        tensor_parallel_size=_get(table, "tensor_parallel_size", int, 1),
        host=_get(table, "host", str, "0.0.0.0"),
        port=_get(table, "port", int, 8000),
        shutdown_timeout=_get(table, "shutdown_timeout", int, 30),
        api_key_env=_get(table, "api_key_env", str, "VLLM_API_KEY"),
        extra_args=tuple(extra),
    )
    if settings.dtype not in DTYPES:
        raise ConfigError(f"[serve] dtype must be one of {', '.join(DTYPES)}")
    if not 0 < settings.gpu_memory_utilization <= 1:
        raise ConfigError("[serve] gpu_memory_utilization must be in (0, 1]")
    if not 0 < settings.port < 65536:
        raise ConfigError("[serve] port must be 1-65535")
    if settings.shutdown_timeout < 0 or settings.max_model_len < 1:
        raise ConfigError("[serve] shutdown_timeout and max_model_len cannot be negative")
    if settings.tensor_parallel_size < 1:
        raise ConfigError("[serve] tensor_parallel_size must be at least 1")
    return settings


def load_settings(
    path: Path = Path("harchos.toml"), overrides: Mapping[str, Any] | None = None
) -> ServeSettings:
    """Read and validate the [serve] table of a harchos.toml, with `overrides` on top.

    Raises:
        ConfigError: the file is missing, not TOML, or its [serve] table is invalid.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the project folder") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("serve")
    if not isinstance(table, dict):
        raise ConfigError(f"{path} has no [serve] table")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return parse_settings({**table, **given})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def vllm_command(settings: ServeSettings) -> list[str]:
    """The exact `vllm serve` command line for these settings."""
    return [
        "vllm", "serve", settings.model,
        "--served-model-name", settings.served_model_name,
        "--host", settings.host,
        "--port", str(settings.port),
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--shutdown-timeout", str(settings.shutdown_timeout),
        *settings.extra_args,
    ]  # fmt: skip


def double_command(settings: ServeSettings) -> list[str]:
    """The same server as harchos's vLLM test double (fake text, no GPU, not vLLM)."""
    return [
        sys.executable, "-m", "harchos_cli.testing.vllm_double",
        "--model", settings.model,
        "--served-model-name", settings.served_model_name,
        "--host", settings.host,
        "--port", str(settings.port),
        "--max-model-len", str(settings.max_model_len),
        "--shutdown-timeout", str(settings.shutdown_timeout),
    ]  # fmt: skip


def server_env(settings: ServeSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: the API key, if set, moved into `VLLM_API_KEY`."""
    env = dict(environ)
    key = environ.get(settings.api_key_env)
    if key:
        env["VLLM_API_KEY"] = key
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, then exec the server (or print its command)."""
    parser = argparse.ArgumentParser(description="Start vllm serve from harchos.toml [serve].")
    parser.add_argument("--config", type=Path, default=Path("harchos.toml"))
    parser.add_argument("--host", help="override [serve] host")
    parser.add_argument("--port", type=int, help="override [serve] port")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument(
        "--test-double",
        action="store_true",
        help="run harchos's vLLM test double instead of vLLM (fake text; for trying things out)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, {"host": args.host, "port": args.port})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = double_command(settings) if args.test_double else vllm_command(settings)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    env = server_env(settings, os.environ)
    if settings.api_key_env not in os.environ:
        print(f"note: ${settings.api_key_env} is not set; the API is open", file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"error: {command[0]} not found (pip install vllm there)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
