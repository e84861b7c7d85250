"""The Slurm command wrappers against a real single-node cluster (the `slurm_cluster` fixture),
and their parsers on literal output. The client commands run with TZ=America/New_York, so a time
that came out right proves the wrappers' own UTC handling."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import slurm
from polling import wait_until
from slurm import SlurmCluster, parse_squeue_line

from harchos_cli.errors import HubError
from harchos_cli.hubs import slurm_cli
from harchos_cli.hubs.slurm_cli import (
    PartitionNotFoundError,
    SlurmCommandError,
    SlurmRun,
    gpus_in_gres,
    parse_sinfo_node_line,
)

CLIENT_TZ = "America/New_York"


class LocalRun:
    """A transport's `run` on this machine, against the test cluster."""

    def __init__(self, cluster: SlurmCluster) -> None:
        self.env = {**os.environ, **cluster.env, "TZ": CLIENT_TZ}

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            env=self.env,
            timeout=timeout or 30,
            check=False,
        )
        if check and result.returncode != 0:
            raise HubError(f"{argv[0]} failed")
        return result


@pytest.fixture
def run(slurm_cluster: SlurmCluster) -> Iterator[SlurmRun]:
    """The runner; every job still queued or running when the test ends is cancelled."""
    runner = LocalRun(slurm_cluster)
    yield runner
    slurm_cluster.client(["scancel", "--user", str(os.getuid())])


def script(where: Path, body: str) -> str:
    path = where / "job.sh"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def submit(run: SlurmRun, where: Path, body: str, **options: Any) -> str:
    fields: dict[str, Any] = {
        "script": script(where, body),
        "job_name": "harchos-test",
        "partition": "debug",
        "account": None,
        "qos": None,
        "gpus": 0,
        "nodes": 1,
        "time_limit_minutes": None,
        "begin": None,
        "signal_before_s": None,
        "requeue": False,
        "output": str(where / "slurm.out"),
        "chdir": str(where),
    }
    fields.update(options)
    return slurm.submit(run, slurm_cli.sbatch_argv(**fields))


def state_of(run: SlurmRun, job_id: str) -> str:
    job = slurm.job_state(run, job_id)
    return job.state if job else "GONE"


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def test_begin_pends_exactly_then_set_begin_moves_it_and_it_runs(
    run: SlurmRun, tmp_path: Path
) -> None:
    begin = whole_second(datetime.now(UTC) + timedelta(minutes=1))
    job_id = submit(run, tmp_path, "echo ran > ran\n", begin=begin)
    job = slurm.job_state(run, job_id)
    assert job is not None
    assert (job.state, job.reason, job.start) == ("PENDING", "BeginTime", begin)
    assert job.pending
    assert slurm.estimated_start(run, job_id) == begin

    sooner = whole_second(datetime.now(UTC) + timedelta(seconds=5))
    slurm_cli.set_begin(run, job_id, sooner)
    moved = slurm.job_state(run, job_id)
    assert moved is not None
    assert moved.start == sooner
    wait_until(lambda: state_of(run, job_id) == "COMPLETED", timeout=20)
    assert (tmp_path / "ran").read_text() == "ran\n"
    assert datetime.now(UTC) >= sooner


def test_a_job_runs_and_finishes(run: SlurmRun, tmp_path: Path) -> None:
    job_id = submit(run, tmp_path, 'echo "$SLURM_JOB_ID" > id\necho to-output\n')
    wait_until(lambda: state_of(run, job_id) == "COMPLETED", timeout=15)
    assert (tmp_path / "id").read_text() == f"{job_id}\n"
    assert "to-output" in (tmp_path / "slurm.out").read_text()
    finished = slurm.job_state(run, job_id)
    assert finished is not None
    assert finished.nodes == socket.gethostname().split(".")[0]
    assert not finished.pending
    assert finished.start is not None


def test_usr1_to_the_batch_shell_reaches_its_trap(run: SlurmRun, tmp_path: Path) -> None:
    body = "trap 'echo got-usr1 > trapped; exit 0' USR1\ntouch ready\nwhile :; do sleep 0.1; done\n"
    job_id = submit(run, tmp_path, body, signal_before_s=30, time_limit_minutes=5)
    wait_until((tmp_path / "ready").exists, timeout=15)
    slurm.cancel(run, job_id, signal="USR1", batch_only=True)
    wait_until((tmp_path / "trapped").exists, timeout=5)
    assert (tmp_path / "trapped").read_text() == "got-usr1\n"
    wait_until(lambda: state_of(run, job_id) == "COMPLETED", timeout=10)


def test_requeue_runs_the_job_again(run: SlurmRun, tmp_path: Path) -> None:
    body = "echo run >> runs\nsleep 300\n"
    job_id = submit(run, tmp_path, body, requeue=True)
    wait_until((tmp_path / "runs").exists, timeout=15)
    slurm.requeue(run, job_id)
    # A requeued job may start again only after cred_expire + 1 s (11 s here).
    wait_until(lambda: (tmp_path / "runs").read_text() == "run\nrun\n", timeout=25)
    assert state_of(run, job_id) == "RUNNING"
    slurm.cancel(run, job_id)


def test_cancel_leaves_nothing_queued_or_running(
    run: SlurmRun, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job_id = submit(run, tmp_path, "echo $$ > pid\nexec sleep 300\n")
    wait_until((tmp_path / "pid").exists, timeout=15)
    pid = int((tmp_path / "pid").read_text())
    slurm.cancel(run, job_id)
    wait_until(lambda: state_of(run, job_id) == "CANCELLED", timeout=10)
    queued = slurm_cluster.client(["squeue", "-h", "-j", job_id])
    assert queued.returncode == 0
    assert queued.stdout.strip() == ""
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)


def test_hostile_job_names_and_arguments_arrive_literally(run: SlurmRun, tmp_path: Path) -> None:
    name = 'it\'s "a" $(touch pwned-name) `touch pwned-tick` job;\nrm -rf x'
    arguments = ["a b", "'single'", '"double"', "$(touch pwned-arg)", "two\nlines", "*", "-x", ""]
    body = 'printf "%s\\0" "$@" > args\nprintf "%s" "$SLURM_JOB_NAME" > name\n'
    job_id = submit(run, tmp_path, body, job_name=name, script_args=arguments)
    wait_until(lambda: state_of(run, job_id) == "COMPLETED", timeout=15)
    assert (tmp_path / "args").read_bytes() == b"".join(a.encode() + b"\0" for a in arguments)
    assert (tmp_path / "name").read_text() == name
    assert not list(tmp_path.glob("pwned*"))


def test_partition_info_reports_the_node_and_its_cpus(run: SlurmRun) -> None:
    info = slurm_cli.partition_info(run, "debug")
    node_line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(item.split("=", 1) for item in node_line.split() if "=" in item)
    assert info.name == "debug"
    assert info.state == "UP"
    assert [node.name for node in info.nodes] == [fields["NodeName"]]
    assert info.cpus == int(fields["CPUs"])
    assert info.gpus == 0
    assert info.nodes[0].state in ("idle", "mix", "alloc")


def test_a_missing_partition_is_a_clear_error(run: SlurmRun) -> None:
    with pytest.raises(PartitionNotFoundError) as raised:
        slurm_cli.partition_info(run, "no-such-partition")
    assert raised.value.message == "Slurm has no partition 'no-such-partition'"
    assert raised.value.hint
    assert "sinfo" in raised.value.hint


def test_an_unknown_job_is_none(run: SlurmRun) -> None:
    assert slurm.job_state(run, "999999") is None
    assert slurm.estimated_start(run, "999999") is None


def test_a_refused_submission_names_the_reason(run: SlurmRun, tmp_path: Path) -> None:
    with pytest.raises(SlurmCommandError, match=r"^sbatch failed: .*partition"):
        submit(run, tmp_path, "true\n", partition="no-such-partition")


# Parsers and command lines, on literal text.


def test_sbatch_argv_passes_begin_in_utc_and_gres_only_for_gpus() -> None:
    # 10:30:05 in Berlin is 09:30:05 UTC.
    local_begin = datetime(2026, 3, 1, 10, 30, 5, tzinfo=ZoneInfo("Europe/Berlin"))
    argv = slurm_cli.sbatch_argv(
        script="/s/job.sh", job_name="n", partition="gpu", account="acct", qos="high", gpus=2,
        nodes=1, time_limit_minutes=90, begin=local_begin, signal_before_s=120, requeue=True,
        output="/s/out", chdir="/s", extra=["--exclusive"],
    )  # fmt: skip
    assert argv == [
        "env", "TZ=UTC", "sbatch", "--parsable", "--nodes=1", "--open-mode=append",
        "--job-name=n", "--partition=gpu", "--account=acct", "--qos=high", "--gres=gpu:2",
        "--time=90", "--begin=2026-03-01T09:30:05", "--signal=B:USR1@120", "--requeue",
        "--output=/s/out", "--chdir=/s", "--exclusive", "/s/job.sh",
    ]  # fmt: skip
    bare = slurm_cli.sbatch_argv(
        script="", job_name="", partition=None, account=None, qos=None, gpus=0, nodes=1,
        time_limit_minutes=None, begin=None, signal_before_s=None, requeue=False, output="",
        chdir="",
    )  # fmt: skip
    assert bare == ["env", "TZ=UTC", "sbatch", "--parsable", "--nodes=1", "--open-mode=append",
                    "--no-requeue"]  # fmt: skip
    with pytest.raises(ValueError, match="timezone-aware"):
        slurm_cli.format_time(datetime(2026, 3, 1))


class Printed:
    """A `run` that prints fixed output."""

    def __init__(self, stdout: bytes, returncode: int = 0, stderr: bytes = b"") -> None:
        self.result = (stdout, returncode, stderr)
        self.argv: list[str] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        self.argv = list(argv)
        stdout, code, stderr = self.result
        return subprocess.CompletedProcess(self.argv, code, stdout, stderr)


def test_submit_strips_the_cluster_suffix_and_rejects_no_id() -> None:
    assert slurm.submit(Printed(b"4242;cluster-a\n"), ["sbatch"]) == "4242"
    assert slurm.submit(Printed(b"17\n"), ["sbatch"]) == "17"
    with pytest.raises(SlurmCommandError, match="no job id"):
        slurm.submit(Printed(b"Submitted batch job x\n"), ["sbatch"])
    with pytest.raises(SlurmCommandError, match=r"^sbatch failed: Invalid account$"):
        slurm.submit(Printed(b"", 1, b"sbatch: error: Batch job\nInvalid account\n"), ["x"])


def test_parse_squeue_lines() -> None:
    pending = parse_squeue_line("12|PENDING|BeginTime|2026-11-30T18:30:00|0:00|1:00:00|\n")
    assert pending.start == datetime(2026, 11, 30, 18, 30, tzinfo=UTC)
    assert (pending.state, pending.reason, pending.nodes, pending.pending) == (
        "PENDING", "BeginTime", "", True)  # fmt: skip
    running = parse_squeue_line("13|RUNNING|None|2026-11-30T18:00:01|1:02|UNLIMITED|node[1-2]")
    assert (running.elapsed, running.time_limit, running.nodes) == ("1:02", "UNLIMITED",
                                                                    "node[1-2]")  # fmt: skip
    assert parse_squeue_line("14|PENDING|Priority|N/A|0:00|5:00|").start is None
    for malformed in ("", "12|PENDING", "12|PENDING|x|yesterday|0:00|1:00|", "|R|a|N/A|0|1|n"):
        with pytest.raises(SlurmCommandError) as raised:
            parse_squeue_line(malformed)
        assert "\n" not in raised.value.message


def test_job_state_picks_the_job_and_fails_on_other_errors() -> None:
    printed = Printed(b"7|RUNNING|None|2026-11-30T18:00:01|0:05|1:00|vm\n")
    job = slurm.job_state(printed, "7")
    assert job is not None
    assert job.nodes == "vm"
    assert printed.argv[:3] == ["env", "TZ=UTC", "squeue"]
    gone = Printed(b"", 1, b"slurm_load_jobs error: Invalid job id specified\n")
    assert slurm.job_state(gone, "7") is None
    down = Printed(b"", 1, b"slurm_load_jobs error: Unable to contact slurm controller\n")
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        slurm.job_state(down, "7")


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("(null)", 0),
        ("", 0),
        ("gpu:2", 2),
        ("gpu:a100:4", 4),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:2(S:0),gpu:v100:1(S:1)", 3),
        ("gpu:h100:8(S:0-1),shard:16", 8),
        ("gpu", 1),
        ("gpu:a100", 1),
        ("mps:100,gpu:1", 1),
        ("gpu:a100:4(IDX:0,2-3)", 4),
    ],
)
def test_gpus_in_gres(gres: str, gpus: int) -> None:
    assert gpus_in_gres(gres) == gpus


def test_malformed_gres_and_sinfo_lines_raise() -> None:
    with pytest.raises(SlurmCommandError, match="Gres"):
        gpus_in_gres("gpu:a100:x:y")
    node = parse_sinfo_node_line("gpu01|mix|64|gpu:a100:4(S:0-1)")
    assert (node.name, node.state, node.cpus, node.gpus) == ("gpu01", "mix", 64, 4)
    with pytest.raises(SlurmCommandError, match="sinfo printed"):
        parse_sinfo_node_line("gpu01|mix|many|gpu:1")
