"""A real single-node Slurm cluster (MUNGE, slurmctld, slurmd) in a private folder, for tests.

Everything lives under the cluster's folder: MUNGE key and socket, slurm.conf, state, spool, pid
and log files. Daemons listen on free loopback ports, so a cluster started here does not touch a
system Slurm. Clients reach it through `SLURM_CONF` (`cluster.env`). Measured facts behind the
settings: /work/shared/reference/slurm.md.

Fixture: `slurm_cluster` (session-scoped; conftest imports it). It fails, never skips, when the
Slurm packages are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from harchos_cli.hubs.slurm_cli import (
    IN_UTC,
    SlurmCommandError,
    SlurmRun,
    checked,
    failure_line,
    output_text,
    parse_time,
)

INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
PROGRAMS = ("slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel",
            "munged", "mungekey", "munge", "unmunge")  # fmt: skip


def missing_programs() -> list[str]:
    """The Slurm and MUNGE programs not installed here."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in PROGRAMS if shutil.which(name, path=search) is None]


def _program(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search) or name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SlurmCluster:
    """One node (this machine, `hostname -s`) in one default partition, `partition`; or, with
    `nodes` > 1, that many nodes `n1`, `n2`, ... all on this machine (one slurmd each, on ports
    of their own: Slurm's multiple-slurmd mode), for jobs that span machines."""

    def __init__(self, base: Path, partition: str = "debug", nodes: int = 1) -> None:
        self.base = base
        self.partition = partition
        self.nodes = nodes
        self.conf = base / "slurm.conf"
        self.munge_socket = base / "munge" / "munge.socket"
        self.env: dict[str, str] = {"SLURM_CONF": str(self.conf)}
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}

    def _write_config(self) -> None:
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir(parents=True, exist_ok=True)
        # munged refuses a socket folder that others cannot search.
        munge_dir.chmod(0o755)
        for name in ("state", "spool", "log"):
            (self.base / name).mkdir(exist_ok=True)
        # The node line as slurmd sees this machine (its first line; the second is UpTime).
        node = subprocess.run(
            [_program("slurmd"), "-C"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        node_name = node.split()[0].removeprefix("NodeName=")
        log = self.base / "log"
        slurmd_files = [
            f"SlurmdSpoolDir={self.base / 'spool'}",
            f"SlurmdPidFile={self.base / 'slurmd.pid'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
        ]
        node_lines = [f"{node} NodeAddr=127.0.0.1 State=UNKNOWN"]
        members = node_name
        if self.nodes > 1:
            # Each slurmd of this machine keeps its own files (%n: its node name).
            slurmd_files = [
                f"SlurmdSpoolDir={self.base / 'spool'}-%n",
                f"SlurmdPidFile={self.base / 'slurmd'}-%n.pid",
                f"SlurmdLogFile={log / 'slurmd'}-%n.log",
            ]
            described = " ".join(node.split()[1:])
            node_lines = [
                f"NodeName={name} NodeHostname={node_name} NodeAddr=127.0.0.1 "
                f"Port={_free_port()} {described} State=UNKNOWN"
                for name in self.node_names
            ]
            members = ",".join(self.node_names)
        lines = [
            "ClusterName=harchos-test",
            f"SlurmctldHost={node_name}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "MinJobAge=300",
            # Seconds between SIGTERM and SIGKILL on cancel or time limit (default 30).
            "KillWait=2",
            f"StateSaveLocation={self.base / 'state'}",
            f"SlurmctldPidFile={self.base / 'slurmctld.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            *slurmd_files,
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            *node_lines,
            f"PartitionName={self.partition} Nodes={members} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))

    def _start(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.base / "log" / log_name).open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self._daemons.append(process)
        self._names[process.pid] = Path(argv[0]).name
        return process

    def start(self) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld and slurmd, and wait until the node
        is idle."""
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"Slurm is not installed (missing {', '.join(missing)}): {INSTALL}")
        self.base.mkdir(parents=True, exist_ok=True)
        self._write_config()
        key = self.base / "munge" / "munge.key"
        subprocess.run([_program("mungekey"), "-c", "-f", "-k", str(key)], check=True,
                       capture_output=True)  # fmt: skip
        key.chmod(0o600)
        self._start(
            [_program("munged"), "-F", "--force", "-S", str(self.munge_socket),
             f"--key-file={key}", f"--pid-file={self.base / 'munge' / 'munged.pid'}",
             f"--log-file={self.base / 'log' / 'munged.log'}",
             f"--seed-file={self.base / 'munge' / 'munged.seed'}"],
            "munged.out",
        )  # fmt: skip
        self._wait(self._munge_works, "munged", 10)
        conf = str(self.conf)
        self._start([_program("slurmctld"), "-D", "-i", "-f", conf], "slurmctld.out")
        if self.nodes == 1:
            self._start([_program("slurmd"), "-D", "-f", conf], "slurmd.out")
        for name in self.node_names if self.nodes > 1 else []:
            self._start([_program("slurmd"), "-D", "-f", conf, "-N", name], f"slurmd-{name}.out")
        self._wait(self._node_idle, "the nodes to be idle", 30)
        return self

    @property
    def node_names(self) -> list[str]:
        return [f"n{index}" for index in range(1, self.nodes + 1)]

    def _munge_works(self) -> bool:
        socket_arg = ["-S", str(self.munge_socket)]
        encoded = subprocess.run([_program("munge"), *socket_arg, "-n"], capture_output=True,
                                 check=False)  # fmt: skip
        if encoded.returncode != 0:
            return False
        decoded = subprocess.run([_program("unmunge"), *socket_arg], input=encoded.stdout,
                                 capture_output=True, check=False)  # fmt: skip
        return decoded.returncode == 0

    def _node_idle(self) -> bool:
        result = self.client(["sinfo", "-h", "-p", self.partition, "-o", "%t %D"])
        return result.returncode == 0 and result.stdout.strip() == f"idle {self.nodes}"

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    name = self._names[daemon.pid]
                    raise RuntimeError(
                        f"{name} exited ({daemon.returncode}) while waiting for {what}:\n"
                        f"{self.logs()}"
                    )
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def client(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                              env={**os.environ, **self.env})  # fmt: skip

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for path in sorted((self.base / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-20:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and kill whatever is left of this cluster: job
        steps (slurmstepd) and their processes carry `SLURM_CONF` in their environment."""
        if any(daemon.poll() is None for daemon in self._daemons):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.client(["scancel", "--full", "--user", str(os.getuid())], timeout=10)
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(10)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)
        self._daemons.clear()
        kill_processes_with_env(f"SLURM_CONF={self.conf}".encode())


def kill_processes_with_env(marker: bytes) -> int:
    """SIGKILL every process (but this one) whose environment holds `marker` exactly; how many."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


@pytest.fixture(name="slurm_cluster", scope="session")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node cluster (partition `debug`) for the whole session."""
    missing = missing_programs()
    if missing:
        pytest.fail(f"Slurm is not installed (missing {', '.join(missing)}); install it with: "
                    f"{INSTALL}", pytrace=False)  # fmt: skip
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="slurm_pair", scope="session")
def slurm_pair_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running two-node cluster (`n1`, `n2`, both this machine; partition `pair`)."""
    missing = missing_programs()
    if missing:
        pytest.fail(f"Slurm is not installed (missing {', '.join(missing)}); install it with: "
                    f"{INSTALL}", pytrace=False)  # fmt: skip
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-pair"), partition="pair", nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# Driving the cluster as a user would, through a transport's `run` (the product's own calls are
# in harchos_cli.hubs.slurm_cli and the hub runner).

PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"})
_UNKNOWN_JOB = ("invalid job id", "unknown job", "job not found")


@dataclass(frozen=True)
class SlurmJob:
    """A job as `squeue` shows it. `start` is the actual or expected start, None when Slurm
    does not know it."""

    job_id: str
    state: str
    reason: str
    start: datetime | None
    elapsed: str
    time_limit: str
    nodes: str

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES


def submit(run: SlurmRun, argv: Sequence[str]) -> str:
    """Run an `sbatch --parsable` command line; the job id (without a `;cluster` suffix)."""
    out = checked(run, argv, "sbatch").strip()
    job_id = out.splitlines()[-1].split(";", 1)[0].strip() if out else ""
    if not job_id.isdigit():
        raise SlurmCommandError(f"sbatch printed no job id: {out[:200]!r}")
    return job_id


SQUEUE_FORMAT = "%i|%T|%r|%S|%M|%l|%N"


def parse_squeue_line(line: str) -> SlurmJob:
    """One line of `squeue -o SQUEUE_FORMAT` (printed under TZ=UTC)."""
    fields = line.rstrip("\n").split("|")
    if len(fields) != 7 or not fields[0].strip():
        raise SlurmCommandError(f"squeue printed an unexpected line: {line.strip()[:200]!r}")
    job_id, state, reason, start, elapsed, limit, nodes = (field.strip() for field in fields)
    return SlurmJob(job_id=job_id, state=state, reason=reason, start=parse_time(start),
                    elapsed=elapsed, time_limit=limit, nodes=nodes)  # fmt: skip


def _unknown_job(result: subprocess.CompletedProcess[bytes]) -> bool:
    return any(marker in output_text(result.stderr or b"").lower() for marker in _UNKNOWN_JOB)


def job_state(run: SlurmRun, job_id: str) -> SlurmJob | None:
    """The job as `squeue` shows it (any state); None once Slurm no longer knows it."""
    argv = [*IN_UTC, "squeue", "-h", "-j", job_id, "-t", "all", "-o", SQUEUE_FORMAT]
    result = run(argv, check=False)
    if result.returncode != 0:
        if _unknown_job(result):
            return None
        raise SlurmCommandError(f"squeue failed: {failure_line(result)}")
    # A job array or heterogeneous job prints several lines; the job asked for comes first.
    for line in output_text(result.stdout).splitlines():
        if line.strip():
            job = parse_squeue_line(line)
            if job.job_id.split("_", 1)[0].split("+", 1)[0] == job_id or job.job_id == job_id:
                return job
    return None


def estimated_start(run: SlurmRun, job_id: str) -> datetime | None:
    """When Slurm expects a pending job to start (`squeue --start`); None when it does not say
    (or the job is not pending)."""
    argv = [*IN_UTC, "squeue", "--start", "-h", "-j", job_id, "-o", "%i|%S"]
    result = run(argv, check=False)
    if result.returncode != 0:
        if _unknown_job(result):
            return None
        raise SlurmCommandError(f"squeue --start failed: {failure_line(result)}")
    for line in output_text(result.stdout).splitlines():
        shown_id, _, start = line.partition("|")
        if shown_id.strip() == job_id:
            return parse_time(start)
    return None


def cancel(run: SlurmRun, job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
    """`scancel`: end the job, or with `signal` only signal it (`batch_only`: just the batch
    shell, not its steps)."""
    argv = ["scancel"]
    if signal:
        argv.append(f"--signal={signal}")
    if batch_only:
        argv.append("--batch")
    argv.append(job_id)
    checked(run, argv, "scancel")


def requeue(run: SlurmRun, job_id: str) -> None:
    """Put a running or finished batch job back in the queue (`scontrol requeue`)."""
    checked(run, ["scontrol", "requeue", job_id], "scontrol requeue")
