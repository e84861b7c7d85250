"""The scheduler: one process per `HARCHOS_HOME` holds every detached job that waits for its
green window, so a thousand waiting jobs cost one process, not a thousand supervisors.

What it holds: a detached `waiting` job that no process supervises, with a deferred plan, or
one that starts at once but found its hub's slots full (a foreground `harchos run` supervises
its own job, and waits for a slot by the same rule, `supervisor.take_slot`; a job bound for a
Slurm queue waits there instead). Each
pass it re-plans a held job when its clock enters a new hour (the supervisor's own rule, through
`supervisor.replan`), with one forecast per provider, region and hour shared by every job; when a
job's planned start comes, it hands the job to a supervisor of its own (`liveness.spawn`), which
checks the plan once more, then syncs, launches and follows it. A cancel of a held job is done
here. It also holds a detached deferred job that its supervisor parked in a Slurm queue
(submitted with `--begin`: the hub holds it): each new hour it re-plans it and moves its begin
time (`supervisor.follow_queue`), every `QUEUE_POLL_S` it asks Slurm where it stands, and it hands
the job back to a supervisor at its begin time, or sooner when Slurm moved it on or a cancel,
pause or move is asked. With nothing left to hold for `IDLE_EXIT_S`, it exits; the next
detached deferred job, or any harchos command that finds a held job without a scheduler
(`liveness.revive`), starts one.

Exactly one scheduler runs: an exclusive `flock` on `scheduler.lock`, released by the kernel
when the process dies, even by SIGKILL. Its death loses nothing: the plan and the clock's anchor
of every job are in the store, and a job is handed over at most once at a time (the supervisor's
own lock), so a job runs once whatever is killed when.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from harchos_cli.carbon.types import Forecast, Region
from harchos_cli.jobs.clock import from_json
from harchos_cli.jobs.liveness import (
    AlreadySchedulingError,
    is_supervised,
    scheduler_dir,
    scheduler_lock,
    spawn,
)
from harchos_cli.jobs.request import Forecaster, Prepared, Request
from harchos_cli.jobs.spec import Project, load_project
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.timeparse import floor_hour, iso, parse_instant, utcnow

TICK_S = 0.25  # real seconds between passes at least...
NAP_S = 2.0  # ... and at most: a new job is taken up within this (it is planned already)
IDLE_EXIT_S = 10.0  # with no job to hold for this long, the scheduler exits
HANDOFF_RETRY_S = 15.0  # a job handed to a supervisor that never took it is handed again
QUEUE_POLL_S = 15.0  # real seconds between looks at a parked job in Slurm's queue


def held(job: Job) -> bool:
    """Whether `job` is the scheduler's to hold: a detached job waiting for its window (whether
    a process supervises it already is checked apart, `is_supervised`)."""
    return job.state == "waiting" and job.detached


class SharedForecaster(Forecaster):
    """A `Forecaster` whose forecasts are shared by every job planned in this process: one per
    region and hour (fetched for the longest horizon asked so far)."""

    def __init__(self, provider: str | None, project: Project) -> None:
        super().__init__(provider, project)
        # (region, hour): (the hours fetched, the forecast from the hour's start)
        self.memo: dict[tuple[str, datetime], tuple[int, Forecast]] = {}

    def forecast(self, region: Region, now: datetime, hours: int) -> Forecast:
        hour = floor_hour(now)
        # From the hour's start, one hour more: it covers every `now` inside the hour.
        wanted = hours + 1
        known = self.memo.get((region.name, hour))
        if known is None or known[0] < wanted:
            for key in [k for k in self.memo if k[1] < hour - timedelta(hours=1)]:
                del self.memo[key]
            known = (wanted, self.service.forecast(region, hour, wanted))
            self.memo[(region.name, hour)] = known
        return known[1]


def submit_array(
    first: Prepared, indices: list[int], max_parallel: int | None
) -> tuple[str, list[tuple[int, Job]], list[str]]:
    """Record one waiting job per index of an array like `first`'s request, planned one after
    the other (each sees the slots those before it took) on shared forecasts, and start the
    scheduler that holds them: the array's id, (index, job) of each, and the plan's warnings."""
    from dataclasses import replace

    from harchos_cli.jobs.liveness import start_scheduler
    from harchos_cli.jobs.request import make_plan
    from harchos_cli.jobs.store import new_id
    from harchos_cli.jobs.supervisor import create_job

    request = first.request
    forecaster = SharedForecaster(request.provider, request.project)
    array_id = f"array-{new_id()}"
    made: list[tuple[int, Job]] = []
    warnings: list[str] = []
    # One connection held open for the whole array: each job's own would be the last one open
    # when it closes, and SQLite checkpoints its log then (4 ms a job, a third of the time).
    store = JobStore()
    try:
        for index in indices:
            member = replace(request, array={"id": array_id, "index": index, "size": len(indices),
                                             "max_parallel": max_parallel})  # fmt: skip
            plan = make_plan(member, forecaster, first.plan.now)
            warnings.extend(w for w in plan.warnings if w not in warnings)
            job = create_job(Prepared(member, plan, first.clock), detached=True, store=store)
            made.append((index, job))
    finally:
        store.close()
    start_scheduler()
    return array_id, made, warnings


class Scheduler:
    """Holds the waiting jobs; use `run()`."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.store = store or JobStore()
        self.log = scheduler_dir() / "scheduler.log"
        self.considered: dict[str, datetime] = {}  # job id: the clock hour it was last planned in
        self.handed: dict[str, float] = {}  # job id: when it was handed to a supervisor
        self.forecasters: dict[tuple[str | None, str], SharedForecaster] = {}
        self.projects: dict[str, tuple[float, Project]] = {}  # folder: (harchos.toml mtime, ...)
        self.polled: dict[str, float] = {}  # parked job id: when Slurm was last asked about it
        self.wake = NAP_S

    def run(self) -> None:
        with scheduler_lock():
            self._line(f"scheduler {os.getpid()} started")
            idle_since = time.monotonic()
            while True:
                holding = self.pass_once()
                if holding:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_EXIT_S:
                    self._line("nothing to hold: exiting")
                    return
                time.sleep(min(max(self.wake, TICK_S), NAP_S))

    def pass_once(self) -> int:
        """One pass over the waiting jobs: cancel, re-plan, hand over; how many it holds.
        `wake` is then the real seconds to the next moment a job needs it (a start, an hour)."""
        holding = 0
        self.wake = NAP_S
        for job in self.store.list(states=["waiting"]):
            if not held(job) or is_supervised(job.id):
                continue
            holding += 1
            try:
                self._consider(job)
            except Exception as exc:
                # One job's trouble must not stop the others. Its project broke meanwhile, say:
                # the job's own supervisor, which re-plans it at once, fails it and says why.
                self._line(f"{job.id}: {type(exc).__name__}: {exc}; handing it to a supervisor")
                self._hand_over(job)
        for job_id, handed in list(self.handed.items()):
            # Handed over and never taken (its supervisor died starting): hand it again.
            job = self.store.get(job_id)
            if job.state not in ("waiting", "syncing") or is_supervised(job_id):
                if time.monotonic() - handed > HANDOFF_RETRY_S:
                    del self.handed[job_id]
                continue
            if job.state == "syncing":
                self._hand_over(job)
        for job_id in self.store.parked_ids():
            if is_supervised(job_id):
                continue
            holding += 1
            job = self.store.get(job_id)
            try:
                self._consider_parked(job)
            except Exception as exc:
                self._line(f"{job.id}: {type(exc).__name__}: {exc}; handing it to a supervisor")
                self._hand_over(job)
        return holding

    def _consider_parked(self, job: Job) -> None:
        """A job Slurm queues: hand it back when something is asked of it or Slurm moved it on;
        else look at the queue now and then, re-planning its begin time each new hour."""
        from harchos_cli.hubs import inventory, jobs_for
        from harchos_cli.jobs.supervisor import FileReporter, follow_queue, parkable

        clock = from_json(job.request.get("clock"))
        now = clock.now()
        begins = parse_instant(job.planned_start) if job.planned_start else now
        if job.cancel_requested or job.intent or now >= begins:
            # At its begin time its supervisor takes it back, to follow it from its first line.
            self._hand_over(job)
            return
        self.wake = min(self.wake, clock.real_seconds((begins - now).total_seconds()))
        hour = floor_hour(now)
        considered = self.considered.setdefault(job.id, hour)
        last = self.polled.get(job.id)
        if last is not None and time.monotonic() - last < QUEUE_POLL_S and hour <= considered:
            return  # passes come every NAP_S at most: a new hour is seen within one
        self.polled[job.id] = time.monotonic()
        saved = job.request["launch"]
        remote_jobs = jobs_for(inventory.from_json(saved["hub"]))
        status = remote_jobs.status(job.hub_job_id or "")
        queue = status.queue
        if queue is None or not parkable(job, queue):
            self._line(f"{job.id}: Slurm moved it on ({status.state}); handing it to a supervisor")
            self._hand_over(job)
            return
        request = Request.from_json(job.request, job.project_dir, project=self._project(job))
        replanned = follow_queue(
            self.store, FileReporter(job.id), job, queue, remote_jobs, considered=considered,
            forecaster=self._forecaster(request),
        )  # fmt: skip
        self.considered[job.id] = max(replanned, hour)

    def _consider(self, job: Job) -> None:
        if job.cancel_requested:
            from harchos_cli.jobs.supervisor import NOTHING_RAN

            if self.store.advance(job.id, ["waiting"], "cancelled", finished_at=iso(utcnow()),
                                  message=NOTHING_RAN):  # fmt: skip
                self._line(f"{job.id}: cancelled while waiting")
            return
        assert job.planned_start is not None
        clock = from_json(job.request.get("clock"))
        now = clock.now()
        start = parse_instant(job.planned_start)
        hour = floor_hour(now)
        first_seen = self.considered.setdefault(job.id, hour)
        if hour > first_seen and now < start:
            # A new hour: providers publish a new forecast; re-plan on it (the supervisor's rule).
            self.considered[job.id] = hour
            start = self._replan(job, now, start)
        if now >= start:
            if self._slots_full(job):
                return  # the next pass looks again (a count, not a plan, while it waits)
            # Once more just before it starts, here rather than in each job's supervisor: one
            # process plans the jobs whose hour came one after the other, so each sees the slots
            # those before it took (supervisors checking at once would all see them free).
            start = self._replan(job, now, start)
            if start <= now:
                from harchos_cli.jobs.supervisor import FileReporter, take_slot

                current = self.store.get(job.id)  # the re-plan may have moved it to another hub
                if take_slot(self.store, current, self._project(job)):
                    FileReporter(job.id).stage(current, "syncing", f"starting on hub {current.hub}")
                else:
                    current = self.store.get(job.id)
                    if current.state == "waiting":
                        # Another process took the slot since the count: the next pass looks.
                        self._line(f"{job.id}: {current.message}")
                        return
                self._hand_over(job)
                return
        nearest = min(start, hour + timedelta(hours=1))
        self.wake = min(self.wake, clock.real_seconds((nearest - now).total_seconds()))

    def _replan(self, job: Job, now: datetime, start: datetime) -> datetime:
        from harchos_cli.jobs.supervisor import FileReporter, replan

        request = Request.from_json(job.request, job.project_dir, project=self._project(job))
        new_start: datetime = replan(self.store, FileReporter(job.id), job, request=request,
                                     forecaster=self._forecaster(request), now=now,
                                     start=start)  # fmt: skip
        return new_start

    def _forecaster(self, request: Request) -> SharedForecaster:
        """The forecasts shared by every job of the same provider and project."""
        key = (request.provider, str(request.project.file or request.project.root))
        forecaster = self.forecasters.get(key)
        if forecaster is None:
            forecaster = SharedForecaster(request.provider, request.project)
            self.forecasters[key] = forecaster
        return forecaster

    def _project(self, job: Job) -> Project:
        """The job's project, read once per change of its harchos.toml."""
        file = Path(job.project_dir) / "harchos.toml"
        try:
            mtime = file.stat().st_mtime
        except OSError:
            mtime = -1.0
        known = self.projects.get(job.project_dir)
        if known is None or known[0] != mtime:
            known = (mtime, load_project(Path(job.project_dir), required=job.kind == "train"))
            self.projects[job.project_dir] = known
        return known[1]

    def _slots_full(self, job: Job) -> bool:
        """Whether the job's hub runs its `max_jobs` already (`supervisor.waits_for_slot`)."""
        from harchos_cli.jobs.supervisor import waits_for_slot

        message = waits_for_slot(self.store, job, self._project(job))
        if message is not None and message != job.message:
            self._line(f"{job.id}: {message}")
        return message is not None

    def _hand_over(self, job: Job) -> None:
        last = self.handed.get(job.id)
        if last is not None and time.monotonic() - last < HANDOFF_RETRY_S:
            return
        self.handed[job.id] = time.monotonic()
        spawn(job.id)
        self._line(f"{job.id}: its start came; handed to a supervisor")

    def _line(self, text: str) -> None:
        fd = os.open(self.log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as handle:
            handle.write(f"{iso(utcnow())} {text}\n".encode())


def main(argv: list[str] | None = None) -> int:
    """`python -m harchos_cli.jobs.scheduler`: the detached scheduler."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        print("usage: python -m harchos_cli.jobs.scheduler", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        Scheduler().run()
    except AlreadySchedulingError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
