"""Start `vllm serve` with the settings in harchos.toml's [serve] table: the manual way.

`harchos run serve` starts the replicas itself (the same command line on each hub, with the
router in front); this script starts one here, by hand.

    python serve.py                   # exec `vllm serve ...` (on the GPU machine)
    python serve.py --port 8001       # a second replica on this machine
    python serve.py --dry-run         # print the command instead
    python serve.py -- --max-num-seqs 64
                                      # more vllm serve flags, after [serve] extra_args
    python serve.py --test-double --host 127.0.0.1
                                      # harchos's vLLM test double (not vLLM), same settings:
                                      # to try the client and load test on a laptop

The command is `<vllm_command> serve MODEL --served-model-name ...`, exactly what harchos runs:
`vllm_command` comes from `$HARCHOS_VLLM_COMMAND`, else [serve] vllm_command, else `vllm`. The
launcher replaces itself with vLLM (exec), so the SIGTERM harchos sends to drain a replica reaches
vLLM directly. The API key is handed over in vLLM's own `VLLM_API_KEY` variable, never on the
command line, where any user of the machine could read it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
VLLM_COMMAND_ENV = "HARCHOS_VLLM_COMMAND"
# harchos's vLLM test double takes vLLM's command line; `--test-double` puts it in vLLM's place.
TEST_DOUBLE = f"{shlex.quote(sys.executable)} -m harchos_cli.testing.vllm_double"


class ConfigError(Exception):
    """harchos.toml's [serve] table is missing or holds a bad value."""


@dataclass(frozen=True)
class ServeSettings:
    """The [serve] table. harchos reads the same keys; `port` is the first replica's port on a
    hub (more replicas on one hub take port + 1, port + 2, ...)."""

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
    vllm_command: str = "vllm"
    replicas: int = 1
    hubs: tuple[str, ...] | None = None
    router_port: int = 8080
    latency_budget_ms: float = 5000.0


def _get(table: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"[serve] {key} is missing")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"[serve] {key} must be a {kind.__name__}, not {value!r}")
    return value


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"[serve] {key} must be a list of strings")
    return tuple(value)


def parse_settings(table: Mapping[str, Any]) -> ServeSettings:
    """Validate a [serve] table.

    Raises:
        ConfigError: a value is missing, of the wrong type or out of range.
    """
    model = _get(table, "model", str)
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
        extra_args=_strings(table, "extra_args") or (),
        vllm_command=_get(table, "vllm_command", str, "vllm"),
        replicas=_get(table, "replicas", int, 1),
        hubs=_strings(table, "hubs"),
        router_port=_get(table, "router_port", int, 8080),
        latency_budget_ms=_get(table, "latency_budget_ms", float, 5000.0),
    )
    if settings.dtype not in DTYPES:
        raise ConfigError(f"[serve] dtype must be one of {', '.join(DTYPES)}")
    if not 0 < settings.gpu_memory_utilization <= 1:
        raise ConfigError("[serve] gpu_memory_utilization must be in (0, 1]")
    if not 0 < settings.port < 65536 or not 0 <= settings.router_port < 65536:
        raise ConfigError("[serve] port must be 1-65535 and router_port 0-65535")
    if settings.shutdown_timeout < 0 or settings.max_model_len < 1:
        raise ConfigError("[serve] shutdown_timeout and max_model_len cannot be negative")
    if settings.tensor_parallel_size < 1 or settings.replicas < 1:
        raise ConfigError("[serve] tensor_parallel_size and replicas must be at least 1")
    if settings.latency_budget_ms <= 0:
        raise ConfigError("[serve] latency_budget_ms must be more than 0")
    try:
        if not shlex.split(settings.vllm_command):
            raise ConfigError("[serve] vllm_command is empty")
    except ValueError as exc:
        raise ConfigError(f"[serve] vllm_command is not a command line: {exc}") from None
    return settings


def load_settings(
    path: Path = Path("harchos.toml"),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeSettings:
    """Read and validate the [serve] table of a harchos.toml, with `$HARCHOS_VLLM_COMMAND` (from
    `environ`, default the process's) and then `overrides` on top, as harchos does.

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
    env = os.environ if environ is None else environ
    given = {"vllm_command": env.get(VLLM_COMMAND_ENV) or None, **(overrides or {})}
    try:
        return parse_settings({**table, **{k: v for k, v in given.items() if v is not None}})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def vllm_command(settings: ServeSettings, extra: Sequence[str] = ()) -> list[str]:
    """The exact `vllm serve` command line for these settings (harchos's, word for word)."""
    return [
        *shlex.split(settings.vllm_command), "serve", settings.model,
        "--served-model-name", settings.served_model_name,
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--host", settings.host,
        "--port", str(settings.port),
        "--shutdown-timeout", str(settings.shutdown_timeout),
        *settings.extra_args,
        *extra,
    ]  # fmt: skip


def double_command(settings: ServeSettings, extra: Sequence[str] = ()) -> list[str]:
    """The same command line with harchos's vLLM test double (fake text, no GPU, not vLLM)."""
    return vllm_command(replace(settings, vllm_command=TEST_DOUBLE), extra)


def server_env(settings: ServeSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: the API key, if set, moved into `VLLM_API_KEY`."""
    env = dict(environ)
    key = environ.get(settings.api_key_env)
    if key:
        env["VLLM_API_KEY"] = key
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, then exec the server (or print its command)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    cut = args_list.index("--") if "--" in args_list else len(args_list)
    parser = argparse.ArgumentParser(
        description="Start vllm serve from harchos.toml [serve].",
        epilog="Arguments after -- are passed on to vllm serve.",
    )
    parser.add_argument("--config", type=Path, default=Path("harchos.toml"))
    parser.add_argument("--host", help="override [serve] host")
    parser.add_argument("--port", type=int, help="override [serve] port")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument(
        "--test-double",
        action="store_true",
        help="run harchos's vLLM test double instead of vLLM (fake text; for trying things out)",
    )
    args = parser.parse_args(args_list[:cut])
    extra = args_list[cut + 1 :]
    try:
        settings = load_settings(args.config, {"host": args.host, "port": args.port})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    make = double_command if args.test_double else vllm_command
    command = make(settings, extra)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    env = server_env(settings, os.environ)
    if settings.api_key_env not in os.environ:
        print(f"note: ${settings.api_key_env} is not set; the API is open", file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"error: {command[0]} not found (pip install -r requirements-vllm.txt there)",
              file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main())
