"""What a user asks of a job once it exists: pause, resume, move, rescale; and which training run
a new job belongs to.

Each request is recorded in the store (`intent`, and a decision with its reason) and carried out
by the job's supervisor, started here when the job has none: the caller never waits on a hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harchos_cli.errors import UsageError
from harchos_cli.jobs.liveness import is_supervised, spawn
from harchos_cli.jobs.store import ATTEMPT_KEYS, SLOT_WAIT, Job, JobStore

if TYPE_CHECKING:
    from harchos_cli.jobs.spec import Project

_HINT_LIST = "see the job's state with: harchos jobs show JOB_ID"


def choose_run(store: JobStore, project_dir: str, kind: str, *, fresh: bool) -> str | None:
    """The run a new job of this project continues (None: a run of its own, named by the job).

    Training resumes the project's newest run, whatever job ran it before; batch jobs and
    `--fresh` start their own. Two jobs of one run at once would mix their checkpoints, so a
    run whose newest job is still going (or paused) is refused.
    """
    if kind != "train" or fresh:
        return None
    latest = store.latest_run(project_dir, kind)
    if latest is None:
        return None
    if latest.active or latest.state in ("paused", "lost"):
        raise UsageError(
            f"job {latest.id} of this project's training run is {latest.state}; a second job "
            "would mix their checkpoints",
            hint=f"resume or cancel it (harchos jobs resume|cancel {latest.id}), or start a new "
            "run with --fresh",
        )
    return latest.run_id or latest.id


def _running(store: JobStore, job_id: str, verb: str) -> Job:
    job = store.get(job_id)
    if job.state not in ("running", "syncing"):
        raise UsageError(f"job {job.id} is {job.state}; only a running job can be {verb}",
                         hint=_HINT_LIST)  # fmt: skip
    if job.intent or job.cancel_requested:
        wish = "cancel" if job.cancel_requested else job.intent
        raise UsageError(
            f"job {job.id} already has a request pending ({wish})",
            hint=f"wait for it to take effect: harchos jobs show {job.id}",
        )
    return job


def _wake(job_id: str) -> None:
    if not is_supervised(job_id):
        spawn(job_id)


def _ask_running(
    store: JobStore, job_id: str, *, verb: str, intent: str, action: str, reason: str,
    **details: object,
) -> Job:  # fmt: skip
    """Record `intent` for a running job, with its decision, and make sure a supervisor acts."""
    job = _running(store, job_id, verb)
    # Asked by hand: a pause waits for `harchos jobs resume`, not for a planned hour.
    request = {k: v for k, v in job.request.items() if k != "resume_at"}
    store.update(job.id, intent=intent, request=request)
    store.decide(job.id, action, job.hub, reason, **details)
    _wake(job.id)
    return store.get(job.id)


def request_pause(store: JobStore, job_id: str) -> Job:
    """Ask a running job to save a checkpoint and stop (state `paused`, nothing left running)."""
    return _ask_running(store, job_id, verb="paused", intent="pause", action="pause-requested",
                        reason="asked with harchos jobs pause")  # fmt: skip


def request_resume(store: JobStore, job_id: str) -> Job:
    """Launch a paused job again, on the hub it paused on, from its newest checkpoint."""
    job = store.get(job_id)
    if job.state != "paused":
        raise UsageError(f"job {job.id} is {job.state}; only a paused job can be resumed",
                         hint=_HINT_LIST)  # fmt: skip
    continue_job(store, job, reason="asked with harchos jobs resume")
    return store.get(job.id)


def continue_job(
    store: JobStore, job: Job, *, reason: str, intent: str | None = None,
    workers: int | None = None, wake: bool = True,
) -> bool:  # fmt: skip
    """A new attempt of a paused job: `paused → syncing`, for its supervisor to launch, if the
    hub it goes on on (a move's target) has a free slot (`supervisor.resume_slot`); True when
    it moved.

    Else it stays paused, nothing lost: its message says it waits for a slot, the request
    (`intent`, `workers`) is kept, and its supervisor (`resume_at`: now) asks again every
    `SLOT_POLL_S` until a slot frees. The decision is recorded once, when asked or when it
    first waits."""
    from harchos_cli.jobs.clock import from_json
    from harchos_cli.jobs.supervisor import resume_slot
    from harchos_cli.timeparse import iso

    request = {k: v for k, v in job.request.items() if k not in (*ATTEMPT_KEYS, "resume_at")}
    if workers is not None:
        request["workers"] = workers
    target = intent.removeprefix("migrate:") if intent and intent.startswith("migrate:") else None
    # Already waiting for a slot, for the same request: its decision is recorded.
    waited = (job.message or "").startswith(SLOT_WAIT) and job.intent == intent
    if resume_slot(
        store, job, _project(job), on=target, attempt=job.attempt + 1, launched=False,
        log_offset=0, exit_code=None, intent=intent, finished_at=None, request=request,
        gpu_ids=None,
    ):  # fmt: skip
        if not waited:
            store.decide(job.id, "resume-requested", job.hub, reason, attempt=job.attempt + 1)
        if wake:
            _wake(job.id)
        return True
    current = store.get(job.id)
    now = iso(from_json(current.request.get("clock")).now())
    kept = {**current.request, "resume_at": min(now, current.request.get("resume_at") or now)}
    if workers is not None:
        kept["workers"] = workers
    # Compare-and-set: its supervisor may have resumed it since.
    if not store.advance(job.id, ["paused"], "paused", intent=intent, request=kept):
        return False
    if not waited:
        store.decide(job.id, "resume-requested", job.hub, f"{reason}; {current.message}",
                     attempt=job.attempt + 1)  # fmt: skip
    if wake:
        _wake(job.id)
    return False


def _project(job: Job) -> Project:
    from pathlib import Path

    from harchos_cli.jobs.spec import load_project

    return load_project(Path(job.project_dir), required=False)


def _single_node(job: Job, verb: str) -> None:
    machines = len(job.request.get("nodes") or []) or int(job.request.get("cluster_nodes") or 1)
    if machines > 1:
        raise UsageError(
            f"job {job.id} runs on {machines} machines; a multi-node job cannot be {verb} (yet)",
            hint=f"pause it and resume it later: harchos jobs pause|resume {job.id}",
        )


def request_migrate(store: JobStore, job_id: str, target: str) -> Job:
    """Move a running or paused job to hub `target`: pause at a checkpoint, copy the run's
    checkpoints there (verified), launch there; any failure leaves it on its hub."""
    from pathlib import Path

    from harchos_cli.jobs.request import get_hub
    from harchos_cli.jobs.spec import load_project

    job = store.get(job_id)
    _single_node(job, "moved")
    if job.hub == target:
        raise UsageError(f"job {job.id} already runs on hub {target}", hint=_HINT_LIST)
    get_hub(target, load_project(Path(job.project_dir), required=False))  # exit 2 when unknown
    if job.state == "paused":
        continue_job(
            store, job, reason=f"asked to move to hub {target}", intent=f"migrate:{target}"
        )
        return store.get(job.id)
    return _ask_running(store, job_id, verb="moved", intent=f"migrate:{target}",
                        action="migrate-requested", reason=f"asked to move to hub {target}",
                        target=target)  # fmt: skip


def request_scale(store: JobStore, job_id: str, workers: int) -> Job:
    """Restart a running or paused job from its checkpoint on `workers` GPUs (or processes on
    the CPU); the training script keeps the global batch."""
    job = store.get(job_id)
    if job.kind != "train":
        raise UsageError(f"job {job.id} is a {job.kind} job; only training can be rescaled")
    if workers < 1:
        raise UsageError(f"cannot run on {workers} worker(s)", hint="give 1 or more")
    _single_node(job, "rescaled")
    if job.state == "paused":
        continue_job(store, job, reason=f"asked to resume on {workers} worker(s)", workers=workers)
        return store.get(job.id)
    return _ask_running(store, job_id, verb="rescaled", intent=f"scale:{workers}",
                        action="rescale-requested", reason=f"asked to run on {workers} worker(s)",
                        workers=workers)  # fmt: skip


def pull(store: JobStore, job_id: str, dest: str | None) -> tuple[Job, list[str], str]:
    """Copy the job's outputs and its run's checkpoints from the hub it ran on last into the
    project (or `dest`); returns the job, what was copied and where to."""
    from pathlib import Path

    from harchos_cli.hubs import inventory
    from harchos_cli.jobs import migration
    from harchos_cli.jobs.spec import load_project

    job = store.get(job_id)
    launch = job.request.get("launch")
    if not launch or not job.remote_dir:
        raise UsageError(f"job {job.id} never ran on a hub; there is nothing to pull",
                         hint=_HINT_LIST)  # fmt: skip
    project = load_project(Path(job.project_dir), required=False)
    try:
        target = Path(dest).expanduser() if dest else Path(job.project_dir)
    except RuntimeError:  # `~someone` for a user this machine does not know
        raise UsageError(f"--to {dest!r}: no such user's home",
                         hint="give a path, e.g. --to ./pulled") from None  # fmt: skip
    hub = inventory.from_json(launch["hub"])
    copied = migration.pull(project, job.run_id or job.id, hub, job.remote_dir, target)
    return job, copied, str(target)
