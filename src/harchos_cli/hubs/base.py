"""What a hub is, and what the job layer may ask of one.

The job layer (`harchos_cli.jobs`) only talks to hubs through `Transport` and `RemoteJobs`; the
hub layer owns how (a local subprocess, or the system `ssh` and `rsync`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from harchos_cli.errors import HubError

LOCAL = "local"
SLURM = "slurm"
HostKeyPolicy = Literal["accept-new", "strict"]
JobState = Literal["absent", "running", "exited"]


@dataclass(frozen=True)
class Hub:
    """A place jobs run. `local` (this machine) always exists; others are reached over SSH, or
    are Slurm clusters (`transport` slurm: `host` is the login node, None for this machine)."""

    name: str
    transport: Literal["local", "ssh", "slurm"]
    host: str | None = None
    user: str | None = None
    port: int | None = None
    identity: Path | None = None
    region: str | None = None
    gpus: int | None = None  # None: detect with nvidia-smi at check time
    gpu_type: str | None = None
    price_per_gpu_hour: float | None = None
    pue: float = 1.0
    electricity_price_per_kwh: float | None = None  # what the hub pays for energy, if it does
    currency: str | None = None  # of both prices; None: the `cost.currency` setting
    cpu_tdp_w: float | None = None  # the meter's CPU estimate where RAPL is unreadable
    max_jobs: int | None = None  # jobs it runs at once, which plans do not over-book; None: any
    partition: str | None = None  # Slurm: where jobs are submitted, and as whom
    account: str | None = None
    qos: str | None = None
    workdir: str = "~/harchos"  # where projects are synced to on the hub
    python: str = "python3"
    host_key_policy: HostKeyPolicy = "accept-new"


def in_place(hub: Hub) -> bool:
    """Whether jobs run in the project's own folder here (no copy): this machine, or a Slurm
    cluster whose login node it is (its home is on the cluster's shared filesystem)."""
    return hub.transport == LOCAL or (hub.transport == SLURM and not hub.host)


class HubUnreachableError(HubError):
    """The hub could not be reached (ssh exit 255, refused, timed out): the command never ran,
    or its outcome is unknown. Idempotent steps may retry; the caller decides when to give up."""


class HostKeyError(HubError):
    """The hub's host key changed (`changed`), or is unknown under the strict policy.
    Never retried."""

    def __init__(self, message: str, hint: str | None = None, *, changed: bool = False) -> None:
        super().__init__(message, hint)
        self.changed = changed


@dataclass(frozen=True)
class JobStatus:
    """A job's process on its hub, as the hub's own files say (`~/.harchos/jobs/<id>/`)."""

    state: JobState
    pid: int | None = None
    exit_code: int | None = None
    log_size: int = 0
    queue: SlurmQueue | None = None  # a Slurm hub's job: what `squeue` says of it


@dataclass(frozen=True)
class SlurmQueue:
    """A Slurm job as `squeue` shows it: id, state (PENDING, RUNNING, ...), reason, and the
    (expected) start as Slurm prints it, in the cluster's local time."""

    job_id: str
    state: str
    reason: str = ""
    start: str | None = None

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")


@dataclass(frozen=True)
class LaunchSpec:
    """What to start on the hub, detached, in its own session."""

    job_id: str
    argv: Sequence[str]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    # Names in `env` whose values are secrets: blanked in the hub's copy of the spec once the
    # workload started.
    secret_env: Sequence[str] = ()
    # The hub's energy meter beside the job: `{"interval_s": float, "cpu_tdp_w": float | None}`
    # (samples in the job's `meter.jsonl`); None or an `interval_s` of 0: no meter.
    meter: Mapping[str, Any] | None = None
    # A Slurm hub: `{"sbatch": [argv without the script], "job_name": NAME}`; the runner submits
    # the job with it (the monitor is the batch script) instead of starting it here.
    slurm: Mapping[str, Any] | None = None


class Transport(Protocol):
    """Runs commands on a hub and moves files to and from it. Every argument is passed literally."""

    hub: Hub

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` on the hub. `HubError` (exit 4) when the hub cannot be reached, or when
        `check` and the command fails."""
        ...

    def sync_up(self, local_dir: Path, remote_dir: str, *, protect: Sequence[str] = ()) -> str:
        """Copy a project to the hub (honouring .gitignore and .harchosignore, never .git) and
        return the absolute remote path. A no-op for the local hub running in place.

        `remote_dir` is the project's own folder on the hub (see `remote_project_dir`): a file
        an earlier sync sent and that is gone locally is deleted there, unless it lies under a
        `protect` folder (anchored, e.g. `/checkpoints/`); what jobs wrote is never touched."""
        ...

    def expand(self, path: str) -> str:
        """`path` as an absolute path on the hub (a leading `~` is the hub user's home)."""
        ...

    def sync_down(self, remote_dir: str, local_dir: Path) -> None:
        """Copy a folder (e.g. checkpoints) from the hub."""
        ...

    def push_dir(self, local_dir: Path, remote_dir: str) -> None:
        """Copy a folder to the hub as it is (merging; resumable; nothing is deleted)."""
        ...


class RemoteJobs(Protocol):
    """Detached processes on a hub, keyed by job id; survives a dropped connection or laptop."""

    def launch(self, spec: LaunchSpec) -> JobStatus:
        """Start the job unless a job with this id already exists there (idempotent)."""
        ...

    def status(self, job_id: str) -> JobStatus: ...

    def read_log(self, job_id: str, offset: int) -> bytes:
        """Log bytes from `offset` on (empty when nothing new)."""
        ...

    def read_meter(self, job_id: str, offset: int) -> bytes:
        """The meter's samples (`meter.jsonl`, one JSON object a line) from byte `offset` on
        (empty when nothing new; may end in part of a line still being written)."""
        ...

    def signal(self, job_id: str, signum: int) -> bool:
        """Deliver `signum` to the job's workers (see `_runner._targets`); False when it is not
        running."""
        ...
