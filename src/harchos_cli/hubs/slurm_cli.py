"""What harchos asks of Slurm from its own side: the `sbatch` command line, moving a pending
job's begin time, and a partition's nodes (the hub runner submits, asks `squeue` and signals
itself, on the login node).

Every function takes `run`, a hub transport's `run`, so the same code drives a login node over
SSH or this machine. Arguments are passed literally (argv, no shell).

Times: Slurm's clients read and print times in the local time zone of the client process, so
every command that takes or shows a time runs as `env TZ=UTC ...`; times go in and come out as
aware UTC, whatever the cluster's own zone.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from harchos_cli.errors import HubError

IN_UTC = ("env", "TZ=UTC")
SLURM_TIME = "%Y-%m-%dT%H:%M:%S"
_NO_TIME = frozenset({"", "N/A", "NONE", "UNKNOWN", "(NULL)"})


class SlurmRun(Protocol):
    """A hub transport's `run`."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]: ...


class SlurmCommandError(HubError):
    """A Slurm command failed, or printed what could not be understood."""


class PartitionNotFoundError(SlurmCommandError):
    """The cluster has no partition of that name."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str
    cpus: int
    gpus: int


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    state: str  # the partition's own state: UP, DOWN, DRAIN, INACTIVE
    nodes: tuple[NodeInfo, ...]

    @property
    def cpus(self) -> int:
        return sum(node.cpus for node in self.nodes)

    @property
    def gpus(self) -> int:
        return sum(node.gpus for node in self.nodes)


def format_time(moment: datetime) -> str:
    """`moment` (aware) as Slurm reads it under TZ=UTC."""
    if moment.tzinfo is None:
        raise ValueError("a Slurm time must be timezone-aware")
    return moment.astimezone(UTC).strftime(SLURM_TIME)


def parse_time(text: str) -> datetime | None:
    """A time Slurm printed under TZ=UTC as aware UTC; None for N/A, Unknown, None."""
    text = text.strip()
    if text.upper() in _NO_TIME:
        return None
    try:
        return datetime.strptime(text, SLURM_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise SlurmCommandError(f"Slurm printed a time that is not one: {text!r}") from None


def sbatch_argv(
    *,
    script: str,
    job_name: str,
    partition: str | None,
    account: str | None,
    qos: str | None,
    gpus: int,
    nodes: int,
    time_limit_minutes: int | None,
    begin: datetime | None,
    signal_before_s: int | None,
    requeue: bool,
    output: str,
    chdir: str,
    extra: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> list[str]:
    """The `sbatch --parsable` command line. Empty `script`, `job_name`, `output` or `chdir`
    leave that part out (a caller that adds it later); `extra` are further sbatch options, put
    before the script; `script_args` follow it."""
    if gpus < 0 or nodes < 1:
        raise ValueError(f"gpus must be >= 0 and nodes >= 1 (got {gpus}, {nodes})")
    argv = [*IN_UTC, "sbatch", "--parsable", f"--nodes={nodes}", "--open-mode=append"]
    if nodes > 1:
        argv.append("--ntasks-per-node=1")  # one `accelerate launch` per machine (`srun`)
    if job_name:
        argv.append(f"--job-name={job_name}")
    if partition:
        argv.append(f"--partition={partition}")
    if account:
        argv.append(f"--account={account}")
    if qos:
        argv.append(f"--qos={qos}")
    if gpus > 0:
        argv.append(f"--gres=gpu:{gpus}")
    if time_limit_minutes is not None:
        argv.append(f"--time={max(1, time_limit_minutes)}")
    if begin is not None:
        argv.append(f"--begin={format_time(begin)}")
    if signal_before_s is not None:
        argv.append(f"--signal=B:USR1@{signal_before_s}")
    argv.append("--requeue" if requeue else "--no-requeue")
    if output:
        argv.append(f"--output={output}")
    if chdir:
        argv.append(f"--chdir={chdir}")
    argv.extend(extra)
    if script:
        argv.append(script)
        argv.extend(script_args)
    elif script_args:
        raise ValueError("script_args need a script")
    return argv


def output_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def failure_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The failure's last line: from stderr, else stdout (where scontrol prints "not found")."""
    said = output_text(result.stderr or b"").strip() or output_text(result.stdout or b"").strip()
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def checked(run: SlurmRun, argv: Sequence[str], what: str) -> str:
    result = run(list(argv), check=False)
    if result.returncode != 0:
        raise SlurmCommandError(f"{what} failed: {failure_line(result)}")
    return output_text(result.stdout)


def set_begin(run: SlurmRun, job_id: str, begin: datetime) -> None:
    """Move a pending job's earliest start."""
    argv = [*IN_UTC, "scontrol", "update", f"JobId={job_id}", f"StartTime={format_time(begin)}"]
    checked(run, argv, "scontrol update StartTime")


_WOULD_START = re.compile(r"to start at (\S+)")


def estimated_start(
    run: SlurmRun,
    *,
    partition: str | None,
    account: str | None,
    qos: str | None,
    gpus: int,
    nodes: int,
    time_limit_minutes: int,
) -> datetime:
    """When Slurm would start such a job if it were submitted now (`sbatch --test-only`, which
    submits nothing): the queue's estimate, from the backfill scheduler's view of running jobs'
    time limits."""
    argv = sbatch_argv(
        script="", job_name="harchos-estimate", partition=partition, account=account, qos=qos,
        gpus=gpus, nodes=nodes, time_limit_minutes=time_limit_minutes, begin=None,
        signal_before_s=None, requeue=False, output="/dev/null", chdir="",
        extra=["--test-only", "--wrap=true"],
    )  # fmt: skip
    result = run(argv, check=False)
    said = output_text(result.stderr or b"") + output_text(result.stdout or b"")
    found = _WOULD_START.search(said)
    if result.returncode != 0 or found is None:
        raise SlurmCommandError(f"sbatch --test-only failed: {failure_line(result)}")
    start = parse_time(found.group(1))
    if start is None:
        raise SlurmCommandError(f"sbatch --test-only gave no start: {found.group(0)!r}")
    return start


def _split_outside_parentheses(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


_GRES_GPU = re.compile(r"^gpu(?::(?P<type>[^:(]+))?(?::(?P<count>\d+))?(?:\(.*\))?$")


def gpus_in_gres(gres: str) -> int:
    """How many GPUs a node's Gres names: `gpu:2`, `gpu:a100:4`, `gpu:a100:4(S:0-1)`, several
    comma-separated; `(null)` or none: 0."""
    gres = gres.strip()
    if gres.lower() in ("", "(null)", "n/a"):
        return 0
    total = 0
    for entry in _split_outside_parentheses(gres):
        if not entry.startswith("gpu"):
            continue
        match = _GRES_GPU.match(entry)
        if not match:
            raise SlurmCommandError(f"Slurm printed an unexpected Gres: {gres[:200]!r}")
        count, kind = match.group("count"), match.group("type")
        if count is None and kind is not None and kind.isdigit():
            count = kind  # `gpu:2`: the only field is the count
        total += int(count) if count is not None else 1
    return total


def parse_sinfo_node_line(line: str) -> NodeInfo:
    """One line of `sinfo -N -o '%N|%t|%c|%G'`."""
    fields = [field.strip() for field in line.split("|")]
    if len(fields) != 4 or not fields[0] or not fields[2].isdigit():
        raise SlurmCommandError(f"sinfo printed an unexpected line: {line.strip()[:200]!r}")
    name, state, cpus, gres = fields
    return NodeInfo(name=name, state=state, cpus=int(cpus), gpus=gpus_in_gres(gres))


def partition_info(run: SlurmRun, partition: str) -> PartitionInfo:
    """The partition's state and its nodes (state, CPUs, GPUs from Gres).
    `PartitionNotFoundError` when the cluster has no such partition."""
    if not partition:
        raise PartitionNotFoundError("no Slurm partition given",
                                     "set the hub's partition (see `sinfo -s`)")  # fmt: skip
    shown = run(["scontrol", "-o", "show", "partition", partition], check=False)
    text = output_text(shown.stdout).strip()
    if shown.returncode != 0 or not text:
        message = failure_line(shown)
        if "not found" in message.lower() or (shown.returncode == 0 and not text):
            raise PartitionNotFoundError(
                f"Slurm has no partition {partition!r}",
                "`sinfo -s` lists the cluster's partitions",
            )
        raise SlurmCommandError(f"scontrol show partition failed: {message}")
    fields = dict(item.split("=", 1) for item in text.splitlines()[0].split() if "=" in item)
    nodes_out = checked(run, ["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%t|%c|%G"], "sinfo")
    nodes: dict[str, NodeInfo] = {}
    for line in nodes_out.splitlines():
        if line.strip():
            node = parse_sinfo_node_line(line)
            nodes.setdefault(node.name, node)
    return PartitionInfo(name=partition, state=fields.get("State", "UNKNOWN"),
                         nodes=tuple(nodes.values()))  # fmt: skip
