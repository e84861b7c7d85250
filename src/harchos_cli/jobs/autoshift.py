"""The supervisor's hourly look at a running job: should it pause, move or change size?

It asks `plan.shifting.plan_step` (the policy that `bench_shifting` and the tests replay) with the
forecasts of the job's hubs and what is left of its work, and turns the answer into the same
intents a user's `harchos jobs pause|migrate|scale` records, so one path carries both out.

Work is counted in worker-hours of the job's clock: `duration × workers` to do, minus each
attempt's running time × its workers (`done_worker_hours`, `attempt_started`, `attempt_workers`
in the job's request).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from harchos_cli.errors import HarchosError
from harchos_cli.jobs.clock import Clock
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.plan.shifting import ShiftPolicy, plan_step
from harchos_cli.timeparse import floor_hour, iso, parse_instant

if TYPE_CHECKING:
    from harchos_cli.jobs.request import Request
    from harchos_cli.jobs.spec import Project

HOUR = timedelta(hours=1)


def policy_of(request: dict[str, Any]) -> ShiftPolicy | None:
    shift = request.get("shift")
    if not shift:
        return None
    scale = shift.get("scale")
    return ShiftPolicy(
        migrate=bool(shift.get("migrate")),
        interruptible=bool(shift.get("interruptible")),
        scale=(int(scale[0]), int(scale[1])) if scale else None,
        min_saving=float(shift.get("min_saving", 0.2)),
        min_hours_between_moves=float(shift.get("min_hours_between_moves", 6.0)),
    )


def workers_of(request: Request, rescaled: Any = None) -> int:
    """Workers an attempt runs on: a rescale's count, else the project's GPUs (or CPU
    processes); 1 for a batch job."""
    if rescaled:
        return int(rescaled)
    if request.kind != "train":
        return 1
    spec = request.project.spec.job
    return spec.gpus or spec.processes


def started(request: dict[str, Any], now: datetime, workers: int) -> dict[str, Any]:
    """The request with this attempt's start recorded (only a job with a policy counts work)."""
    if not request.get("shift"):
        return request
    return {**request, "attempt_started": iso(now), "attempt_workers": workers}


def stopped(request: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The request with the ending attempt's work added to what is done."""
    if not request.get("shift"):
        return request
    done = float(request.get("done_worker_hours") or 0.0)
    if request.get("attempt_started"):
        ran = (now - parse_instant(request["attempt_started"])) / HOUR
        done += max(0.0, ran) * int(request.get("attempt_workers") or 1)
    rest = {k: v for k, v in request.items() if k not in ("attempt_started", "attempt_workers")}
    return {**rest, "done_worker_hours": done}


def has_room(store: JobStore, project: Project, hub: str) -> bool:
    """Whether a move could go on on `hub` now: it runs fewer than its `max_jobs` (the count a
    resume there makes, `supervisor.resume_limit`). A hub without room is no candidate: moving
    there would stop the job at its source until a slot frees."""
    from harchos_cli.jobs.supervisor import resume_limit

    limit = resume_limit(project, hub)
    return limit is None or store.started_on(hub) < limit


def consider(store: JobStore, job: Job, clock: Clock) -> str | None:
    """Decide the job's next hour; record an intent (and a decision) when it should change.
    Returns the intent recorded, if any. A forecast that cannot be had changes nothing."""

    from harchos_cli.jobs.request import Forecaster, Request, combine, get_hub

    policy = policy_of(job.request)
    if policy is None or job.hub is None:
        return None
    request = Request.from_json(job.request, job.project_dir)
    if request.deadline is None:
        return None
    now = clock.now()
    hours_left = max(0, int((request.deadline - now) // HOUR))
    project = request.project
    names = [job.hub]
    if policy.migrate:
        names += [
            n
            for n in (project.spec.carbon.hubs or project.spec.hubs)
            if n != job.hub and has_room(store, project, n)
        ]
    try:
        hubs = [get_hub(name, project) for name in request.nodes or names]
        candidates = Forecaster(request.provider, project).forecasts(hubs, now, request.deadline)
        if request.nodes:
            # A multi-node job (never moved) pauses on the mean of its machines' regions.
            candidates = [combine(candidates)]
    except HarchosError:
        return None
    outlooks = {
        c.hub.name: [p.intensity for p in c.forecast.points if p.end > now]
        for c in candidates
        if c.forecast is not None and c.forecast.points
    }
    if job.hub not in outlooks:
        return None
    hours_left = max(0, int((request.deadline - now) // HOUR))
    workers = workers_of(request, job.request.get("workers"))
    total = request.duration / HOUR * workers_of(request)
    done = float(stopped(job.request, now).get("done_worker_hours") or 0.0)
    if done >= total:
        return None  # it outran its expected duration: nothing left to plan with, let it finish
    moved_at = job.request.get("moved_at")
    since_move = (now - parse_instant(moved_at)) / HOUR if moved_at else math.inf
    step = plan_step(
        hub=job.hub, outlooks=outlooks, pue={c.hub.name: c.hub.pue for c in candidates},
        work=max(0.0, total - done), hours_left=hours_left, workers=workers, policy=policy,
        hours_since_move=since_move,
    )  # fmt: skip
    numbers = {**step.numbers, "provider": request.provider or "auto"}
    if step.action == "migrate":
        intent = f"migrate:{step.hub}"
        store.update(job.id, intent=intent, request={**job.request, "moved_at": iso(now)})
        store.decide(job.id, "auto-migrate", step.hub, step.reason, source=job.hub, **numbers)
        return intent
    if step.action == "pause" and policy.interruptible:
        resume = floor_hour(now) + HOUR * int(step.numbers.get("resume_in_hours") or 1)
        store.update(job.id, intent="pause", request={**job.request, "resume_at": iso(resume)})
        store.decide(job.id, "auto-pause", job.hub, f"{step.reason}; resumes at {iso(resume)}",
                     resume_at=iso(resume), **numbers)  # fmt: skip
        return "pause"
    if step.action == "run" and policy.scale is not None and step.workers != workers:
        intent = f"scale:{step.workers}"
        store.update(job.id, intent=intent)
        store.decide(job.id, "auto-rescale", job.hub, step.reason, workers=step.workers, **numbers)
        return intent
    return None
