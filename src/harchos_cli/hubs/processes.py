"""Detached jobs on a hub through any `Transport`: the `RemoteJobs` implementation.

Each call sends `_runner.py` on stdin to the hub's Python (`PYTHON - COMMAND ARGS...`), so the hub
needs nothing installed but Python 3.8+, and no argument ever meets a shell unquoted.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal as signals
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harchos_cli import paths
from harchos_cli.errors import HubError, UsageError
from harchos_cli.hubs.base import (
    Hub,
    HubUnreachableError,
    JobStatus,
    LaunchSpec,
    SlurmQueue,
    Transport,
    in_place,
)

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_JOBS_ROOT = "~/.harchos/jobs"
LOG_CHUNK = 1 << 20
_BAD_REQUEST = 3
_NOT_FOUND = 127


@functools.cache
def _source() -> str:
    return (Path(__file__).parent / "_runner.py").read_text(encoding="utf-8")


def _payload(spec: str = "") -> bytes:
    source = _source()
    return f"{source}\nmain(sys.argv[1:], source={source!r}, spec={spec!r})\n".encode()


def jobs_root(hub: Hub) -> str:
    """Where job directories live on `hub`: `~/.harchos/jobs` there.

    On the local hub, `HARCHOS_HOME` (which moves all user state) moves it to `$HARCHOS_HOME/jobs`.
    """
    if in_place(hub) and os.environ.get("HARCHOS_HOME"):
        return str(paths.data_dir() / "jobs")
    return DEFAULT_JOBS_ROOT


def check_job_id(job_id: str) -> str:
    """`job_id` when it is a valid job id (letters, digits, `.`, `_`, `-`; at most 128)."""
    if not JOB_ID.match(job_id):
        raise UsageError(
            f"invalid job id {job_id!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return job_id


class HubJobs:
    """`RemoteJobs` on one hub, over its transport.

    Every step is idempotent (launch by job id), so a step whose connection failed is retried
    with exponential backoff (`attempts` tries in all) before `HubUnreachableError` propagates.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        root: str | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.hub = transport.hub
        self.root = root if root is not None else jobs_root(transport.hub)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._sleep = sleep

    def _call(self, *args: str, timeout: float = 60.0, spec: str = "") -> bytes:
        delay = self.backoff_s
        payload = _payload(spec)
        for attempt in range(1, self.attempts + 1):
            try:
                result = self.transport.run(
                    [self.hub.python, "-", *args], stdin=payload, timeout=timeout, check=False
                )
            except HubUnreachableError:
                if attempt == self.attempts:
                    raise
                self._sleep(delay)
                delay *= 2
                continue
            if result.returncode == 0:
                return result.stdout
            stderr = result.stderr.decode(errors="replace").strip()
            if result.returncode == _NOT_FOUND and "harchos-runner" not in stderr:
                raise HubError(
                    f"Python {self.hub.python!r} was not found on hub {self.hub.name!r}",
                    hint="give the hub's Python 3.8+ with --python when adding the hub",
                )
            message = stderr.removeprefix("harchos-runner: ").splitlines()
            raise HubError(
                f"hub {self.hub.name!r}: {message[-1] if message else 'the job runner failed'}",
                hint=None if result.returncode == _BAD_REQUEST else f"exit {result.returncode}",
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _status(self, raw: bytes) -> JobStatus:
        data = json.loads(raw.decode().strip().splitlines()[-1])
        queue = data.get("queue")
        return JobStatus(
            state=data["state"],
            pid=data["pid"],
            exit_code=data["exit_code"],
            log_size=int(data["log_size"]),
            queue=SlurmQueue(str(queue["job_id"]), str(queue["state"]), str(queue["reason"]),
                             queue.get("start")) if queue else None,
        )  # fmt: skip

    def job_dir(self, job_id: str) -> str:
        """The job's directory on the hub, absolute."""
        return f"{self.transport.expand(self.root).rstrip('/')}/{check_job_id(job_id)}"

    def launch(self, spec: LaunchSpec) -> JobStatus:
        """Start `spec` detached on the hub unless a job with its id exists there already.

        Returns the job's status either way (a second launch with the same id starts nothing).
        """
        fields: dict[str, Any] = {
            "argv": list(spec.argv), "cwd": spec.cwd, "env": dict(spec.env),
            "secret_env": list(spec.secret_env),
        }  # fmt: skip
        if spec.meter is not None:
            fields["meter"] = dict(spec.meter)
        if spec.slurm is not None:
            fields["slurm"] = dict(spec.slurm)
        body = json.dumps(fields)
        if not spec.argv:
            raise UsageError("nothing to launch: the command is empty")
        # The spec travels on stdin, never on a command line the hub's users could read.
        return self._status(
            self._call("launch", self.root, check_job_id(spec.job_id), "-", spec=body)
        )

    def status(self, job_id: str) -> JobStatus:
        """The job as the hub's files say: absent, running, or exited (with its exit code;
        `exit_code` None when it vanished without one, e.g. the hub rebooted)."""
        return self._status(self._call("status", self.root, check_job_id(job_id)))

    def read_log(self, job_id: str, offset: int, limit: int = LOG_CHUNK) -> bytes:
        """Up to `limit` log bytes from `offset` on (empty when nothing new); call again with
        `offset + len(result)` to follow, also after a reconnect."""
        return self._call("log", self.root, check_job_id(job_id), str(offset), str(limit))

    def read_meter(self, job_id: str, offset: int, limit: int = LOG_CHUNK) -> bytes:
        """Up to `limit` bytes of the job's meter samples (`meter.jsonl`) from `offset` on; they
        stay on the hub, so a dropped link loses none. The last line may be incomplete: parse
        up to the last newline and ask again from there."""
        return self._call("meter", self.root, check_job_id(job_id), str(offset), str(limit))

    def signal(self, job_id: str, signum: int) -> bool:
        """Deliver `signum` to the job's workers (those registered under the training contract,
        else the process groups under its launcher; SIGKILL to all of them); False when it is
        not running."""
        raw = self._call("signal", self.root, check_job_id(job_id), str(int(signum)))
        return bool(json.loads(raw.decode().strip().splitlines()[-1])["sent"])

    def digest(self, folder: str, *, timeout_s: float = 600.0) -> dict[str, str]:
        """`{relative path: sha256}` of every file under `folder` on the hub."""
        raw = self._call("digest", folder, timeout=timeout_s)
        sums = json.loads(raw.decode().strip().splitlines()[-1])
        return {str(name): str(digest) for name, digest in sums.items()}

    def terminate(self, job_id: str, signum: int) -> bool:
        """Deliver `signum` to the job's own process only (a server that stops its children
        itself); False when it is not running."""
        raw = self._call("terminate", self.root, check_job_id(job_id), str(int(signum)))
        return bool(json.loads(raw.decode().strip().splitlines()[-1])["sent"])

    def free_port(self, start: int = 0) -> int:
        """A TCP port free on the hub now: the first from `start` up (0: any), for a multi-node
        launch's rendezvous or a replica."""
        raw = self._call("port", str(int(start)))
        return int(json.loads(raw.decode().strip().splitlines()[-1])["port"])

    def info(self, workdir: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """The hub's Python version, GPUs (`nvidia-smi`; [] without), home and free disk (GB)
        at `workdir` or its nearest existing parent."""
        raw = self._call("info", workdir, timeout=timeout_s)
        return dict(json.loads(raw.decode().strip().splitlines()[-1]))

    def cancel(self, job_id: str, *, grace_s: float = 30.0, poll_s: float = 0.2) -> JobStatus:
        """Stop the job: SIGTERM (the training contract saves a checkpoint and exits 85), then
        SIGKILL if it is still running after `grace_s`. Returns the final status."""
        if not self.signal(job_id, signals.SIGTERM):
            return self.status(job_id)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            state = self.status(job_id)
            if state.state != "running":
                return state
            self._sleep(poll_s)
        self.signal(job_id, signals.SIGKILL)
        for _ in range(100):
            state = self.status(job_id)
            if state.state != "running":
                return state
            self._sleep(poll_s)
        return self.status(job_id)
