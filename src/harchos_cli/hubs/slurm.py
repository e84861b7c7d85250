"""Slurm clusters as hubs: the job is handed to Slurm, which queues and places it.

harchos never schedules inside a cluster. It submits with `sbatch` (deferral by `--begin`, so a
deferred job waits in Slurm's queue; GPUs by `--gres`; a time limit from the deadline with
`--signal=B:USR1@N` and `--requeue`, so the training contract saves before the limit and the job
continues), follows the job through its folder on the cluster's shared filesystem like any hub's
job, and keeps what Slurm does not do: forecasts, choosing the cluster and the time, moves
between hubs, accounting. The runner (`_runner.py`) does the submitting, so that launching stays
idempotent per job id; this module adds what only a cluster has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from harchos_cli.hubs.base import Hub
from harchos_cli.hubs.processes import HubJobs
from harchos_cli.hubs.slurm_cli import PartitionInfo, partition_info, sbatch_argv, set_begin

# The default of `[job] save_before_limit`: Slurm may signal up to 60 s earlier than asked; two
# minutes leave a step time to finish.
SIGNAL_BEFORE_S = 120


class SlurmJobs(HubJobs):
    """`RemoteJobs` on a Slurm cluster (see the module docstring)."""

    def set_begin(self, slurm_job_id: str, begin: datetime) -> None:
        """Move a pending job's earliest start (`scontrol update StartTime=`)."""
        set_begin(self.transport.run, slurm_job_id, begin)

    def partition(self) -> PartitionInfo:
        """The hub's partition as `sinfo`/`scontrol` describe it."""
        return partition_info(self.transport.run, self.hub.partition or "")


def sbatch_options(
    hub: Hub,
    *,
    job_name: str,
    cwd: str,
    gpus: int,
    begin: datetime | None,
    time_limit: timedelta | None,
    nodes: int = 1,
    signal_before_s: int = SIGNAL_BEFORE_S,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """The `slurm` part of a launch spec: the `sbatch` command line for this job on `hub`
    (`gpus` on each of `nodes` machines; with more than one, the batch script starts one
    `accelerate launch` per machine through `srun`), and how many machines."""
    minutes = None if time_limit is None else max(1, math.ceil(time_limit / timedelta(minutes=1)))
    signal_before = None
    if minutes is not None:
        # At most a quarter of the time limit (at least 10 s), and what sbatch accepts.
        signal_before = min(signal_before_s, max(10, minutes * 60 // 4), 65535)
    argv = sbatch_argv(
        script="",
        job_name="",  # the runner names the job (it looks the name up before submitting)
        partition=hub.partition,
        account=hub.account,
        qos=hub.qos,
        gpus=gpus,
        nodes=nodes,
        time_limit_minutes=minutes,
        begin=begin.astimezone(UTC) if begin else None,
        signal_before_s=signal_before,
        requeue=True,
        output="",
        chdir=cwd,
        extra=extra,
    )
    return {"sbatch": argv, "job_name": job_name, "nodes": nodes}
