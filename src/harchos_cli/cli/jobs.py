"""`harchos jobs`: what harchos has run, is running or will run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import typer

from harchos_cli.cli import completion

if TYPE_CHECKING:
    from harchos_cli.jobs.store import Job, JobStore

app = typer.Typer(
    help="List, inspect, follow, pause, resume, move, rescale and cancel jobs.",
    short_help="List, follow, pause, move and cancel jobs.",
    rich_markup_mode=None,
    no_args_is_help=True,
)

_JSON = typer.Option(False, "--json", help="Print JSON (docs/run.md) on stdout.")
_ID = typer.Argument(..., metavar="JOB_ID", help="A job id, or a unique prefix of one.",
                     autocompletion=completion.job_ids)  # fmt: skip


def _store() -> JobStore:
    """The store, after restarting any supervisor that died (kill -9, reboot)."""
    from harchos_cli.cli.output import warn
    from harchos_cli.jobs.liveness import revive
    from harchos_cli.jobs.store import JobStore

    store = JobStore()
    # Only the process whose supervisor kept the lock says so (others start one that yields).
    for job_id in revive(store, confirm=5.0):
        warn(f"restarted the supervisor of job {job_id}")
    return store


def _clean_when_due() -> None:
    """With `jobs.retention` set, forget what is older, in the background, at most hourly."""
    from harchos_cli.jobs.clean import clean_when_due

    clean_when_due()


@app.command("list", short_help="Jobs, newest first, a page at a time.")
def list_jobs(
    all_jobs: bool = typer.Option(
        False, "--all", help="Every job (with --before: every older one), not one page."
    ),
    limit: int = typer.Option(
        None, "--limit", metavar="N", min=1, help="Jobs per page (default 20)."
    ),
    before: str = typer.Option(
        None,
        "--before",
        metavar="JOB_ID",
        help="The next page: the jobs listed after this one (the last of the page before; "
        "`jobs list` prints the command for the next page). Pages follow jobs, not numbers: a "
        "page stays the same when new jobs arrive, and any page is as fast as the first.",
        autocompletion=completion.job_ids,
    ),
    array: str = typer.Option(
        None, "--array", metavar="ARRAY_ID", help="Only the jobs of this array, by index."
    ),
    json_output: bool = _JSON,
) -> None:
    """Jobs, newest first: state, hub, planned start, exit code; one page (--limit, default
    20) at a time, --before JOB_ID for the next."""
    from harchos_cli.cli.output import print_json
    from harchos_cli.errors import UsageError

    if array is not None:
        store = _store()
        try:
            members = store.array_members(array)
        finally:
            store.close()
        if json_output:
            print_json([job.as_json() for job in members])
        else:
            _print_rows([
                (job.id, job.name, job.kind, _state(job.state, job.cancel_pending), job.hub,
                 job.planned_start, job.exit_code)
                for job in members
            ])  # fmt: skip
        return

    if all_jobs and limit is not None:
        raise UsageError(
            "--all and --limit contradict each other",
            hint="--all lists every job; --limit N lists N at a time",
        )
    size = None if all_jobs else (limit or 20)
    # One more than a page says whether another page follows.
    fetch = None if size is None else size + 1
    store = _store()
    try:
        _clean_when_due()
        if json_output:
            jobs = store.list(limit=fetch, before=before)[:size]
        else:
            rows = store.summaries(limit=fetch, before=before)
    finally:
        store.close()
    if json_output:
        print_json([job.as_json() for job in jobs])
        return
    if not rows:
        typer.echo(f"no jobs before {before}" if before else
                   "no jobs yet: start one with `harchos run train`")  # fmt: skip
        return
    shown = rows[:size]
    _print_rows([(row.id, row.name, row.kind, _state(row.state, row.cancel_pending), row.hub,
                  row.planned_start, row.exit_code) for row in shown])  # fmt: skip
    if size is not None and len(rows) > size:
        typer.echo(f"older jobs: harchos jobs list --before {shown[-1].id}", err=True)


def _state(state: str, cancel_pending: bool) -> str:
    return f"{state}, cancel pending" if cancel_pending else state


def _print_rows(
    rows: Sequence[tuple[str, str, str, str, str | None, str | None, int | None]],
) -> None:
    table = [("job", "name", "kind", "state", "hub", "planned start", "exit")]
    table += [
        (job_id, name, kind, state, hub or "-", start or "-", "-" if code is None else str(code))
        for job_id, name, kind, state, hub, start, code in rows
    ]
    # Plain aligned columns: no rich import or layout, so --all over many jobs stays quick.
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in table)  # fmt: skip
    typer.echo("\n".join(lines))


@app.command("clean", short_help="Forget finished jobs and their folders on hubs.")
def clean(
    older_than: str = typer.Option(
        None,
        "--older-than",
        metavar="AGE",
        help="Finished more than this long ago (default: the jobs.retention setting, else 7d).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; remove nothing."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Forget a job here even when a hub holding its folders is down, or its project "
        "copy keeps results not pulled (the folders stay on the hub).",
    ),
    json_output: bool = _JSON,
) -> None:
    """Forget finished jobs (done, failed, cancelled): their records, their local folder, and
    their job folders on the hubs, once each hub says their process has exited; and a project's
    copy on a hub once no job left uses it.

    A folder whose process still runs is never removed, nor a copy holding checkpoints or
    outputs that have no verified copy elsewhere (harchos jobs pull copies them): the job that
    used it last is kept. A job with folders on a hub that cannot be reached is kept for a
    later clean unless --force."""
    from harchos_cli.cli.output import print_json
    from harchos_cli.config import Config
    from harchos_cli.jobs import clean as cleaning
    from harchos_cli.timeparse import parse_duration

    age = (
        parse_duration(older_than)
        if older_than is not None
        else cleaning.retention(Config.load().get("jobs.retention"))
        or parse_duration(cleaning.DEFAULT_AGE)
    )
    store = _store()
    try:
        outcomes = cleaning.clean(store, age, dry_run=dry_run, force=force)
    finally:
        store.close()
    if json_output:
        print_json({"dry_run": dry_run, "jobs": [outcome.as_json() for outcome in outcomes]})
        return
    if not outcomes:
        typer.echo("no finished job is that old: nothing to clean")
        return
    verb = "would forget" if dry_run else "forgot"
    for outcome in outcomes:
        if outcome.forgotten:
            where = f", {len(outcome.removed)} folder(s) on hubs" if outcome.removed else ""
            typer.echo(
                f"{verb} job {outcome.job_id} ({outcome.state} {outcome.finished_at}{where})"
            )
        else:
            typer.echo(f"kept job {outcome.job_id}: {'; '.join(outcome.kept)}")
        for folder in outcome.removed if dry_run else ():
            typer.echo(f"  would remove {folder}")
    if any(outcome.unreachable and not outcome.forgotten for outcome in outcomes):
        typer.echo("run harchos jobs clean again once the hub is back, or add --force to forget "
                   "those jobs here (their folders stay on the hub)", err=True)  # fmt: skip


@app.command("show", short_help="One job: its plan, state and decisions.")
def show(job_id: str = _ID, json_output: bool = _JSON) -> None:
    """One job: its plan, stage, supervisor, outcome, and every decision taken about it; or,
    for an array's id, the array: its jobs' states, planned starts and expected saving."""
    from harchos_cli.cli.output import print_json

    if job_id.startswith("array-"):
        _show_array(job_id, json_output)
        return
    store = _store()
    try:
        job = store.get(job_id)
        decisions = [decision.as_json() for decision in store.decisions(job.id)]
    finally:
        store.close()
    data = job.as_json()
    if json_output:
        launch = _masked_launch(job.request.get("launch"), job.request.get("secret_env") or ())
        print_json({**data, "plan": job.plan, "launch": launch,
                    "decisions": decisions})  # fmt: skip
        return
    for key, value in data.items():
        if value is not None and value != []:
            typer.echo(f"{key:<19}{value}")
    launch = job.request.get("launch")
    if launch:
        from harchos_cli.jobs.launchers import render

        typer.echo(f"{'command':<19}{render(launch['argv'])}")
    if decisions:
        typer.echo("decisions")
        for decision in decisions:
            where = f" [{decision['hub']}]" if decision["hub"] else ""
            typer.echo(f"  {decision['at']}  {decision['action']}{where}: {decision['reason']}")


def _show_array(array_id: str, json_output: bool) -> None:
    from collections import Counter

    from harchos_cli.cli.output import print_json

    store = _store()
    try:
        members = store.array_members(array_id)
    finally:
        store.close()
    states = Counter(job.state for job in members)
    starts = sorted(job.planned_start for job in members if job.planned_start)
    savings = [float(s) for job in members
               if isinstance(s := (job.plan or {}).get("saving_vs_now"), int | float)]  # fmt: skip
    saving = sum(savings) / len(savings) if savings else None
    summary = {
        "array_id": array_id,
        "size": len(members),
        "states": dict(sorted(states.items())),
        "first_planned_start": starts[0] if starts else None,
        "last_planned_start": starts[-1] if starts else None,
        "mean_saving_vs_now": None if saving is None else round(saving, 4),
        "jobs": [{"index": job.request["array"]["index"], "job_id": job.id, "state": job.state,
                  "hub": job.hub, "planned_start": job.planned_start,
                  "exit_code": job.exit_code} for job in members],
    }  # fmt: skip
    if json_output:
        print_json(summary)
        return
    typer.echo(
        f"array {array_id}: {len(members)} jobs, "
        + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    )
    if starts:
        typer.echo(f"planned starts {starts[0]} to {starts[-1]}")
    if saving is not None:
        typer.echo(f"expected saving against starting at once: {saving:.0%} on average")
    typer.echo(f"jobs: harchos jobs list --array {array_id}")


def _masked_launch(launch: Any, marked: Sequence[str]) -> Any:
    """The saved launch with secret values masked in its and its machines' `env` (display
    only: the workload ran with the real values)."""
    from harchos_cli.secrets import mask_env

    if not isinstance(launch, dict):
        return launch
    shown = {**launch, "env": mask_env(launch.get("env") or {}, marked)}
    if isinstance(launch.get("nodes"), list):
        shown["nodes"] = [_masked_launch(node, marked) for node in launch["nodes"]]
    return shown


@app.command("logs", short_help="The job's output.")
def logs(
    job_id: str = _ID,
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing until it ends; exit with its exit code."
    ),
) -> None:
    """The job's output (stdout and stderr of the workload, and of the setup command)."""
    import codecs
    import sys
    import time

    from harchos_cli.jobs.store import log_path

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    store = _store()
    try:
        job = store.get(job_id)
        path = log_path(job.id)
        offset = 0
        said_waiting = False
        while True:
            current = store.get(job.id)
            active = current.active
            if follow and current.state == "waiting" and not said_waiting:
                said_waiting = True
                typer.echo(f"job {job.id} waits to start at {current.planned_start} on hub "
                           f"{current.hub}", err=True)  # fmt: skip
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            sys.stdout.write(decoder.decode(data))
            sys.stdout.flush()
            if not follow or (not active and not data):
                break
            time.sleep(0.25)
        job = store.get(job.id)
    finally:
        store.close()
    if follow:
        from harchos_cli.cli.run import exit_code

        code = "" if job.exit_code is None else f" (exit code {job.exit_code})"
        typer.echo(f"job {job.id} {job.state}{code}", err=True)
        # As `harchos run` would have exited: a script waiting on a job sees how it ended.
        raise typer.Exit(exit_code(job))


@app.command("cancel", short_help="Cancel a job, or an array's jobs.")
def cancel(
    job_id: str = typer.Argument(
        None,
        metavar="JOB_ID",
        help="A job id, or a unique prefix of one.",
        autocompletion=completion.job_ids,
        show_default=False,
    ),
    array: str = typer.Option(
        None, "--array", metavar="ARRAY_ID", help="Cancel every job of this array instead."
    ),
    wait: float = typer.Option(
        45.0, "--wait", help="Seconds to wait for the job to stop (0: do not wait)."
    ),
    json_output: bool = _JSON,
) -> None:
    """Cancel a job: a waiting one never starts; a running one is stopped on its hub (SIGTERM:
    training saves a checkpoint and exits)."""  # fmt: skip
    import time

    from harchos_cli.cli.output import print_json
    from harchos_cli.errors import UsageError
    from harchos_cli.jobs.supervisor import request_cancel

    if (job_id is None) == (array is None):
        raise UsageError("give a job id or --array ARRAY_ID",
                         hint="harchos jobs list shows the ids")  # fmt: skip
    if array is not None:
        store = _store()
        try:
            members = store.array_members(array)
            asked = [request_cancel(store, job.id) for job in members if job.active]
        finally:
            store.close()
        if json_output:
            print_json({"array_id": array, "cancelled": [job.id for job in asked],
                        "already_finished": len(members) - len(asked)})  # fmt: skip
        else:
            typer.echo(f"array {array}: cancel requested for {len(asked)} of {len(members)} "
                       "jobs (the others had finished)")  # fmt: skip
        return
    store = _store()
    try:
        job = store.get(job_id)
        was_active = job.active or job.state == "lost"
        job = request_cancel(store, job.id)
        deadline = time.monotonic() + wait
        # Not past the point where the hub is known not to answer: the cancel stays pending.
        while job.active and time.monotonic() < deadline and not _pending(job):
            time.sleep(0.2)
            job = store.get(job.id)
    finally:
        store.close()
    if json_output:
        print_json(job.as_json())
    elif not was_active:
        typer.echo(f"job {job.id} already {job.state}; nothing to cancel")
    elif _pending(job):
        typer.echo(f"job {job.id}: {job.message}")
    elif job.active:
        typer.echo(
            f"job {job.id}: cancel requested; the supervisor stops it on hub {job.hub} "
            "(SIGTERM: training saves at its next step boundary)"
        )
    else:
        typer.echo(f"job {job.id} {job.state}" + (f": {job.message}" if job.message else ""))


def _pending(job: Job) -> bool:
    """Whether the job's cancel waits for its hub (unreachable, or the job is lost)."""
    return job.cancel_requested and (
        job.state == "lost" or (job.active and (job.message or "").startswith("cancel pending"))
    )


@app.command("reattach", short_help="Follow a lost job's workload again.")
def reattach(job_id: str = _ID, json_output: bool = _JSON) -> None:
    """Take up a lost job again: its hub refused harchos while it ran (a changed host key, a
    refused login), so nothing followed its workload. Once the hub can be reached and trusted
    again (e.g. its new host key checked and the old one forgotten), a new supervisor follows
    the workload, still running or exited, and records how it ends."""
    from harchos_cli.jobs.supervisor import reattach as take_up

    _ask(
        job_id, json_output, take_up, "reattached: its supervisor follows it (harchos jobs logs -f)"
    )


def _ask(job_id: str, json_output: bool, act: Callable[[JobStore, str], Job], done: str) -> None:
    from harchos_cli.cli.output import print_json
    from harchos_cli.jobs.store import SLOT_WAIT

    store = _store()
    try:
        job = act(store, job_id)
    finally:
        store.close()
    if json_output:
        print_json(job.as_json())
    elif job.state == "paused" and (job.message or "").startswith(SLOT_WAIT):
        # Asked, not refused: its supervisor goes on as soon as the hub has a slot.
        typer.echo(f"job {job.id}: stays paused until a slot frees, then resumes ({job.message})")
    else:
        typer.echo(f"job {job.id}: {done}")


@app.command("pause", short_help="Pause a running job at a checkpoint.")
def pause(job_id: str = _ID, json_output: bool = _JSON) -> None:
    """Pause a running job: every worker saves a checkpoint and exits, freeing its GPUs; the
    job waits as `paused` until `harchos jobs resume`."""
    from harchos_cli.jobs.control import request_pause

    done = "pause requested; its workers save at the next step boundary (harchos jobs show)"
    _ask(job_id, json_output, request_pause, done)


@app.command("resume", short_help="Resume a paused job.")
def resume(job_id: str = _ID, json_output: bool = _JSON) -> None:
    """Resume a paused job from its newest checkpoint, on the hub it paused on; if that hub
    runs its max_jobs already, the job stays paused and resumes as soon as a slot frees."""
    from harchos_cli.jobs.control import request_resume

    _ask(job_id, json_output, request_resume,
         "resuming from its newest checkpoint (harchos jobs logs -f)")  # fmt: skip


@app.command("migrate", short_help="Move a job to another hub.")
def migrate(
    job_id: str = _ID,
    to: str = typer.Option(
        ..., "--to", help="The hub to move the job to.", autocompletion=completion.hubs
    ),
    json_output: bool = _JSON,
) -> None:
    """Move a running or paused job to another hub: pause at a checkpoint, copy the checkpoints
    there (verified by sha256), resume there. Any failed step leaves it where it was."""
    from harchos_cli.jobs.control import request_migrate

    _ask(job_id, json_output, lambda store, jid: request_migrate(store, jid, to),
         f"moving to hub {to} (harchos jobs show follows the steps)")  # fmt: skip


@app.command("scale", short_help="Restart training on more or fewer workers.")
def scale(
    job_id: str = _ID,
    gpus: int = typer.Option(None, "--gpus", help="GPUs to run on (a GPU job)."),
    processes: int = typer.Option(None, "--processes", help="Processes to run on (a CPU job)."),
    json_output: bool = _JSON,
) -> None:
    """Restart a running or paused training job from its checkpoint on more or fewer workers;
    the training script keeps the global batch size."""
    from harchos_cli.errors import UsageError
    from harchos_cli.jobs.control import request_scale

    if (gpus is None) == (processes is None):
        raise UsageError("give one of --gpus N or --processes N",
                         hint="--gpus for a GPU job, --processes for a CPU job")  # fmt: skip
    workers = gpus if gpus is not None else processes
    assert workers is not None
    _ask(job_id, json_output, lambda store, jid: request_scale(store, jid, workers),
         f"restarting on {workers} worker(s) from its next checkpoint")  # fmt: skip


@app.command("pull", short_help="Copy a job's outputs and checkpoints back.")
def pull(
    job_id: str = _ID,
    to: str = typer.Option(None, "--to", help="Copy here instead of into the project."),
    json_output: bool = _JSON,
) -> None:
    """Copy a job's outputs and its run's checkpoints back from the hub it ran on last (after
    any number of moves) into the project, or into --to DIR."""
    from harchos_cli.cli.output import print_json
    from harchos_cli.jobs.control import pull as pull_job

    store = _store()
    try:
        job, copied, where = pull_job(store, job_id, to)
    finally:
        store.close()
    if json_output:
        print_json({"job_id": job.id, "hub": job.hub, "to": where, "copied": copied})
    elif copied:
        typer.echo(f"job {job.id}: copied {', '.join(copied)} from hub {job.hub} into {where}")
    else:
        typer.echo(f"job {job.id}: its outputs and checkpoints are already in {where}")
