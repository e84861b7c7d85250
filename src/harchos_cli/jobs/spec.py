"""`harchos.toml`: what a project runs, when it may run, and where.

Validated with pydantic. An error names the file, the key and what was expected, and exits 2.
Tables that other parts of harchos own (`[settings]`, `[serve]`, `[router]`, `[[replicas]]`,
`[checkpoints]`) are accepted here and validated where they are used.
"""

from __future__ import annotations

import difflib
import posixpath
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from harchos_cli.errors import UsageError
from harchos_cli.timeparse import parse_duration, parse_instant

PROJECT_FILE = "harchos.toml"
PAUSED_EXIT_CODE = 85


def _duration(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_duration(value)
        except UsageError:
            raise ValueError("a duration such as 90m, 6h, 2d or PT6H") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobTable(_Strict):
    """`[job]`: the workload."""

    name: str | None = None
    kind: Literal["train", "batch", "serve"] = "train"
    command: str | list[str] | None = None
    setup: str | None = None
    expected_duration: str | None = None
    checkpoint_dir: str = "checkpoints"
    gpus: int = Field(default=0, ge=0)
    processes: int = Field(default=1, ge=1)
    pause_exit_code: int = Field(default=PAUSED_EXIT_CODE, ge=1, le=255)
    resumable: bool = False
    min_processes: int | None = Field(default=None, ge=1)
    max_processes: int | None = Field(default=None, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    # Names (in `env` or the workload's environment) whose values harchos masks when it prints
    # them, beside those whose names look secret (`harchos_cli.secrets`).
    secret_env: list[str] = Field(default_factory=list)
    # On a Slurm hub: how long before the job's time limit it is told to save (SIGUSR1), so
    # that one step and a checkpoint fit in what is left.
    save_before_limit: str = "2m"

    _check_duration = field_validator("expected_duration", "save_before_limit")(_duration)

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint_dir(cls, value: str) -> str:
        # Normalised, so `./ckpt` and `ckpt/` name the folder the sync protects as `/ckpt/`.
        if value.startswith(("/", "~")):
            return value.rstrip("/") or value
        normal = posixpath.normpath(value)
        if normal in {".", ".."} or normal.startswith("../"):
            raise ValueError(
                "a folder inside the project (e.g. checkpoints) or an absolute path on the hub"
            )
        return normal

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and not (value.strip() if isinstance(value, str) else value):
            raise ValueError("a non-empty command")
        return value


class CarbonTable(_Strict):
    """`[carbon]`: when the job may run."""

    region: str | None = None
    hubs: list[str] | None = None
    deadline: str | None = None
    threshold: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    allow_migration: bool = False
    min_saving_percent: float = Field(default=20.0, ge=0, le=100)
    min_time_between_moves: str | None = None
    # After a move, once the job made progress on the target: keep the run's checkpoints on
    # the hub it left, or delete them there.
    tidy_source: Literal["keep", "delete"] = "keep"
    allow_rescale: bool = False
    # The emissions a run may cause, in kgCO2eq: exported with the job's metrics, where the
    # monitoring blueprint's alerts compare the job's emissions with it.
    emissions_budget_kg: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    _check_duration = field_validator("min_time_between_moves")(_duration)

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            if value.strip()[:4].isdigit() and "-" in value:
                parse_instant(value)
            else:
                parse_duration(value)
        except UsageError:
            raise ValueError("a duration from now (24h) or an ISO timestamp") from None
        return value


class HubTable(_Strict):
    """`[hubs.NAME]`: a hub this project may run on (`harchos hubs add` keeps the others)."""

    transport: Literal["local", "ssh", "slurm"] = "ssh"
    host: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity: str | None = None
    region: str | None = None
    gpus: int | None = Field(default=None, ge=0)
    gpu_type: str | None = None
    price_per_gpu_hour: float | None = Field(default=None, ge=0)
    pue: float = Field(default=1.0, ge=1.0)
    electricity_price_per_kwh: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    cpu_tdp_w: float | None = Field(default=None, gt=0)
    max_jobs: int | None = Field(default=None, ge=1)
    partition: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    account: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    qos: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    workdir: str | None = None
    python: str | None = None
    host_key_policy: Literal["accept-new", "strict"] = "accept-new"


class ProjectFile(_Strict):
    """The whole `harchos.toml`."""

    job: JobTable = Field(default_factory=JobTable)
    carbon: CarbonTable = Field(default_factory=CarbonTable)
    hubs: dict[str, HubTable] = Field(default_factory=dict)
    # Owned and validated by other parts of harchos.
    settings: dict[str, Any] = Field(default_factory=dict)
    serve: dict[str, Any] | None = None
    router: dict[str, Any] | None = None
    replicas: list[dict[str, Any]] | None = None
    checkpoints: dict[str, Any] | None = None


@dataclass(frozen=True)
class Project:
    """A project folder and its validated `harchos.toml` (`file` is None when there is none)."""

    root: Path
    file: Path | None
    spec: ProjectFile

    @property
    def name(self) -> str:
        return self.spec.job.name or self.root.name


def find(start: Path | None = None) -> Path | None:
    """The nearest `harchos.toml` in `start` or one of its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def load_project(start: Path | None = None, *, required: bool = True) -> Project:
    """Find and validate the project's `harchos.toml`.

    Args:
        start: Where to start looking (default: the working directory), upwards.
        required: Without a file, raise `UsageError` (True) or return an empty spec rooted at
            `start` (False, for `harchos run batch`).

    Raises:
        UsageError: No file (when required), invalid TOML, or a key with a bad value; the message
            names the file and the key.
    """
    path = find(start)
    if path is None:
        if required:
            raise UsageError(
                f"no {PROJECT_FILE} in {(start or Path.cwd()).resolve()} or its parents",
                hint="run it in a project made by `harchos new pytorch-training`, "
                "or add a harchos.toml (see docs/harchos-toml.md)",
            )
        return Project((start or Path.cwd()).resolve(), None, ProjectFile())
    return Project(path.parent, path, parse(path))


def parse(path: Path) -> ProjectFile:
    """Read and validate one `harchos.toml` file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}", hint="fix the file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return ProjectFile.model_validate(data)
    except ValidationError as exc:
        raise _usage_error(path, exc) from None


def _usage_error(path: Path, exc: ValidationError) -> UsageError:
    """The first problem, as `FILE: key: expected …, got …`, and a count of the others."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
        return UsageError(f"{path}: unknown key {key}{more}", hint=hint)
    message = str(first["msg"])
    message = message.removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = message.removeprefix("Input should be ")
    got = first.get("input")
    shown = f", got {got!r}" if not isinstance(got, dict | list) else ""
    return UsageError(
        f"{path}: {key}: expected {message}{shown}{more}",
        hint=f"fix {key} in {path.name} (see docs/harchos-toml.md)",
    )


def _known_keys(loc: list[str]) -> list[str]:
    tables: dict[str, type[BaseModel]] = {"job": JobTable, "carbon": CarbonTable, "hubs": HubTable}
    model = tables.get(loc[0], ProjectFile) if loc else ProjectFile
    return sorted(model.model_fields)
