"""The supervisor: drives one job `waiting → syncing → running → done`, and survives its own death.

One supervisor per job, guaranteed by an exclusive `flock` on the job's lock file (released by the
kernel when the process dies, even by SIGKILL). Every stage is restartable:

- waiting: the plan and the simulated clock's anchor are in the store; a new supervisor re-plans
  and waits for the same moment, then for a slot on its hub (`max_jobs`, `take_slot`); a
  detached job waits in the scheduler instead (`harchos_cli.jobs.scheduler`), which hands it to
  its supervisor when its start comes;
- syncing: rsync and the setup marker (per project folder on the hub and content hash) make a
  second pass cheap;
- running: followed with the hub, command and folder saved when syncing ended (never reloaded
  from harchos.toml or the inventory); launch is idempotent by job id on the hub, and the log is
  read from the last offset the store recorded, so nothing runs twice and no log line is lost
  or repeated.

`harchos run --detach` starts the supervisor as `python -m harchos_cli.jobs.supervisor JOB_ID` in
its own session (or, for a job that waits, the scheduler); `revive()` (run at the start of
`harchos run` and `harchos jobs`) restarts any active job's supervisor that is gone, and the
scheduler when a detached job waits without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from harchos_cli.errors import HarchosError, HubError, UsageError
from harchos_cli.hubs.base import (
    LOCAL,
    SLURM,
    Hub,
    HubUnreachableError,
    LaunchSpec,
    SlurmQueue,
    in_place,
)
from harchos_cli.jobs import autoshift, launchers
from harchos_cli.jobs.clock import from_json
from harchos_cli.jobs.liveness import (
    AlreadySupervisedError,
    is_supervised,
    spawn,
    supervisor_lock,
)
from harchos_cli.jobs.request import (
    Forecaster,
    Prepared,
    Request,
    get_hub,
    main_address,
    make_plan,
)
from harchos_cli.jobs.spec import Project
from harchos_cli.jobs.store import (
    ACTIVE,
    ATTEMPT_KEYS,
    LOST,
    SLOT_WAIT,
    Job,
    JobStateName,
    JobStore,
    job_dir,
    log_path,
    new_id,
)
from harchos_cli.timeparse import floor_hour, iso, parse_duration, parse_instant, utcnow

HEARTBEAT_S = 2.0
TICK_S = 0.25  # real seconds between checks while waiting (cancel, countdown)
SLOT_POLL_S = 1.0  # ... and while waiting for a slot on a hub (`max_jobs`)
POLL_S = 0.25  # real seconds between log reads while running on this machine
REMOTE_POLL_S = 1.0  # ... and over SSH, where each read is a round trip
STATUS_EVERY_S = 5.0  # a local job's status is asked for at least this often
CANCEL_GRACE_S = 30.0
MAX_BACKOFF_S = 30.0
SYNC_ATTEMPTS = 5
NOTHING_RAN = "cancelled before it started; nothing ran"
NODE_STOP_GRACE_S = 30.0  # the other machines of a failed multi-node attempt get this to exit
MAX_NODE_RESTARTS = 3
METER_READ_EVERY_S = 5.0  # real seconds between copies of the hubs' meter samples


PARKED = "parked"
"""Request key: when a detached job pending in Slurm's queue was left to the scheduler."""


def parkable(job: Job, queue: SlurmQueue) -> bool:
    """Whether a job in Slurm's queue needs no process of its own for now: deferred and held by
    its begin time (Slurm starts it), detached (nobody follows its output), and nothing asked of
    it (a cancel, a pause, a move). A job pending for resources may start any second, and its
    output and meter are followed from then: its supervisor stays."""
    return (
        waits_for_begin(job, queue) and job.detached and job.state == "running" and job.launched
        and not job.cancel_requested and not job.intent
    )  # fmt: skip


def waits_for_begin(job: Job, queue: SlurmQueue) -> bool:
    """Whether the deferred job is pending in Slurm only for the begin time harchos planned."""
    return queue.pending and queue.reason == "BeginTime" and bool(job.request.get("defer"))


def queues_in_slurm(job: Job, request: Request) -> bool:
    """Whether the deferred job waits in a Slurm queue: its hub is a cluster chosen for good
    (with `--hub auto` the choice may still change, so harchos waits until it is final)."""
    if request.hub == "auto" or not job.hub:
        return False
    try:
        return get_hub(job.hub, request.project).transport == SLURM
    except HarchosError:
        return False


def slot_limit(job: Job, project: Project, hub: str | None = None) -> int | None:
    """How many jobs hub `hub` (default the job's) runs at once (`max_jobs`); None: no hub, or
    no limit."""
    name = hub or job.hub
    return get_hub(name, project).max_jobs if name else None


def waits_for_slot(
    store: JobStore, job: Job, project: Project, hub: str | None = None
) -> str | None:
    """Why `job` may not start on hub `hub` (default its own) now: that hub runs its `max_jobs`
    already. The reason is recorded as the job's message (once); None when the hub has a free
    slot or no limit.

    Plans never book an hour beyond the slots, but a job that runs past its window, starts late
    or was started at once can still fill the hour another job is due in; that job then waits
    for a slot rather than start beside them (late for its deadline when every hour before it
    was full). The rule of the scheduler for the jobs it holds, of a supervisor for the job
    it starts itself, and of every resume (`resume_slot`); `take_slot` is its atomic form."""
    name = hub or job.hub
    slots = slot_limit(job, project, name)
    if slots is None:
        return None
    assert name is not None
    running = store.started_on(name)
    if running < slots:
        return None
    message = f"{SLOT_WAIT}hub {name} runs {running} job(s), its max_jobs"
    if job.message != message:
        store.update(job.id, message=message)
    return message


def take_slot(
    store: JobStore, job: Job, project: Project, *, on: str | None = None,
    slots: Callable[[str | None], int | None] | None = None,
    from_states: tuple[JobStateName, ...] = ("waiting",), **values: Any,
) -> bool:  # fmt: skip
    """Start the `job` (waiting, or stopped: one of `from_states`) on hub `on` (default its
    own): `→ syncing`, with `values`, if that hub has a free slot then (`slots`: its limit,
    default `slot_limit`), counted and taken in one UPDATE (`JobStore.admit`), so that of two
    processes that both saw a hub's last slot free only one takes it. True when it moved;
    False when it waits for a slot (its message says so, `waits_for_slot`) or is in none of
    `from_states` any more."""
    while True:
        name = on or job.hub
        limit = slots(name) if slots else slot_limit(job, project, name)
        if store.admit(job.id, name, limit, from_states=from_states, bound=job.hub,
                       **{"message": None, **values}):  # fmt: skip
            return True
        job = store.get(job.id)
        if job.state not in from_states or (limit and waits_for_slot(store, job, project, name)):
            return False
        # A slot came free, or the job was re-planned onto another hub, since the UPDATE.


def resume_limit(project: Project, hub: str | None) -> int | None:
    """The slots a resume on `hub` counts (`resume_slot`): its `max_jobs`; None for no limit, a
    Slurm cluster, or a hub that cannot be loaded any more."""
    if not hub:
        return None
    try:
        found = get_hub(hub, project)
    except HarchosError:
        return None
    return None if found.transport == SLURM else found.max_jobs


def resume_slot(
    store: JobStore, job: Job, project: Project, *, on: str | None = None,
    from_states: tuple[JobStateName, ...] = ("paused",), **values: Any,
) -> bool:  # fmt: skip
    """Go on with the stopped `job` (paused, or stopped on a move's target) on hub `on`
    (default its own; a move's target): `→ syncing` with `values` if that hub has a free slot,
    by the rule and the one atomic step of a start (`take_slot`). False when it stays as it is,
    its message saying it waits for a slot (or it is in none of `from_states` any more).

    Counted as at its start: a multi-node job takes a slot of its main hub only (its other
    machines' hubs are not counted), and a Slurm cluster's slots are not counted at all (its
    own queue holds the attempt until it has room, as it holds a job bound for it at its
    start). A hub that cannot be loaded any more is not counted either: the supervisor fails
    the job on it, as it would have without slots."""
    return take_slot(
        store, job, project, on=on, slots=lambda name: resume_limit(project, name),
        from_states=from_states, **values,
    )  # fmt: skip


def slurm_options(job: Job, request: Request, hub: Hub, hub_job_id: str) -> dict[str, Any]:
    """The `sbatch` command for this attempt on a Slurm hub: begins at the planned start (the
    job's clock mapped to the wall clock), ends by the deadline, asks for the job's GPUs."""
    from harchos_cli.hubs.slurm import sbatch_options

    clock = from_json(request.clock)
    now = clock.now()
    planned = parse_instant(job.planned_start) if job.planned_start else None
    begin = None
    if request.defer and planned is not None and planned > now:
        begin = utcnow() + timedelta(seconds=clock.real_seconds((planned - now).total_seconds()))
    deadline = (job.plan or {}).get("deadline")
    limit = None
    if deadline:
        left = parse_instant(deadline) - max(planned or now, now)
        limit = timedelta(seconds=clock.real_seconds(max(left.total_seconds(), 60.0)))
    gpus = request.gpus if request.kind == "train" else 0
    workers = job.request.get("workers")
    if gpus and workers:
        gpus = int(workers)
    assert job.remote_dir is not None
    # Real seconds, whatever the job's clock: saving a checkpoint takes as long either way.
    save_before = parse_duration(request.project.spec.job.save_before_limit).total_seconds()
    return sbatch_options(
        hub, job_name=f"harchos-{hub_job_id}", cwd=job.remote_dir, gpus=gpus, begin=begin,
        time_limit=limit, nodes=request.cluster_nodes,
        signal_before_s=max(1, round(save_before)),
    )  # fmt: skip


def meter_settings(request: Request, hub: Hub) -> dict[str, Any] | None:
    """What the hub's meter samples, and how often (None: `meter.interval` 0, no meter)."""
    from harchos_cli.config import Config

    config = Config.load({}, project_file=request.project.file)
    interval = float(config.get("meter.interval") or 0.0)
    if interval <= 0:
        return None
    return {"interval_s": interval, "cpu_tdp_w": hub.cpu_tdp_w}


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
        with _append_private(self.path) as handle:
            handle.write(f"{iso(utcnow())} {text}\n".encode())

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
        self.parked = False  # left to the scheduler while Slurm queues it

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
            if job.state == "paused" and job.request.get("resume_at"):
                stage = self._wait_resume  # paused by the policy, until greener hours
            if stage is None or self.parked:
                return job
            try:
                stage(job)
            except HarchosError as exc:
                # Bad input found before launch (the hub was removed, harchos.toml broken
                # meanwhile), or a hub step that failed for good (wrong Python, refused login,
                # changed host key): a restarted supervisor would fail the same way.
                self._fail(job, str(exc), hub_failed=isinstance(exc, HubError))

    def _fail(self, job: Job, message: str, *, hub_failed: bool = False) -> None:
        current = self.store.get(job.id)
        source = current.request.get("migrated_from")
        if source and current.state in ("syncing", "running") and not current.cancel_requested:
            # The target failed before the move was confirmed: the source still holds the
            # checkpoint the move started from, so the job goes on there.
            self._relaunch(
                current, source, "rollback",
                f"the move to hub {current.hub} failed ({message}); going on from the "
                f"checkpoint on hub {source}",
            )  # fmt: skip
            return
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

    def _relaunch(
        self, job: Job, hub: str, action: str, reason: str, *, intent: str | None = None,
        **request: Any,
    ) -> None:  # fmt: skip
        """A new attempt of a stopped job (paused at a checkpoint, or failed on a move's target):
        `running|syncing → syncing` on `hub`, where it resumes from the run's checkpoints;
        `intent` is what `_sync` still has to do first (a move).

        On its own hub the job keeps the slot it holds; on another (a rollback to the source)
        it takes one there as a resume does (`resume_slot`), and while that hub is full it
        waits paused there, at its checkpoint, for its supervisor to resume it."""
        gone = (*ATTEMPT_KEYS, "migrated_from")
        updated = {k: v for k, v in job.request.items() if k not in gone}
        updated = autoshift.stopped(updated, from_json(job.request.get("clock")).now())
        updated.update({k: v for k, v in request.items() if v is not None})
        values: dict[str, Any] = {
            "hub": hub, "attempt": job.attempt + 1, "launched": False, "log_offset": 0,
            "exit_code": None, "intent": intent, "request": updated, "message": None,
            "gpu_ids": None,
        }  # fmt: skip
        project = None
        if hub != job.hub:
            # Without its project the attempt fails on it, as it would have without slots.
            with contextlib.suppress(HarchosError):
                project = Request.from_json(job.request, job.project_dir).project
        if project is None:
            moved = self.store.advance(job.id, ["running", "syncing"], "syncing", **values)
        else:
            moved = resume_slot(self.store, job, project, on=hub,
                                from_states=("running", "syncing"), **values)  # fmt: skip
            if not moved:
                self._wait_for_slot(job, hub, action, reason, intent)
                return
        if moved:
            self.store.decide(job.id, action, hub, reason, attempt=job.attempt + 1)
            self.reporter.stage(job, action, reason)

    def _wait_for_slot(
        self, job: Job, hub: str, action: str, reason: str, intent: str | None
    ) -> None:
        """The stopped attempt could not go on on `hub`, whose slots are full: `paused` on
        `hub` (`hub` and `intent`: what is still to do), its checkpoints kept, and resumed by
        this supervisor (`_wait_resume`) once `hub` has a slot."""
        current = self.store.get(job.id)
        if current.state not in ("running", "syncing"):
            return
        message = current.message or ""
        # Its last attempt stays on record (`jobs pull`); the resume starts a new one.
        request = {k: v for k, v in current.request.items() if k != "migrated_from"}
        now = from_json(current.request.get("clock")).now()
        request = {**autoshift.stopped(request, now), "resume_at": iso(now)}
        if self.store.advance(
            job.id, ["running", "syncing"], "paused", hub=hub, intent=intent, request=request,
            gpu_ids=None,
        ):  # fmt: skip
            self.store.decide(job.id, action, hub, f"{reason}; {message}", attempt=job.attempt)
            self.reporter.stage(job, "paused", f"{reason}; {message}")

    # -- waiting -----------------------------------------------------------------------------

    def _wait(self, job: Job) -> None:
        request = Request.from_json(job.request, job.project_dir)
        clock = from_json(request.clock)
        if queues_in_slurm(job, request):
            # A Slurm hub waits in its own queue (`sbatch --begin`), not in this process.
            self.store.advance(job.id, ["waiting"], "syncing")
            return
        forecaster: Forecaster | None = None
        start = clock.now()  # a job that starts at once waits only for a slot
        final_check = True
        if request.defer and job.planned_start is not None:
            start = parse_instant(job.planned_start)
            final_check = False
        refreshed = floor_hour(clock.now())
        told = False
        while True:
            current = self.store.get(job.id)
            if current.state != "waiting":
                return
            if current.cancel_requested:
                self._cancel(job, NOTHING_RAN)
                return
            now = clock.now()
            if now >= start:
                waits = waits_for_slot(self.store, current, request.project)
                if waits is not None:
                    # A count, not a plan, while it waits (the scheduler's rule); the jobs it
                    # waits on end in real time, whatever the job's clock.
                    if not told:
                        told = True
                        self.reporter.notice(waits)
                    self.sleep(SLOT_POLL_S)
                    continue
                if not final_check:
                    # Once more just before starting: the forecast may have changed.
                    final_check = True
                    forecaster = forecaster or Forecaster(request.provider, request.project)
                    start = self._replan(job, request, forecaster, now, start)
                    if start > now:
                        continue
                current = self.store.get(job.id)  # the re-plan may have moved it to another hub
                if take_slot(self.store, current, request.project):
                    self.reporter.stage(current, "syncing", f"starting on hub {current.hub}")
                    return
                continue  # another job took the slot meanwhile
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

    def _replan(
        self, job: Job, request: Request, forecaster: Forecaster, now: datetime, start: datetime
    ) -> datetime:
        return replan(self.store, self.reporter, job, request=request, forecaster=forecaster,
                      now=now, start=start)  # fmt: skip

    # -- syncing -----------------------------------------------------------------------------

    def _hub(self, job: Job, request: Request) -> Hub:
        assert job.hub is not None
        return get_hub(job.hub, request.project)

    def _sync(self, job: Job) -> None:
        from harchos_cli.hubs import inventory

        if job.intent and job.intent.startswith("migrate:"):
            job = self._migrate(job, job.intent.removeprefix("migrate:"))
            if job.state != "syncing":  # paused until the target has a slot
                return
        request = Request.from_json(job.request, job.project_dir)
        hubs = [get_hub(name, request.project) for name in request.nodes or [job.hub or LOCAL]]
        remotes = []
        for hub in hubs:
            remote = self._sync_hub(job, request, hub)
            if remote is None or self.store.get(job.id).state != "syncing":
                return
            remotes.append(remote)
        if self.store.get(job.id).cancel_requested:
            self._cancel(job, NOTHING_RAN)
            return
        # From here on the job is followed with what is decided now, never by reloading the
        # project or the hub inventory: a broken harchos.toml or `hubs remove` cannot orphan it.
        gpu_ids = self._place(job, hubs, request)
        if gpu_ids is None:
            return
        ranks = self._rendezvous(request, hubs)
        specs = []
        for rank, (hub, remote) in enumerate(zip(hubs, remotes, strict=True)):
            spec = self.launch_spec(
                replace(job, remote_dir=remote), request, hub, ranks[rank] if ranks else None
            )
            if gpu_ids.get(hub.name):
                visible = ",".join(map(str, gpu_ids[hub.name]))
                spec = replace(spec, env={**spec.env, "CUDA_VISIBLE_DEVICES": visible})
            specs.append({
                "argv": list(spec.argv), "cwd": spec.cwd, "env": dict(spec.env),
                "secret_env": list(spec.secret_env), "hub": inventory.as_json(hub),
                "hub_job_id": spec.job_id, "meter": spec.meter, "slurm": spec.slurm,
            })  # fmt: skip
        launch = {
            **specs[0], "nodes": specs[1:],
            "pause_exit_code": request.project.spec.job.pause_exit_code,
            "workers": autoshift.workers_of(request, job.request.get("workers")),
        }  # fmt: skip
        request_now = self.store.get(job.id).request
        # Every hub the job ran on, as it was then: the ledger prices and places each attempt.
        used = {h["name"]: h for h in request_now.get("hubs_used") or []}
        used.update({hub.name: inventory.as_json(hub) for hub in hubs})
        if self.store.advance(
            job.id, ["syncing"], "running", remote_dir=remotes[0],
            request={**request_now, "launch": launch, "hubs_used": list(used.values())},
        ):  # fmt: skip
            where = ", ".join(f"hub {hub.name}" for hub in hubs)
            self.reporter.stage(job, "running", f"on {where} in {remotes[0]}")

    def _sync_hub(self, job: Job, request: Request, hub: Hub) -> str | None:
        """Sync the project to `hub` and run its setup there: the project's folder on the hub,
        or None when the job failed (or was cancelled meanwhile)."""
        from harchos_cli.hubs import remote_project_dir, transport_for

        transport = transport_for(hub)
        project = request.project
        # Normalised by the spec (`./ckpt/` is `ckpt`); an absolute one is outside the project.
        checkpoints = project.spec.job.checkpoint_dir
        protect = [] if checkpoints.startswith(("/", "~")) else [f"/{checkpoints}/"]
        delay = 1.0
        # A job with a deadline keeps trying while it can still finish by it (one that waited
        # hours for its window must not fail on a hub that is down for a minute).
        clock = from_json(request.clock)
        latest = request.deadline - request.duration if request.deadline else None
        attempt = 0
        while True:
            attempt += 1
            try:
                self.reporter.stage(job, "syncing", f"project to hub {hub.name}")
                remote = transport.sync_up(
                    project.root, remote_project_dir(hub, project.root),
                    protect=[*protect, "/outputs/"],
                )  # fmt: skip
                if not self._setup(job, project.spec.job.setup, hub, transport, remote):
                    return None
                return remote
            except HubUnreachableError as exc:
                # Only lost contact is retried; any other HubError fails the job (in `_loop`).
                later = clock.now() + timedelta(seconds=delay * clock.speedup)
                if attempt >= SYNC_ATTEMPTS and (latest is None or later >= latest):
                    why = f"after {attempt} attempts"
                    if latest is not None:
                        why += f", the last start that meets the deadline ({iso(latest)})"
                    self._fail(job, f"could not sync to hub {hub.name} {why}: {exc}",
                               hub_failed=True)  # fmt: skip
                    return None
                self.reporter.notice(f"hub {hub.name}: {exc}; retrying in {delay:g} s")
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                if self.store.get(job.id).cancel_requested:
                    self._cancel(job, NOTHING_RAN)
                    return None

    def _rendezvous(self, request: Request, hubs: list[Hub]) -> list[launchers.NodeRank] | None:
        """Each machine's rank, and where they meet: the main node's address (`--main-address`,
        else its SSH host; 127.0.0.1 when every machine is this one) and a port free there
        now. None for a job on one hub."""
        if len(hubs) < 2:
            return None
        from harchos_cli.hubs import jobs_for

        address = main_address(request, hubs)
        port = jobs_for(hubs[0]).free_port()
        self.reporter.notice(f"multi-node: {len(hubs)} machines meet at {address}:{port}")
        return [launchers.NodeRank(len(hubs), rank, address, port) for rank in range(len(hubs))]

    def _place(
        self, job: Job, hubs: list[Hub], request: Request
    ) -> dict[str, tuple[int, ...]] | None:
        """The GPUs this attempt gets on each hub (none where it asks for none or the hub's
        count is unknown); waits, queued, while other jobs hold them. None: stopped while
        queued."""
        workers = job.request.get("workers")
        need = request.gpus if request.kind == "train" else 0
        if need and workers:
            need = int(workers)
        # Slurm allocates a cluster's GPUs itself (`--gres`); harchos claims only its boxes'.
        wants = {
            hub.name: (hub.gpus, need)
            for hub in hubs
            if need and hub.gpus is not None and hub.transport != SLURM
        }
        if not wants:
            return {}
        queued = False
        while True:
            current = self.store.get(job.id)
            if current.cancel_requested or current.intent:
                if current.cancel_requested:
                    self._cancel(job, "cancelled while it waited for a GPU; nothing ran")
                else:
                    self._pause(current, "paused while it waited for a GPU", ["syncing"])
                return None
            ids = self.store.claim_gpus(job.id, wants)
            if ids is not None:
                return ids
            if not queued:
                queued = True
                held = ", ".join(f"hub {name}'s {total}" for name, (total, _) in wants.items())
                reason = f"queued: {need} GPU(s) wanted, {held} are held by jobs"
                self.store.update(job.id, message=f"{reason}; starts when they are free")
                self.store.decide(job.id, "queue", job.hub, reason, gpus=need)
                self.reporter.notice(reason)
            self.sleep(TICK_S * 4)

    def _setup(self, job: Job, setup: str | None, hub: Hub, transport: Any, remote: str) -> bool:
        """Run `[job] setup` once per project folder on a machine and content hash; False when
        it failed (job failed). The record is a marker file beside the project on the hub, so a
        re-added hub, a moved project or a wiped folder runs setup again.

        Setup runs under a lock in the project's folder on the hub (two runs of one project
        never run it at once; the second finds the marker and skips it), in a process group
        that ends when this supervisor dies, and a group left by a holder that died is ended
        by the next one (`launchers.setup_locked_argv`)."""
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
        argv = launchers.setup_locked_argv(remote, digest, setup)
        if in_place(hub):
            from harchos_cli.hubs.ssh import run_holding_stdin
            from harchos_cli.secrets import workload_environ

            result = run_holding_stdin(argv, env=workload_environ(os.environ))
        else:
            result = transport.run(argv, check=False, hold_stdin=True)
        output = result.stdout + result.stderr
        _truncate_log(job.id, self.store.get(job.id).local_log_size)
        self.store.update(job.id, local_log_size=_append_log(job.id, output))
        self.reporter.output(output)
        if result.returncode != 0:
            if self.store.get(job.id).request.get("migrated_from"):
                self._fail(job, f"setup failed on hub {hub.name} (exit {result.returncode})")
                return False
            self.store.advance(
                job.id, ["syncing"], "failed", finished_at=iso(utcnow()),
                exit_code=result.returncode,
                message=f"setup failed on hub {hub.name} (exit {result.returncode}): {setup}",
            )  # fmt: skip
            return False
        return True

    # -- running -----------------------------------------------------------------------------

    @staticmethod
    def launch_spec(
        job: Job, request: Request, hub: Hub, node: launchers.NodeRank | None = None
    ) -> LaunchSpec:
        """The exact command, folder and environment the job runs with on its hub (as machine
        `node` of a multi-node job: `<hub job id>-n<rank>` on the others)."""
        assert job.remote_dir is not None
        project = launchers.with_scale(request.project, job.request.get("workers"))
        in_cluster = hub.transport == SLURM and request.cluster_nodes > 1
        if in_cluster and node is None:
            node = launchers.NodeRank.slurm(request.cluster_nodes)
        if request.kind == "train":
            command = launchers.train_command(project, hub, request.args, node)
        else:
            command = launchers.batch_command(project, request.args)
        env = launchers.job_env(
            job_id=job.id,
            hub=hub.name,
            region=hub.region,
            checkpoint_dir=launchers.checkpoint_dir(job.remote_dir, project, job.run_id or job.id),
        )
        from harchos_cli.secrets import is_secret

        hub_id = job.hub_job_id if not node or node.rank == 0 else f"{job.hub_job_id}-n{node.rank}"
        if request.array:
            env["HARCHOS_ARRAY_ID"] = str(request.array["id"])
            env["HARCHOS_ARRAY_INDEX"] = str(request.array["index"])
        full = {**command.env, **env}
        secret = [name for name in full if is_secret(name, project.spec.job.secret_env)]
        # The meter watches the batch script's machine; Slurm's other machines go unseen, so a
        # multi-node job inside a cluster is estimated rather than half measured.
        meter = None if in_cluster else meter_settings(request, hub)
        slurm = slurm_options(job, request, hub, hub_id) if hub.transport == SLURM else None
        return LaunchSpec(
            hub_id, command.argv, job.remote_dir, full, secret, meter=meter, slurm=slurm
        )

    def _run(self, job: Job) -> None:
        from harchos_cli.hubs import inventory, jobs_for

        saved = job.request["launch"]
        nodes = [
            _Node.of(spec, job.id, rank, inventory.from_json(spec["hub"]), jobs_for)
            for rank, spec in enumerate([saved, *(saved.get("nodes") or [])])
        ]
        main = nodes[0]
        hub, hub_id, remote_jobs = main.hub, main.hub_id, main.jobs
        if job.request.get(PARKED):
            # Taken back from the scheduler: Slurm started it, or something is asked of it.
            unparked = {k: v for k, v in job.request.items() if k != PARKED}
            self.store.update(job.id, request=unparked)
            job = self.store.get(job.id)
        pause_code = int(saved.get("pause_exit_code") or 85)
        peek = _LocalPeek(remote_jobs, hub_id) if in_place(hub) else None
        # A supervisor killed between appending to the local log and recording it would
        # append the same bytes again: cut the log back to what the store says it holds.
        _truncate_log(job.id, job.local_log_size)
        offset = job.log_offset
        node_logs = {k: int(v) for k, v in (job.request.get("node_logs") or {}).items()}
        launched = job.launched
        clock = from_json(job.request.get("clock"))
        considered = floor_hour(clock.now())  # the policy looks again each new hour
        signalled: str | None = None  # the stop (cancel, pause, ...) every machine was sent
        delivered: dict[str, set[int]] = {}  # ... and the machines each stop reached so far
        signalled_at = 0.0
        killed = False
        exited: dict[int, int | None] = {}  # machine rank: its exit code
        stopping_at: float | None = None  # when a machine failed and the others were stopped
        last_status = 0.0
        last_meter = 0.0
        queue_hour = floor_hour(clock.now())  # a job pending in Slurm is re-planned hourly
        delay = 1.0
        while True:
            current = self.store.get(job.id)
            stop = "cancel" if current.cancel_requested else current.intent
            if stop and not launched:
                self._stop_unlaunched(current, stop)
                return
            try:
                if not launched:
                    for node in nodes:  # idempotent by the hub job id
                        node.jobs.launch(node.spec)
                    launched = True
                    # The policy counts work from each attempt's start (its clock, its size).
                    request = autoshift.started(
                        self.store.get(job.id).request, clock.now(), int(saved.get("workers") or 1)
                    )
                    self.store.update(
                        job.id, launched=True, started_at=iso(utcnow()), request=request
                    )
                    self.store.decide(
                        job.id, "start" if job.attempt <= 1 else "resume", hub.name,
                        f"launched attempt {job.attempt} on "
                        + ", ".join(f"hub {node.hub.name}" for node in nodes),
                        attempt=job.attempt, region=hub.region,
                    )  # fmt: skip
                    self.reporter.stage(job, "launched", launchers.render(main.spec.argv))
                status = None
                if peek is None or peek.exited() or time.monotonic() - last_status > STATUS_EVERY_S:
                    status = remote_jobs.status(hub_id)
                    last_status = time.monotonic()
                if status is not None and status.queue is not None:
                    queue_hour = self._follow_queue(job, status.queue, remote_jobs, queue_hour)
                    if self.parked:
                        return
                if delay > 1.0:
                    self.reporter.notice(f"reconnected to hub {hub.name}")
                    self.store.update(job.id, message=None)
                    delay = 1.0
                offset = self._drain(job.id, hub_id, remote_jobs, peek, offset)
                statuses = [status] + [
                    None if node.rank in exited else node.jobs.status(node.hub_id)
                    for node in nodes[1:]
                ]  # fmt: skip
                for node in nodes[1:]:
                    self._drain_node(job.id, node, node_logs, final=False)
                if time.monotonic() - last_meter > METER_READ_EVERY_S:
                    self._read_meters(job.id, nodes)
                    last_meter = time.monotonic()
                absent = [
                    n for n, s in zip(nodes, statuses, strict=True) if s and s.state == "absent"
                ]
                if absent:
                    # Launched, yet its folder is gone (wiped, or another machine): running it
                    # again could run it twice, so the job is lost.
                    for node in nodes:
                        if node not in absent and node.rank not in exited:
                            node.jobs.signal(node.hub_id, signal.SIGKILL)
                    self._fail(
                        job, f"the job's folder vanished from hub {absent[0].hub.name}; not "
                        "relaunched", hub_failed=True,
                    )  # fmt: skip
                    return
                for node, node_status in zip(nodes, statuses, strict=True):
                    if node_status is not None and node_status.state == "exited":
                        exited[node.rank] = node_status.exit_code
                if len(exited) == len(nodes):
                    offset = self._drain(job.id, hub_id, remote_jobs, peek, offset)
                    for node in nodes[1:]:
                        self._drain_node(job.id, node, node_logs, final=True)
                    self._read_meters(job.id, nodes)
                    self._all_exited(job, nodes, exited, pause_code)
                    return
                failed = [rank for rank, code in exited.items() if code not in (0, pause_code)]
                if failed and stopping_at is None:
                    # One machine failed: the others cannot go on without it (their collectives
                    # would wait for it), so they are told to save and exit, then killed.
                    stopping_at = time.monotonic()
                    self.reporter.notice(
                        f"machine {failed[0]} on hub {nodes[failed[0]].hub.name} exited with "
                        f"code {exited[failed[0]]}; stopping the others"
                    )
                    for node in nodes:
                        if node.rank not in exited:
                            node.jobs.signal(node.hub_id, signal.SIGTERM)
                elif (
                    stopping_at is not None and not killed
                    and time.monotonic() - stopping_at > NODE_STOP_GRACE_S
                ):  # fmt: skip
                    for node in nodes:
                        if node.rank not in exited:
                            node.jobs.signal(node.hub_id, signal.SIGKILL)
                    killed = True
                if not stop and launched and floor_hour(clock.now()) > considered:
                    considered = floor_hour(clock.now())
                    stop = autoshift.consider(self.store, self.store.get(job.id), clock)
                if stop and stop != signalled:
                    # Cancel asks the workload to save and exit (SIGTERM); pause, move and
                    # rescale ask for the same with SIGUSR1. Either reaches every worker.
                    signum = signal.SIGTERM if stop == "cancel" else signal.SIGUSR1
                    reached = delivered.setdefault(stop, set())
                    for node in nodes:
                        if (
                            node.rank not in reached and node.rank not in exited
                            and node.jobs.signal(node.hub_id, signum)
                        ):  # fmt: skip
                            reached.add(node.rank)
                    if len(reached | set(exited)) < len(nodes):
                        # Not yet delivered everywhere (the workers have not registered, or
                        # it just exited): asked again at the next poll.
                        self.sleep(POLL_S if peek is not None else REMOTE_POLL_S)
                        continue
                    signalled, signalled_at = stop, time.monotonic()
                    self.reporter.notice(
                        f"{stop.partition(':')[0]} requested: {signal.Signals(signum).name} sent "
                        "to the job's workers; they save at the next step boundary"
                    )
                elif (
                    signalled == "cancel" and not killed
                    and time.monotonic() - signalled_at > CANCEL_GRACE_S
                ):  # fmt: skip
                    for node in nodes:
                        node.jobs.signal(node.hub_id, signal.SIGKILL)
                    killed = True
            except HubUnreachableError as exc:
                message = f"lost contact with hub {hub.name} ({exc}); retrying in {delay:g} s"
                if self.store.get(job.id).cancel_requested:
                    # The job stays running, its cancel pending, until the hub confirms the
                    # workload ended: never "cancelled" while it may run on.
                    message = (
                        f"cancel pending: hub {hub.name} cannot be reached ({exc}); the "
                        f"workload may still run there, and is stopped once the hub answers "
                        f"(retrying in {delay:g} s)"
                    )
                self.reporter.notice(message)
                self.store.update(job.id, message=message)
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except HubError as exc:
                # Not a lost connection: retrying cannot help (wrong Python, refused login,
                # changed host key, missing folder).
                if launched:
                    self._lose(job, hub.name, exc)
                else:
                    self._fail(job, str(exc), hub_failed=True)
                return
            self.sleep(POLL_S if peek is not None else REMOTE_POLL_S)

    def _lose(self, job: Job, hub: str, exc: HubError) -> None:
        """The hub refuses harchos for good (a changed host key, a refused login) while the
        job's workload may still run there: `running → lost`, never failed, until `harchos jobs
        reattach` (or a cancel) takes it up again once the hub is trusted again."""
        current = self.store.get(job.id)
        pending = "; its cancel is pending" if current.cancel_requested else ""
        message = (
            f"lost track of the job: {exc}; its workload may still be running on hub {hub}"
            f"{pending}. Once the hub can be reached and trusted again: harchos jobs reattach "
            f"{job.id}"
        )
        if self.store.advance(job.id, ["running"], LOST, message=message, failure="hub"):
            self.store.decide(job.id, "lost", hub, message)
            self.reporter.stage(job, LOST, message)

    def _all_exited(
        self, job: Job, nodes: list[_Node], exited: dict[int, int | None], pause_code: int
    ) -> None:
        """Every machine of the attempt has exited: one exit code for the job, or, when a
        machine of a multi-node job failed, a new attempt of every machine from the newest
        checkpoint (at most `MAX_NODE_RESTARTS` times)."""
        codes = set(exited.values())
        if len(nodes) == 1 or codes in ({0}, {pause_code}):
            self._finish(job, exited[0], pause_code)
            return
        current = self.store.get(job.id)
        if current.cancel_requested:
            self._finish(job, exited[0], pause_code)
            return
        failed = [(r, code) for r, code in sorted(exited.items()) if code not in (0, pause_code)]
        reason = "; ".join(
            f"machine {r} on hub {nodes[r].hub.name} exited with code {code}" for r, code in failed
        )
        reason += "; every machine stopped"
        rank = failed[0][0]
        restarts = int(current.request.get("node_restarts") or 0)
        if restarts >= MAX_NODE_RESTARTS:
            self._end(current, "failed", exited[rank],
                      f"{reason} (after {restarts} restart(s) from the checkpoint)")  # fmt: skip
            return
        self._relaunch(
            current, current.hub or LOCAL, "restart",
            f"{reason}; all restart from the run's newest checkpoint",
            node_restarts=restarts + 1,
        )  # fmt: skip

    def _drain_node(
        self, job_id: str, node: _Node, offsets: dict[str, int], *, final: bool
    ) -> None:
        """Append machine `node`'s new log lines to the job's one log, each line prefixed with
        its hub (`[hub] ...`); a line still being written waits for its end, unless `final`.
        `offsets` (what each machine's log gave so far) is kept in step with the store's."""
        from harchos_cli.hubs import processes

        while True:
            offset = offsets.get(str(node.rank), 0)
            data = node.jobs.read_log(node.hub_id, offset)
            if not final and len(data) < processes.LOG_CHUNK:
                data = data[: data.rfind(b"\n") + 1]
            if not data:
                return
            prefix = f"[{node.hub.name}] ".encode()
            text = b"".join(prefix + line for line in data.splitlines(keepends=True))
            size = _append_log(job_id, text)
            offsets[str(node.rank)] = offset + len(data)
            request = {**self.store.get(job_id).request, "node_logs": dict(offsets)}
            self.store.update(job_id, local_log_size=size, request=request)
            self.reporter.output(text)

    def _follow_queue(
        self, job: Job, queue: SlurmQueue, remote_jobs: Any, considered: datetime
    ) -> datetime:
        considered = follow_queue(
            self.store, self.reporter, job, queue, remote_jobs, considered=considered
        )
        current = self.store.get(job.id)
        if parkable(current, queue):
            # Slurm holds and starts it: no process of its own until it runs (the scheduler
            # re-plans it hourly and hands it back when it leaves the queue or is stopped).
            from harchos_cli.jobs.liveness import start_scheduler

            self.store.update(job.id, request={**current.request, PARKED: iso(utcnow())})
            self.reporter.notice(
                f"Slurm queues the job: the scheduler holds it until it runs ({current.message})"
            )
            start_scheduler()
            self.parked = True
        return considered

    def _read_meters(self, job_id: str, nodes: list[_Node]) -> None:
        """Copy the machines' new meter samples into the store (from where the store says the
        last copy ended, so a restarted supervisor neither skips nor repeats one)."""
        from harchos_cli.meter.samples import SampleStore

        samples = SampleStore(self.store.db)
        for node in nodes:
            if not node.spec.meter:
                continue
            while True:
                offset = samples.offset(job_id, node.hub_id)
                data = node.jobs.read_meter(node.hub_id, offset)
                if samples.ingest(job_id, node.hub_id, node.hub.name, offset, data) == offset:
                    break

    def _stop_unlaunched(self, job: Job, stop: str) -> None:
        """A stop asked for before the attempt launched: nothing runs, nothing is lost."""
        if stop == "cancel":
            self._cancel(job, NOTHING_RAN if job.attempt <= 1 else "cancelled while it resumed")
        elif stop.startswith("migrate:"):
            self._relaunch(job, job.hub or LOCAL, "migrate", f"moving to hub {stop[8:]}",
                           intent=stop)  # fmt: skip
        else:
            self._pause(job, "paused before the attempt launched", ["syncing", "running"])

    def _pause(
        self, job: Job, message: str, expected: list[str], exit_code: int | None = None
    ) -> None:
        # Paused on a move's target: the move is confirmed.
        request = {k: v for k, v in job.request.items() if k != "migrated_from"}
        request = autoshift.stopped(request, from_json(job.request.get("clock")).now())
        if self.store.advance(
            job.id, expected, "paused", intent=None, message=message, request=request,
            exit_code=exit_code,
        ):  # fmt: skip
            self.store.decide(job.id, "pause", job.hub, message)
            self.reporter.stage(job, "paused", message)
            if exit_code is not None:  # the workload saved on the target: it made progress
                self._tidy_source(job)

    def _wait_resume(self, job: Job) -> None:
        """A job the policy paused: launch it again at the planned hour (or when asked); and a
        resume that found its hub's slots full (`resume_at` now): ask again every
        `SLOT_POLL_S` until one frees."""
        from harchos_cli.jobs.control import continue_job

        clock = from_json(job.request.get("clock"))
        told = False
        while True:
            current = self.store.get(job.id)
            if current.state != "paused" or not current.request.get("resume_at"):
                return
            resume_at = parse_instant(current.request["resume_at"])  # a resume by hand: now
            now = clock.now()
            if now >= resume_at:
                if continue_job(self.store, current, reason=f"greener hours: resuming at "
                                f"{iso(now)}", intent=current.intent, wake=False):  # fmt: skip
                    return
                current = self.store.get(job.id)
                if current.state == "paused" and not told:
                    told = True
                    self.reporter.notice(current.message or "")
                # A count, not a plan: the jobs it waits on end in real time.
                self.sleep(SLOT_POLL_S)
                continue
            self.reporter.waiting(current, now, resume_at)
            wait = clock.real_seconds((resume_at - now).total_seconds())
            self.sleep(min(TICK_S, max(wait, 0.0)))

    def _drain(
        self, job_id: str, hub_id: str, remote_jobs: Any, peek: _LocalPeek | None, offset: int
    ) -> int:
        while True:
            data = peek.read(offset) if peek is not None else remote_jobs.read_log(hub_id, offset)
            if not data:
                return offset
            size = _append_log(job_id, data)
            offset += len(data)
            self.store.update(job_id, log_offset=offset, local_log_size=size)
            self.reporter.output(data)

    def _finish(self, job: Job, exit_code: int | None, pause_code: int) -> None:
        current = self.store.get(job.id)
        intent = current.intent or ""
        if current.cancel_requested:
            message = "cancelled while running"
            if exit_code == pause_code:
                message += f"; it saved a checkpoint: `harchos run {job.kind}` resumes from it"
            self._end(current, "cancelled", exit_code, message)
            return
        if exit_code == 0:
            self._end(current, "done", exit_code, None)
            return
        if exit_code == pause_code:
            if intent.startswith("migrate:"):
                # Paused at a checkpoint; `_sync` copies it to the target and launches there.
                self._relaunch(current, current.hub or LOCAL, "paused",
                               f"saved a checkpoint to move to hub {intent[8:]}",
                               intent=intent)  # fmt: skip
                return
            if intent.startswith("scale:"):
                workers = int(intent[6:])
                self._relaunch(
                    current, current.hub or LOCAL, "rescale",
                    f"restarting from the checkpoint on {workers} worker(s)", workers=workers,
                )  # fmt: skip
                return
            resume_at = current.request.get("resume_at")
            if intent == "pause" and resume_at:
                message = f"paused at a checkpoint for greener hours; resumes at {resume_at}"
            else:
                asked = (
                    "on request"
                    if intent == "pause"
                    else f"without being asked (exit {pause_code})"
                )
                message = f"paused {asked} at a checkpoint: `harchos jobs resume {job.id}` goes on"
            self._pause(current, message, ["running"], exit_code=exit_code)
            return
        if current.request.get("migrated_from"):
            self._fail(current, f"exited with code {exit_code} on hub {current.hub}")
            return
        message = (
            "the job's process vanished without an exit code"
            if exit_code is None
            else f"exited with code {exit_code}"
        )
        self._end(current, "failed", exit_code, message)

    def _end(
        self, job: Job, state: JobStateName, exit_code: int | None, message: str | None
    ) -> None:
        request = {k: v for k, v in job.request.items() if k != "migrated_from"}
        if self.store.advance(
            job.id, ["running"], state, exit_code=exit_code, finished_at=iso(utcnow()),
            message=message, intent=None, request=request,
        ):  # fmt: skip
            self.reporter.stage(job, state, message or "exit code 0")
            from harchos_cli.meter.ledger import remember_power

            remember_power(self.store, job)
            if state == "done":
                self._tidy_source(job)

    def _tidy_source(self, job: Job) -> None:
        """After a move, once the job finished or saved a checkpoint of its own on the target,
        delete the run's checkpoints on the hub it left when `[carbon] tidy_source = "delete"`.
        Never fails the job: a folder that cannot be deleted is only reported."""
        from harchos_cli.jobs import migration

        source = job.request.get("migrated_from")
        if not source:
            return
        try:
            request = Request.from_json(job.request, job.project_dir)
            if request.project.spec.carbon.tidy_source != "delete":
                return
            hub = get_hub(source, request.project)
            folder = migration.delete_run_checkpoints(request.project, job.run_id or job.id, hub)
        except HarchosError as exc:
            reason = f"could not delete the run's checkpoints on hub {source}: {exc}"
            self.store.decide(job.id, "tidy-failed", source, reason)
            self.reporter.notice(reason)
            return
        reason = f"the job made progress on hub {job.hub}: deleted {folder} on hub {source}"
        self.store.decide(job.id, "tidy", source, reason)
        self.reporter.notice(reason)

    # -- moving ------------------------------------------------------------------------------

    def _migrate(self, job: Job, target: str) -> Job:
        """Copy the run's checkpoints from the job's hub to `target` and point the job there;
        on any failure the job stays on its hub (the copy never touches the source)."""
        from harchos_cli.jobs import migration

        source = job.hub or LOCAL
        request = Request.from_json(job.request, job.project_dir)
        if resume_limit(request.project, target) and waits_for_slot(
            self.store, job, request.project, target
        ):
            # Nothing copied to a full target; the move waits, paused on the source.
            self._wait_for_slot(job, source, "queue", f"moving to hub {target}", job.intent)
            return self.store.get(job.id)
        self.reporter.stage(job, "migrating", f"copying checkpoints from hub {source} to {target}")
        try:
            moved = migration.copy_run_checkpoints(
                request.project,
                job.run_id or job.id,
                self._hub(job, request),
                get_hub(target, request.project),
                staging=job_dir(job.id) / "transfer",
            )
        except HarchosError as exc:
            reason = f"the move to hub {target} failed ({exc}); going on on hub {source}"
            self.store.update(job.id, intent=None)
            self.store.decide(job.id, "migrate-failed", source, reason, target=target)
            self.reporter.notice(reason)
            return self.store.get(job.id)
        reason = (
            f"moved to hub {target}: {moved.files} file(s), {moved.bytes} bytes copied in "
            f"{moved.seconds:.1f} s and verified by sha256"
        )
        # The target's slot is taken with the move, in one step (`resume_slot`); a full target
        # leaves the job paused on the source with its move to do, until a slot frees there.
        if not resume_slot(
            self.store, job, request.project, on=target, from_states=("syncing",), hub=target,
            intent=None, gpu_ids=None, request={**job.request, "migrated_from": source},
        ):  # fmt: skip
            self._wait_for_slot(job, source, "queue", f"moving to hub {target}",
                                f"migrate:{target}")  # fmt: skip
            return self.store.get(job.id)
        self.store.decide(job.id, "migrate", target, reason, source=source, **moved.as_json())
        self.reporter.stage(job, "migrated", reason)
        return self.store.get(job.id)


@dataclass(frozen=True)
class _Node:
    """One machine of the job's attempt (the only one, unless it runs on several hubs)."""

    rank: int
    hub: Hub
    hub_id: str
    spec: LaunchSpec
    jobs: Any

    @classmethod
    def of(
        cls, saved: dict[str, Any], job_id: str, rank: int, hub: Hub, jobs_for: Callable[[Hub], Any]
    ) -> _Node:
        hub_id = str(saved.get("hub_job_id") or job_id)
        spec = LaunchSpec(
            hub_id,
            saved["argv"],
            saved["cwd"],
            saved["env"],
            saved.get("secret_env") or (),
            meter=saved.get("meter"),
            slurm=saved.get("slurm"),
        )
        return cls(rank, hub, hub_id, spec, jobs_for(hub))


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
    with _append_private(path) as handle:
        handle.write(data)
        return handle.tell()


def _append_private(path: Path) -> BinaryIO:
    """`path` open for appending, created 0600 (a job's output may hold what it printed of its
    secrets)."""
    return os.fdopen(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600), "ab")


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
    if job.state == "paused" and store.advance(
        job.id, ["paused"], "cancelled", cancel_requested=True, finished_at=iso(utcnow()),
        message="cancelled while paused; its checkpoints are kept",
    ):  # fmt: skip
        store.decide(job.id, "cancel", job.hub, "cancelled while paused")
        return store.get(job.id)
    if job.state == LOST:
        # Its workload may still run: a supervisor takes it up again to stop it; should the
        # hub still refuse, the job is lost again with its cancel pending, and the next
        # cancel or `harchos jobs reattach` tries again.
        store.update(job.id, cancel_requested=True)
        store.decide(job.id, "cancel", job.hub, "cancel requested while lost")
        if store.advance(
            job.id, [LOST], "running", failure=None,
            message=f"cancel pending: taking the job up again on hub {job.hub} to stop it",
        ):  # fmt: skip
            spawn(job.id)
        return store.get(job.id)
    if not job.active:
        return job
    store.update(job.id, cancel_requested=True)
    store.decide(job.id, "cancel", job.hub, f"cancel requested while {job.state}")
    if job.state == "waiting" and store.advance(
        job.id, ["waiting"], "cancelled", finished_at=iso(utcnow()), message=NOTHING_RAN
    ):
        return store.get(job.id)
    if not is_supervised(job.id):
        spawn(job.id)
    return store.get(job.id)


def reattach(store: JobStore, job_id: str) -> Job:
    """Take up again a job harchos lost track of (state `lost`: its hub refused harchos while
    the workload ran; or, as older versions recorded it, `failed` on such a hub step after its
    launch): once the hub can be reached and trusted again and still holds the job's folder,
    a new supervisor follows its workload (still running, or exited: its exit code and log
    are recorded as if it had never been lost).

    Raises:
        UsageError: the job was never lost (exit 2).
        HubError: the hub still cannot be reached or trusted, or it holds no trace of the
            workload (exit 4); the job stays lost.
    """
    from harchos_cli.hubs import inventory, jobs_for

    job = store.get(job_id)
    launch = job.request.get("launch")
    legacy = job.state == "failed" and job.failure == "hub" and job.launched
    if (job.state != LOST and not legacy) or not isinstance(launch, dict):
        if job.active:
            why = f"job {job.id} is {job.state}: its supervisor follows it"
        else:
            why = f"job {job.id} is {job.state}: harchos did not lose track of it"
        raise UsageError(f"{why}; only a lost job can be reattached",
                         hint=f"see the job with: harchos jobs show {job.id}")  # fmt: skip
    specs = [launch, *(launch.get("nodes") or [])]
    for spec in specs:
        hub = inventory.from_json(spec["hub"])
        hub_id = str(spec.get("hub_job_id") or job.id)
        if jobs_for(hub).status(hub_id).state == "absent":
            raise HubError(
                f"hub {hub.name} holds no trace of job {job.id} (no folder {hub_id}): its "
                "workload cannot be followed again",
                hint=f"its outputs may still be on the hub: harchos jobs pull {job.id}",
            )
    reason = f"reattached on hub {job.hub}: the hub answers and is trusted again"
    if store.advance(
        job.id, [job.state], "running", failure=None, finished_at=None, message=None
    ):  # fmt: skip
        store.decide(job.id, "reattach", job.hub, reason)
        if not is_supervised(job.id):
            spawn(job.id)
    return store.get(job.id)


def follow_queue(
    store: JobStore,
    reporter: Reporter,
    job: Job,
    queue: SlurmQueue,
    remote_jobs: Any,
    *,
    considered: datetime,
    forecaster: Forecaster | None = None,
) -> datetime:
    """A job in a Slurm queue: say where it stands, and while it waits for its begin time,
    re-plan it each new hour and move the begin time when the plan moves. The hour last
    considered. (The job's supervisor, or the scheduler while the job is parked.)"""
    current = store.get(job.id)
    message = f"running in Slurm as job {queue.job_id} ({queue.state})"
    if queue.pending:
        message = f"queued in Slurm as job {queue.job_id}: {queue.state}"
        if queue.reason not in ("", "None"):
            message += f" ({queue.reason})"
        if queue.start:
            message += f", starts {queue.start} UTC"
    if current.message != message:
        store.update(job.id, message=message)
    clock = from_json(current.request.get("clock"))
    now = clock.now()
    if (
        not waits_for_begin(current, queue)
        or floor_hour(now) <= considered
        or current.planned_start is None
    ):
        return considered
    request = Request.from_json(current.request, current.project_dir)
    planned = parse_instant(current.planned_start)
    forecaster = forecaster or Forecaster(request.provider, request.project)
    new_start = replan(store, reporter, current, request=request, forecaster=forecaster,
                       now=now, start=planned)  # fmt: skip
    if new_start != planned and new_start > now:
        wait = clock.real_seconds((new_start - now).total_seconds())
        remote_jobs.set_begin(queue.job_id, utcnow() + timedelta(seconds=wait))
        store.decide(job.id, "replan", current.hub, f"the forecast moved: Slurm job "
                          f"{queue.job_id} now begins at {iso(new_start)}",
                          planned_start=iso(new_start))  # fmt: skip
        reporter.notice(f"re-planned: Slurm job {queue.job_id} begins at {iso(new_start)}")
    return floor_hour(now)


def replan(
    store: JobStore,
    reporter: Reporter,
    job: Job,
    *,
    request: Request,
    forecaster: Forecaster,
    now: datetime,
    start: datetime,
) -> datetime:
    """Plan a waiting job again at `now` (a new hour's forecast, or its start has come): record
    a new start or hub, and return the start (`now` when it is still "start now"). The rule of
    both the job's supervisor and the scheduler that holds waiting jobs."""
    try:
        plan = make_plan(request, forecaster, now, job_id=job.id, replanning=True)
    except HarchosError as exc:
        reporter.notice(f"re-planning failed ({exc}); keeping the plan to start at {iso(start)}")
        return start
    data = plan.as_json()
    new_start = plan.choice.start
    hub = store.get(job.id).hub
    if new_start <= now and plan.choice.hub == hub:
        # Still "start now": the planned window is the one already recorded, unless the job is
        # late into another hour (the machine slept, or the scheduler was down): it takes this
        # hour's slot, and the plans of the jobs after it must see it there.
        if floor_hour(now) != floor_hour(start):
            store.update(job.id, plan=data, planned_start=iso(now))
        return now
    if new_start != start or plan.choice.hub != hub:
        store.update(job.id, plan=data, planned_start=iso(new_start), hub=plan.choice.hub)
        reporter.planned(store.get(job.id), data, replanned=True)
    return new_start


def create_job(
    prepared: Prepared,
    *,
    detached: bool,
    job_id: str | None = None,
    run_id: str | None = None,
    store: JobStore | None = None,
) -> Job:
    """Record a planned job (state `waiting`, or `syncing` when it starts at once and its hub
    has a free slot) of training run `run_id` (None: a run of its own), in `store` (default: a
    connection of its own)."""
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
        run_id=run_id,
    )
    # One that starts at once on a hub with slots starts as a waiting job whose start came: by
    # `take_slot`, or else it waits for a slot (in its supervisor, or the scheduler's if
    # detached). A Slurm hub queues it in its own queue.
    starts_now = not request.defer and not queues_in_slurm(job, request)
    if starts_now and slot_limit(job, request.project) is not None:
        job = replace(job, state="waiting")
    own = store is None
    store = store or JobStore()
    try:
        for _ in range(20):
            try:
                store.create(job)
                break
            except sqlite3.IntegrityError:
                if job_id is not None:
                    raise
                # Ids are random within a second: an array makes hundreds a second. Draw again.
                job = replace(job, id=new_id())
        when = "start now" if not request.defer else f"start at {iso(plan.choice.start)}"
        store.decide(
            job.id, "defer" if request.defer else "plan", job.hub,
            f"planned to {when} on hub {job.hub}",
            expected_intensity=plan.as_json().get("expected_intensity"),
            run_id=run_id or job.id,
        )  # fmt: skip
        if job.state == "waiting" and starts_now:
            take_slot(store, job, request.project)
            return store.get(job.id)
        return job
    finally:
        if own:
            store.close()


def dry_run(prepared: Prepared, run_id: str | None = None) -> dict[str, Any]:
    """What `harchos run --dry-run` shows: the plan and the exact commands, nothing run."""
    from harchos_cli.hubs import remote_project_dir

    request, plan = prepared.request, prepared.plan
    hub = get_hub(plan.choice.hub, request.project)
    root = request.project.root
    remote = str(root) if in_place(hub) else remote_project_dir(hub, root)
    job = Job(
        id=new_id(), kind=request.kind, name=request.project.name, project_dir=str(root),
        state="waiting", request=request.as_json(), hub=hub.name, remote_dir=remote,
        run_id=run_id, planned_start=iso(plan.choice.start), plan=plan.as_json(),
    )  # fmt: skip
    hubs = [get_hub(name, request.project) for name in request.nodes or [hub.name]]
    machines = []
    for rank, each in enumerate(hubs):
        node = None
        if len(hubs) > 1:
            # The port is one free on the main hub at launch; 0 stands for it here.
            node = launchers.NodeRank(len(hubs), rank, main_address(request, hubs), 0)
        folder = str(root) if in_place(each) else remote_project_dir(each, root)
        spec = Supervisor.launch_spec(replace(job, remote_dir=folder), request, each, node)
        machines.append({
            "hub": each.name, "argv": list(spec.argv), "cwd": spec.cwd, "env": dict(spec.env),
            "command_line": launchers.render(spec.argv, spec.env, spec.cwd), "slurm": spec.slurm,
        })  # fmt: skip
    main = machines[0]
    setup = request.project.spec.job.setup
    return {
        "job_id": job.id,
        "dry_run": True,
        **plan.as_json(),
        "sync": None
        if in_place(hub)
        else {"from": str(root), "to": f"{hub.name}:{remote}", "never": [".git"]},
        "setup": None if not setup else {"command": launchers.setup_argv(remote, setup)},
        "launch": {key: main[key] for key in ("argv", "cwd", "env", "slurm")},
        "nodes": machines[1:],
        "command_line": main["command_line"],
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
