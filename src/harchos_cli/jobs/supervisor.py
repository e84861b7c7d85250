"""The supervisor: drives one job `waiting → syncing → running → done`, and survives its own death.

One supervisor per job, guaranteed by an exclusive `flock` on the job's lock file (released by the
kernel when the process dies, even by SIGKILL). Every stage is restartable:

- waiting: the plan and the simulated clock's anchor are in the store; a new supervisor re-plans
  and waits for the same moment;
- syncing: rsync and the setup marker (per project folder on the hub and content hash) make a
  second pass cheap;
- running: followed with the hub, command and folder saved when syncing ended (never reloaded
  from harchos.toml or the inventory); launch is idempotent by job id on the hub, and the log is
  read from the last offset the store recorded, so nothing runs twice and no log line is lost
  or repeated.

`harchos run --detach` starts the supervisor as `python -m harchos_cli.jobs.supervisor JOB_ID` in
its own session; `revive()` (run at the start of `harchos run` and `harchos jobs`) restarts any
active job whose supervisor is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from harchos_cli.errors import HarchosError, HubError
from harchos_cli.hubs.base import LOCAL, Hub, HubUnreachableError, LaunchSpec
from harchos_cli.jobs import launchers
from harchos_cli.jobs.clock import from_json
from harchos_cli.jobs.liveness import (
    AlreadySupervisedError,
    is_supervised,
    spawn,
    supervisor_lock,
)
from harchos_cli.jobs.request import Forecaster, Prepared, Request, get_hub, make_plan
from harchos_cli.jobs.store import (
    ACTIVE,
    Job,
    JobStateName,
    JobStore,
    job_dir,
    log_path,
    new_id,
)
from harchos_cli.timeparse import floor_hour, iso, parse_instant, utcnow

HEARTBEAT_S = 2.0
TICK_S = 0.25  # real seconds between checks while waiting (cancel, countdown)
POLL_S = 0.25  # real seconds between log reads while running on this machine
REMOTE_POLL_S = 1.0  # ... and over SSH, where each read is a round trip
STATUS_EVERY_S = 5.0  # a local job's status is asked for at least this often
CANCEL_GRACE_S = 30.0
MAX_BACKOFF_S = 30.0
SYNC_ATTEMPTS = 5
NOTHING_RAN = "cancelled before it started; nothing ran"


class Reporter(Protocol):
    """Where a supervisor tells what happens: a terminal, or the job's supervisor.log."""

    def planned(self, job: Job, plan: dict[str, Any], *, replanned: bool) -> None: ...

    def waiting(self, job: Job, now: datetime, start: datetime) -> None: ...

    def stage(self, job: Job, stage: str, detail: str) -> None: ...

    def output(self, data: bytes) -> None: ...

    def notice(self, message: str) -> None: ...


class FileReporter:
    """The detached supervisor's reporter: one line per event in `supervisor.log`."""

    def __init__(self, job_id: str) -> None:
        self.path = job_dir(job_id) / "supervisor.log"

    def _line(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(f"{iso(utcnow())} {text}\n")

    def planned(self, job: Job, plan: dict[str, Any], *, replanned: bool) -> None:
        del job
        verb = "re-planned" if replanned else "planned"
        self._line(f"{verb}: start {plan.get('planned_start')} on {plan.get('hub')}")

    def waiting(self, job: Job, now: datetime, start: datetime) -> None:
        del job, now, start

    def stage(self, job: Job, stage: str, detail: str) -> None:
        del job
        self._line(f"{stage}: {detail}")

    def output(self, data: bytes) -> None:
        del data

    def notice(self, message: str) -> None:
        self._line(message)


class _Heartbeat(threading.Thread):
    def __init__(self, job_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id = job_id
        self.stopped = threading.Event()

    def run(self) -> None:
        store = JobStore()
        try:
            while not self.stopped.wait(HEARTBEAT_S):
                store.update(self.job_id, heartbeat=iso(utcnow()))
        finally:
            store.close()


class Supervisor:
    """Drives one job to a final state. Use `run()`; see the module docstring."""

    def __init__(
        self,
        job_id: str,
        reporter: Reporter | None = None,
        *,
        store: JobStore | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.job_id = job_id
        self.store = store or JobStore()
        self.reporter: Reporter = reporter or FileReporter(job_id)
        self.sleep = sleep

    def run(self, create: Callable[[], object] | None = None) -> Job:
        """Supervise until the job is done, failed or cancelled; return its final row.

        Args:
            create: records the job's row, called once the lock is held, so that no other
                `harchos` (reviving jobs without a supervisor) can take a new job over.

        Raises:
            AlreadySupervisedError: another process supervises the job.
        """
        with supervisor_lock(self.job_id):
            if create is not None:
                create()
            self.store.update(self.job_id, supervisor_pid=os.getpid(), heartbeat=iso(utcnow()))
            beat = _Heartbeat(self.job_id)
            beat.start()
            try:
                return self._loop()
            finally:
                beat.stopped.set()

    def _loop(self) -> Job:
        stages = {"waiting": self._wait, "syncing": self._sync, "running": self._run}
        while True:
            job = self.store.get(self.job_id)
            stage = stages.get(job.state)
            if stage is None:
                return job
            try:
                stage(job)
            except HarchosError as exc:
                # Bad input found before launch (the hub was removed, harchos.toml broken
                # meanwhile), or a hub step that failed for good (wrong Python, refused login,
                # changed host key): a restarted supervisor would fail the same way.
                self._fail(job, str(exc), hub_failed=isinstance(exc, HubError))

    def _fail(self, job: Job, message: str, *, hub_failed: bool = False) -> None:
        self.store.advance(
            job.id, [job.state], "failed", finished_at=iso(utcnow()), message=message,
            failure="hub" if hub_failed else None,
        )  # fmt: skip
        self.reporter.stage(job, "failed", message)

    def _cancel(self, job: Job, message: str) -> None:
        if self.store.advance(
            job.id, list(ACTIVE), "cancelled", finished_at=iso(utcnow()), message=message
        ):
            self.reporter.stage(job, "cancelled", message)

    # -- waiting -----------------------------------------------------------------------------

    def _wait(self, job: Job) -> None:
        request = Request.from_json(job.request, job.project_dir)
        clock = from_json(request.clock)
        if not request.defer or job.planned_start is None:
            self.store.advance(job.id, ["waiting"], "syncing")
            return
        forecaster: Forecaster | None = None
        start = parse_instant(job.planned_start)
        refreshed = floor_hour(clock.now())
        final_check = False
        while True:
            current = self.store.get(job.id)
            if current.state != "waiting":
                return
            if current.cancel_requested:
                self._cancel(job, NOTHING_RAN)
                return
            now = clock.now()
            if now >= start:
                if not final_check:
                    # Once more just before starting: the forecast may have changed.
                    final_check = True
                    forecaster = forecaster or Forecaster(request.provider, request.project)
                    start = self._replan(job, request, forecaster, now, start)
                    if start > now:
                        continue
                break
            if floor_hour(now) > refreshed:
                # A new hour: providers publish a new forecast; re-plan on it.
                refreshed = floor_hour(now)
                forecaster = forecaster or Forecaster(request.provider, request.project)
                start = self._replan(job, request, forecaster, now, start)
                final_check = False
                continue
            self.reporter.waiting(current, now, start)
            wake = min(start, refreshed + timedelta(hours=1))
            self.sleep(min(TICK_S, max(clock.real_seconds((wake - now).total_seconds()), 0.0)))
        if self.store.advance(job.id, ["waiting"], "syncing"):
            self.reporter.stage(job, "syncing", f"starting on hub {job.hub}")

    def _replan(
        self, job: Job, request: Request, forecaster: Forecaster, now: datetime, start: datetime
    ) -> datetime:
        try:
            plan = make_plan(request, forecaster, now)
        except HarchosError as exc:
            self.reporter.notice(f"re-planning failed ({exc}); keeping the plan to start at "
                                 f"{iso(start)}")  # fmt: skip
            return start
        data = plan.as_json()
        new_start = plan.choice.start
        hub = self.store.get(job.id).hub
        if new_start <= now and plan.choice.hub == hub:
            # Still "start now": the planned window is the one already recorded.
            return now
        if new_start != start or plan.choice.hub != hub:
            self.store.update(job.id, plan=data, planned_start=iso(new_start), hub=plan.choice.hub)
            self.reporter.planned(self.store.get(job.id), data, replanned=True)
        return new_start

    # -- syncing -----------------------------------------------------------------------------

    def _hub(self, job: Job, request: Request) -> Hub:
        assert job.hub is not None
        return get_hub(job.hub, request.project)

    def _sync(self, job: Job) -> None:
        from harchos_cli.hubs import inventory, remote_project_dir, transport_for

        request = Request.from_json(job.request, job.project_dir)
        hub = self._hub(job, request)
        transport = transport_for(hub)
        project = request.project
        # Normalised by the spec (`./ckpt/` is `ckpt`); an absolute one is outside the project.
        checkpoints = project.spec.job.checkpoint_dir
        protect = [] if checkpoints.startswith(("/", "~")) else [f"/{checkpoints}/"]
        delay = 1.0
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            try:
                self.reporter.stage(job, "syncing", f"project to hub {hub.name}")
                remote = transport.sync_up(
                    project.root, remote_project_dir(hub, project.root),
                    protect=[*protect, "/outputs/"],
                )  # fmt: skip
                if not self._setup(job, project.spec.job.setup, hub, transport, remote):
                    return
                break
            except HubUnreachableError as exc:
                # Only lost contact is retried; any other HubError fails the job (in `_loop`).
                if attempt == SYNC_ATTEMPTS:
                    self._fail(job, f"could not sync to hub {hub.name}: {exc}", hub_failed=True)
                    return
                self.reporter.notice(f"hub {hub.name}: {exc}; retrying in {delay:g} s")
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                if self.store.get(job.id).cancel_requested:
                    break
        if self.store.get(job.id).cancel_requested:
            self._cancel(job, NOTHING_RAN)
            return
        # From here on the job is followed with what is decided now, never by reloading the
        # project or the hub inventory: a broken harchos.toml or `hubs remove` cannot orphan it.
        spec = self.launch_spec(replace(job, remote_dir=remote), request, hub)
        launch = {
            "argv": list(spec.argv), "cwd": spec.cwd, "env": dict(spec.env),
            "hub": inventory.as_json(hub),
        }  # fmt: skip
        if self.store.advance(
            job.id, ["syncing"], "running", remote_dir=remote,
            request={**job.request, "launch": launch},
        ):  # fmt: skip
            self.reporter.stage(job, "running", f"on hub {hub.name} in {remote}")

    def _setup(self, job: Job, setup: str | None, hub: Hub, transport: Any, remote: str) -> bool:
        """Run `[job] setup` once per project folder on a machine and content hash; False when
        it failed (job failed). The record is a marker file beside the project on the hub, so a
        re-added hub, a moved project or a wiped folder runs setup again."""
        if not setup:
            return True
        request = Request.from_json(job.request, job.project_dir)
        digest = launchers.content_hash(request.project.root, setup)
        if (
            transport.run(
                launchers.setup_marker_argv(remote, digest, "check"), check=False
            ).returncode
            == 0
        ):
            return True
        self.reporter.stage(job, "setup", setup)
        result = transport.run(launchers.setup_argv(remote, setup), check=False)
        output = result.stdout + result.stderr
        _truncate_log(job.id, self.store.get(job.id).local_log_size)
        self.store.update(job.id, local_log_size=_append_log(job.id, output))
        self.reporter.output(output)
        if result.returncode != 0:
            self.store.advance(
                job.id, ["syncing"], "failed", finished_at=iso(utcnow()),
                exit_code=result.returncode,
                message=f"setup failed on hub {hub.name} (exit {result.returncode}): {setup}",
            )  # fmt: skip
            return False
        transport.run(launchers.setup_marker_argv(remote, digest, "record"))
        return True

    # -- running -----------------------------------------------------------------------------

    @staticmethod
    def launch_spec(job: Job, request: Request, hub: Hub) -> LaunchSpec:
        """The exact command, folder and environment the job runs with on its hub."""
        assert job.remote_dir is not None
        project = request.project
        if request.kind == "train":
            command = launchers.train_command(project, hub, request.args)
        else:
            command = launchers.batch_command(project, request.args)
        env = launchers.job_env(
            job_id=job.id,
            hub=hub.name,
            region=hub.region,
            checkpoint_dir=launchers.checkpoint_dir(job.remote_dir, project, job.id),
        )
        return LaunchSpec(job.id, command.argv, job.remote_dir, {**command.env, **env})

    def _run(self, job: Job) -> None:
        from harchos_cli.hubs import inventory, jobs_for

        saved = job.request["launch"]
        hub = inventory.from_json(saved["hub"])
        spec = LaunchSpec(job.id, saved["argv"], saved["cwd"], saved["env"])
        remote_jobs = jobs_for(hub)
        peek = _LocalPeek(remote_jobs, job.id) if hub.transport == LOCAL else None
        # A supervisor killed between appending to the local log and recording it would
        # append the same bytes again: cut the log back to what the store says it holds.
        _truncate_log(job.id, job.local_log_size)
        offset = job.log_offset
        launched = job.launched
        signalled_at: float | None = None
        killed = False
        last_status = 0.0
        delay = 1.0
        while True:
            current = self.store.get(job.id)
            if current.cancel_requested and not launched:
                self._cancel(job, NOTHING_RAN)
                return
            try:
                if not launched:
                    remote_jobs.launch(spec)
                    launched = True
                    self.store.update(job.id, launched=True, started_at=iso(utcnow()))
                    self.reporter.stage(job, "launched", launchers.render(spec.argv))
                status = None
                if peek is None or peek.exited() or time.monotonic() - last_status > STATUS_EVERY_S:
                    status = remote_jobs.status(job.id)
                    last_status = time.monotonic()
                if delay > 1.0:
                    self.reporter.notice(f"reconnected to hub {hub.name}")
                    self.store.update(job.id, message=None)
                    delay = 1.0
                offset = self._drain(job.id, remote_jobs, peek, offset)
                if status is not None and status.state == "exited":
                    offset = self._drain(job.id, remote_jobs, peek, offset)
                    self._finish(job, status.exit_code)
                    return
                if status is not None and status.state == "absent":
                    # Launched, yet its folder is gone (wiped, or another machine): running it
                    # again could run it twice, so the job is lost.
                    self._fail(
                        job, f"the job's folder vanished from hub {hub.name}; not relaunched",
                        hub_failed=True,
                    )  # fmt: skip
                    return
                if current.cancel_requested:
                    if signalled_at is None:
                        remote_jobs.signal(job.id, signal.SIGTERM)
                        signalled_at = time.monotonic()
                        self.reporter.notice("cancel requested: SIGTERM sent to the job")
                    elif not killed and time.monotonic() - signalled_at > CANCEL_GRACE_S:
                        remote_jobs.signal(job.id, signal.SIGKILL)
                        killed = True
            except HubUnreachableError as exc:
                if self.store.get(job.id).cancel_requested:
                    self._cancel(
                        job, f"cancelled, but hub {hub.name} could not be reached ({exc}): "
                        f"the workload may still be running there",
                    )  # fmt: skip
                    return
                message = f"lost contact with hub {hub.name} ({exc}); retrying in {delay:g} s"
                self.reporter.notice(message)
                self.store.update(job.id, message=message)
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except HubError as exc:
                # Not a lost connection: retrying cannot help (wrong Python, refused login,
                # changed host key, missing folder).
                where = f"; the workload may still be running on hub {hub.name}" if launched else ""
                self._fail(job, f"{exc}{where}", hub_failed=True)
                return
            self.sleep(POLL_S if peek is not None else REMOTE_POLL_S)

    def _drain(self, job_id: str, remote_jobs: Any, peek: _LocalPeek | None, offset: int) -> int:
        while True:
            data = peek.read(offset) if peek is not None else remote_jobs.read_log(job_id, offset)
            if not data:
                return offset
            size = _append_log(job_id, data)
            offset += len(data)
            self.store.update(job_id, log_offset=offset, local_log_size=size)
            self.reporter.output(data)

    def _finish(self, job: Job, exit_code: int | None) -> None:
        current = self.store.get(job.id)
        state: JobStateName
        message: str | None
        if current.cancel_requested:
            state, message = "cancelled", "cancelled while running"
        elif exit_code == 0:
            state, message = "done", None
        elif exit_code is None:
            state, message = "failed", "the job's process vanished without an exit code"
        else:
            state, message = "failed", f"exited with code {exit_code}"
        self.store.advance(
            job.id, ["running"], state, exit_code=exit_code, finished_at=iso(utcnow()),
            message=message,
        )  # fmt: skip
        self.reporter.stage(job, state, message or "exit code 0")


class _LocalPeek:
    """On this machine, the job's files are read directly (documented layout of the hub's job
    directory: `log`, and `exit_code` written atomically at exit), so following a local job costs
    a file read per poll instead of a Python start-up; status still comes from the hub layer."""

    def __init__(self, remote_jobs: Any, job_id: str) -> None:
        self.folder = Path(remote_jobs.job_dir(job_id))

    def exited(self) -> bool:
        return (self.folder / "exit_code").exists()

    def read(self, offset: int) -> bytes:
        try:
            with (self.folder / "log").open("rb") as handle:
                handle.seek(offset)
                return handle.read(1 << 20)
        except FileNotFoundError:
            return b""


def _append_log(job_id: str, data: bytes) -> int:
    """Append to the job's local log; its size after."""
    path = log_path(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(data)
        return handle.tell()


def _truncate_log(job_id: str, size: int) -> None:
    path = log_path(job_id)
    try:
        if path.stat().st_size > size:
            os.truncate(path, size)
    except FileNotFoundError:
        pass


def request_cancel(store: JobStore, job_id: str) -> Job:
    """Cancel a job: a waiting one at once; otherwise its supervisor (restarted if need be)
    stops it: one that has not launched never does, a running one gets SIGTERM on its hub (the
    training contract's "save and exit"), then SIGKILL. Never waits on the hub itself."""
    job = store.get(job_id)
    if not job.active:
        return job
    store.update(job.id, cancel_requested=True)
    if job.state == "waiting" and store.advance(
        job.id, ["waiting"], "cancelled", finished_at=iso(utcnow()), message=NOTHING_RAN
    ):
        return store.get(job.id)
    if not is_supervised(job.id):
        spawn(job.id)
    return store.get(job.id)


def create_job(prepared: Prepared, *, detached: bool, job_id: str | None = None) -> Job:
    """Record a planned job (state `waiting`, or `syncing` when it starts at once)."""
    request, plan = prepared.request, prepared.plan
    job = Job(
        id=job_id or new_id(),
        kind=request.kind,
        name=request.project.name,
        project_dir=str(request.project.root),
        state="waiting" if request.defer else "syncing",
        request=request.as_json(),
        hub=plan.choice.hub,
        detached=detached,
        planned_start=iso(plan.choice.start),
        plan=plan.as_json(),
    )
    store = JobStore()
    try:
        return store.create(job)
    finally:
        store.close()


def dry_run(prepared: Prepared) -> dict[str, Any]:
    """What `harchos run --dry-run` shows: the plan and the exact commands, nothing run."""
    from harchos_cli.hubs import remote_project_dir

    request, plan = prepared.request, prepared.plan
    hub = get_hub(plan.choice.hub, request.project)
    root = request.project.root
    remote = str(root) if hub.transport == LOCAL else remote_project_dir(hub, root)
    job = Job(
        id=new_id(), kind=request.kind, name=request.project.name, project_dir=str(root),
        state="waiting", request=request.as_json(), hub=hub.name, remote_dir=remote,
    )  # fmt: skip
    spec = Supervisor.launch_spec(job, request, hub)
    setup = request.project.spec.job.setup
    return {
        "job_id": job.id,
        "dry_run": True,
        **plan.as_json(),
        "sync": None
        if hub.transport == LOCAL
        else {"from": str(root), "to": f"{hub.name}:{remote}", "never": [".git"]},
        "setup": None if not setup else {"command": launchers.setup_argv(remote, setup)},
        "launch": {"argv": list(spec.argv), "cwd": spec.cwd, "env": dict(spec.env)},
        "command_line": launchers.render(spec.argv, spec.env, spec.cwd),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m harchos_cli.jobs.supervisor JOB_ID`: the detached supervisor."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harchos_cli.jobs.supervisor JOB_ID", file=sys.stderr)
        return 2
    # Detached: a hang-up of the terminal that started it must not stop it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        job = Supervisor(args[0]).run()
    except AlreadySupervisedError:
        return 0
    except HarchosError as exc:
        print(f"harchos supervisor: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0 if job.state == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
