"""`harchos.toml` `[serve]`: what `harchos run serve` launches, how many, where, and the router.

Validated with pydantic when serving starts; an error names the file and the key and exits 2.
Precedence as everywhere: command-line flag > `HARCHOS_*` environment variable > `harchos.toml` >
default (`HARCHOS_VLLM_COMMAND` stands for `[serve] vllm_command`).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harchos_cli.errors import UsageError
from harchos_cli.jobs.spec import Project
from harchos_cli.timeparse import parse_duration

VLLM_COMMAND_ENV = "HARCHOS_VLLM_COMMAND"


class ServeSettings(BaseModel):
    """The `[serve]` table (docs/serving.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    host: str = "0.0.0.0"  # what vLLM binds to on the hub
    port: int = Field(default=8000, ge=1, le=65535)  # the first replica's on a hub; then +1, +2
    shutdown_timeout: int = Field(default=30, ge=0)
    api_key_env: str = "VLLM_API_KEY"
    extra_args: list[str] = Field(default_factory=list)
    vllm_command: str = "vllm"
    replicas: int = Field(default=1, ge=1)
    hubs: list[str] | None = None
    router_host: str = "127.0.0.1"
    router_port: int = Field(default=8080, ge=0, le=65535)
    latency_budget_ms: float = Field(default=5000.0, gt=0)
    # Follow the sun: how often the replicas' hubs are re-planned, the saving a move needs, and
    # the least time between two moves.
    replan_interval: str = "1h"
    min_saving_percent: float = Field(default=20.0, ge=0, le=100)
    min_time_between_moves: str = "1h"

    @field_validator("replan_interval", "min_time_between_moves")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            parse_duration(value)
        except UsageError:
            raise ValueError("a duration such as 30m, 1h or PT1H") from None
        return value

    @field_validator("vllm_command")
    @classmethod
    def _command(cls, value: str) -> str:
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"a command line ({exc})") from None
        if not argv:
            raise ValueError("a command such as vllm")
        return value

    def vllm_argv(self) -> list[str]:
        """`vllm_command` as argv (split as a POSIX shell would, never run by one)."""
        return shlex.split(self.vllm_command)

    def replica_argv(self, port: int) -> list[str]:
        """The `vllm serve` command line of one replica listening on `port`."""
        argv = [
            *self.vllm_argv(), "serve", self.model,
            "--served-model-name", self.served_model_name or self.model,
            "--dtype", self.dtype,
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--host", self.host, "--port", str(port),
            "--shutdown-timeout", str(self.shutdown_timeout),
        ]  # fmt: skip
        if self.max_model_len is not None:
            argv[argv.index("--dtype") : argv.index("--dtype")] = [
                "--max-model-len", str(self.max_model_len),
            ]  # fmt: skip
        return [*argv, *self.extra_args]


def load(project: Project, overrides: dict[str, Any] | None = None) -> ServeSettings:
    """The project's `[serve]` table with `HARCHOS_VLLM_COMMAND` and the command line's
    `overrides` (None values ignored) applied.

    Raises:
        UsageError: no `[serve]` table, or a bad value (exit 2).
    """
    where = str(project.file) if project.file else "harchos.toml"
    table = dict(project.spec.serve or {})
    if not table:
        raise UsageError(
            f"{where} has no [serve] table",
            hint="start from a serving project: harchos new llm-inference my-server",
        )
    if os.environ.get(VLLM_COMMAND_ENV):
        table["vllm_command"] = os.environ[VLLM_COMMAND_ENV]
    table.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ServeSettings.model_validate(table)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(["serve", *(str(part) for part in first["loc"])])
        if first["type"] == "extra_forbidden":
            known = ", ".join(ServeSettings.model_fields)
            raise UsageError(f"{where}: unknown key {key}", hint=f"known keys: {known}") from None
        message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
        raise UsageError(
            f"{where}: {key}: expected {message}, got {first.get('input')!r}",
            hint=f"fix {key} (see docs/serving.md)",
        ) from None
