"""`harchos run`: launch the project's training or any command, when and where it is greenest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from harchos_cli.cli import completion

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from harchos_cli.jobs.request import Prepared, RunOptions
    from harchos_cli.jobs.store import Job

app = typer.Typer(
    help="Run training or any command on a hub, deferred until the grid is green.",
    short_help="Run training or a command when the grid is green.",
    rich_markup_mode=None,
    no_args_is_help=True,
)

_HUB = typer.Option(
    None, "--hub", help="Hub to run on (see `harchos hubs list`), or `auto`: the greenest hub "
    "with enough GPUs. Default: the only hub in harchos.toml, else local.", show_default=False,
    autocompletion=completion.hubs_or_auto,
)  # fmt: skip
_DEFER = typer.Option(
    False, "--defer-until-green", help="Wait for the greenest window before the deadline."
)
_DURATION = typer.Option(
    None, "--duration", help="Expected run time (90m, 6h, PT6H). Default: [job] "
    "expected_duration, else 1h.", show_default=False,
)  # fmt: skip
_DEADLINE = typer.Option(
    None, "--deadline", help="Finish by then: a duration from now (12h) or an ISO time. "
    "Default: [carbon] deadline, else 24h.", show_default=False,
)  # fmt: skip
_THRESHOLD = typer.Option(
    None, "--threshold", help="gCO2eq/kWh: start as soon as intensity is at or under it "
    "(implies --defer-until-green). Default: [carbon] threshold.", show_default=False,
)  # fmt: skip
_PROVIDER = typer.Option(
    None, "--provider", help="Carbon data: auto, embedded, electricitymaps, watttime, ukgrid, "
    "entsoe or replay:PATH.", show_default=False,
)  # fmt: skip
_AT = typer.Option(
    None, "--at", help="Pretend it is this time (ISO-8601) while planning and waiting.",
    show_default=False,
)  # fmt: skip


def _speedup(value: float | None) -> float | None:
    import math

    from harchos_cli.errors import UsageError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"--speedup {value:g} must be a positive number", hint="e.g. --speedup 60")
    return value


_SPEEDUP = typer.Option(
    None, "--speedup", help="Run the waiting clock N times faster (demos, tests); the workload "
    "runs in real time.", show_default=False, callback=_speedup,
)  # fmt: skip
_DETACH = typer.Option(
    False, "--detach", help="Hand the job to a background supervisor; print its id and return."
)
_MIGRATE = typer.Option(
    None, "--migrate", metavar="auto|off",
    help="auto: move the running job to a greener hub when it pays (default [carbon] "
    "allow_migration).",
)  # fmt: skip
_INTERRUPTIBLE = typer.Option(
    False, "--interruptible", help="Pause the running job through dirty hours, before the deadline."
)
_OBJECTIVE = typer.Option(
    None, "--objective", metavar="carbon|cost|balanced",
    help="What chooses the hub and time: emissions (default), money, or money plus "
    "emissions at cost.carbon_price_per_tonne.", show_default=False,
)  # fmt: skip
_ARRAY = typer.Option(
    None, "--array", metavar="A-B",
    help="A job array: one waiting job per index A..B (HARCHOS_ARRAY_INDEX), held by the "
    "scheduler; needs --defer-until-green or --threshold.", show_default=False,
)  # fmt: skip
_MAX_PARALLEL = typer.Option(
    None, "--max-parallel", metavar="K", min=1,
    help="At most K of the array's jobs planned into any one hour.", show_default=False,
)  # fmt: skip
_DRY_RUN = typer.Option(False, "--dry-run", help="Show the plan and exact commands; run nothing.")
_JSON = typer.Option(False, "--json", help="Print one JSON object (docs/run.md) on stdout.")


@app.command(
    "train",
    short_help="Run the project's training on a hub.",
    context_settings={"allow_interspersed_args": False},
)
def train(
    args: list[str] = typer.Argument(
        None,
        metavar="ARGS",
        help="Extra arguments for the training script (after --).",
        show_default=False,
    ),
    hub: str = _HUB,
    defer: bool = _DEFER,
    duration: str = _DURATION,
    deadline: str = _DEADLINE,
    threshold: float = _THRESHOLD,
    provider: str = _PROVIDER,
    at: str = _AT,
    speedup: float = _SPEEDUP,
    detach: bool = _DETACH,
    fresh: bool = typer.Option(
        False, "--fresh", help="Start a new run instead of resuming the project's checkpoints."
    ),
    migrate: str = _MIGRATE,
    interruptible: bool = _INTERRUPTIBLE,
    scale: str = typer.Option(
        None,
        "--scale",
        metavar="MIN:MAX",
        help="Run on MAX workers while green, down to MIN while dirty (GPUs, or CPU processes).",
    ),
    hubs: str = typer.Option(
        None,
        "--hubs",
        metavar="A,B,...",
        help="Multi-node: one machine on each hub, in rank order (the first is the main node).",
        autocompletion=completion.hub_list,
    ),
    nodes: int = typer.Option(
        None, "--nodes", help="How many machines (the number of hubs in --hubs).", min=1
    ),
    main_address: str = typer.Option(
        None,
        "--main-address",
        help="Where the other machines reach the main node (default: its SSH host).",
    ),
    objective: str = _OBJECTIVE,
    array: str = _ARRAY,
    max_parallel: int = _MAX_PARALLEL,
    dry_run: bool = _DRY_RUN,
    json_output: bool = _JSON,
) -> None:
    """Run the project's training (harchos.toml [job]) under `accelerate launch` on a hub.

    It resumes the project's newest training run from its checkpoints, whichever job ran it
    before; --fresh starts a new run."""
    from harchos_cli.jobs.request import RunOptions

    options = RunOptions(
        "train", list(args or []), hub, defer, duration, deadline, threshold, provider, at,
        speedup, detach, fresh=fresh, migrate=migrate, interruptible=interruptible, scale=scale,
        hubs=hubs, nodes=nodes, main_address=main_address, objective=objective, array=array,
        max_parallel=max_parallel,
    )  # fmt: skip
    raise typer.Exit(_run(options, dry_run=dry_run, json_output=json_output))


@app.command(
    "batch",
    short_help="Run any command on a hub.",
    context_settings={"allow_interspersed_args": False},
)
def batch(
    command: list[str] = typer.Argument(
        None,
        metavar="CMD",
        help="The command to run, after -- (default: [job] command).",
        show_default=False,
    ),
    hub: str = _HUB,
    defer: bool = _DEFER,
    duration: str = _DURATION,
    deadline: str = _DEADLINE,
    threshold: float = _THRESHOLD,
    provider: str = _PROVIDER,
    at: str = _AT,
    speedup: float = _SPEEDUP,
    detach: bool = _DETACH,
    migrate: str = _MIGRATE,
    interruptible: bool = _INTERRUPTIBLE,
    objective: str = _OBJECTIVE,
    array: str = _ARRAY,
    max_parallel: int = _MAX_PARALLEL,
    dry_run: bool = _DRY_RUN,
    json_output: bool = _JSON,
) -> None:
    """Run any command on a hub, when the grid is green (the project is synced there first)."""
    from harchos_cli.jobs.request import RunOptions

    options = RunOptions(
        "batch", list(command or []), hub, defer, duration, deadline, threshold, provider, at,
        speedup, detach, migrate=migrate, interruptible=interruptible, objective=objective,
        array=array, max_parallel=max_parallel,
    )  # fmt: skip
    raise typer.Exit(_run(options, dry_run=dry_run, json_output=json_output))


@app.command("serve", short_help="Serve the model on the greenest hubs.")
def serve(
    hubs: str = typer.Option(
        None,
        "--hubs",
        metavar="A,B,...",
        help="Hubs the replicas may use (default [serve] hubs, else [carbon] hubs, else the "
        "project's hub).",
        autocompletion=completion.hub_list,
    ),
    replicas: int = typer.Option(
        None, "--replicas", min=1, help="How many replicas (default [serve] replicas, else 1)."
    ),
    router_port: int = typer.Option(
        None,
        "--router-port",
        min=0,
        max=65535,
        help="The router's port (default [serve] router_port, else 8080; 0 picks a free one).",
    ),
    provider: str = _PROVIDER,
    at: str = _AT,
    speedup: float = _SPEEDUP,
    detach: bool = typer.Option(
        False, "--detach", help="Hand the deployment to a background controller and return."
    ),
    json_output: bool = _JSON,
) -> None:
    """Serve the project's model: `vllm serve` replicas on the greenest hubs, behind a
    carbon-aware router. In the foreground until Ctrl-C (which drains and stops them)."""
    from harchos_cli.serve.deploy import ServeOptions

    options = ServeOptions(hubs, replicas, router_port, provider, at, speedup)
    raise typer.Exit(_serve(options, detach=detach, json_output=json_output))


def _serve(options: Any, *, detach: bool, json_output: bool) -> int:
    from harchos_cli.cli.output import print_json
    from harchos_cli.serve import deploy
    from harchos_cli.serve.controller import Controller, spawn
    from harchos_cli.serve.store import ServeStore

    deployment = deploy.prepare(options)
    if detach:
        spawn(deployment.id)
        store = ServeStore()
        try:
            current = deploy.wait_for_launch(store, deployment.id, timeout_s=120.0)
            data = _serve_json(deploy.status(store, current))
        finally:
            store.close()
        if json_output:
            print_json(data)
        else:
            typer.echo(deployment.id)
            typer.echo(
                f"serving in the background at {data['router_url']}: `harchos serve status` "
                "shows it, `harchos serve stop` drains and stops it", err=True,
            )  # fmt: skip
        return 0 if current.state not in ("failed",) else 1

    def ready(current: Any, rows: Any) -> None:
        data = _serve_json({
            "deployment_id": current.id, "router_url": current.router_url, "state": current.state,
            "replicas": [row.as_json() for row in rows],
        })  # fmt: skip
        if json_output:
            print_json(data)
        else:
            typer.echo(f"ready: {data['router_url']} (Ctrl-C drains and stops)", err=True)

    def notice(message: str) -> None:
        typer.echo(f"harchos: {message}", err=True)

    final = Controller(deployment.id, notice=notice, on_ready=ready).run()
    return 0 if final.state == "stopped" else 1


def _serve_json(status: dict[str, Any]) -> dict[str, Any]:
    """`harchos run serve --json`: the router and each replica (docs/serving.md)."""
    return {
        "deployment_id": status["deployment_id"], "router_url": status["router_url"],
        "state": status["state"],
        "replicas": [
            {k: r.get(k) for k in ("id", "hub", "region", "url", "state")}
            for r in status["replicas"]
        ],
    }  # fmt: skip


def _run(options: RunOptions, *, dry_run: bool, json_output: bool) -> int:
    from harchos_cli.cli.output import print_json, warn_all
    from harchos_cli.jobs.liveness import revive
    from harchos_cli.jobs.request import prepare
    from harchos_cli.jobs.store import new_id
    from harchos_cli.jobs.supervisor import create_job
    from harchos_cli.jobs.supervisor import dry_run as describe

    revive()
    if options.array is not None or options.max_parallel is not None:
        return _submit_array(options, dry_run=dry_run, json_output=json_output)
    prepared = prepare(options)
    run_id = _run_id(prepared, options.fresh)
    warn_all(prepared.plan.warnings)
    if dry_run:
        plan = masked(describe(prepared, run_id), prepared.request.project.spec.job.secret_env)
        plan["checks"] = {"launcher": _launcher_problems(prepared) or "ok"}
        if json_output:
            print_json(plan)
        else:
            _print_dry_run(plan)
        return 0
    _refuse_launcher_problems(prepared)
    from harchos_cli.jobs.clean import clean_when_due

    clean_when_due()  # `jobs.retention`: in the background, at most hourly; never waited on
    if options.detach:
        return _detach(prepared, json_output, run_id)
    job_id = new_id()
    if not json_output:
        _print_plan(prepared, job_id)
    return _foreground(
        job_id,
        lambda: create_job(prepared, detached=False, job_id=job_id, run_id=run_id),
        json_output,
    )


def _submit_array(options: RunOptions, *, dry_run: bool, json_output: bool) -> int:
    """`--array A-B`: one waiting job per index, all held by the scheduler."""
    from dataclasses import replace

    from harchos_cli.cli.output import print_json, warn_all
    from harchos_cli.errors import UsageError
    from harchos_cli.jobs.request import array_indices, prepare
    from harchos_cli.jobs.scheduler import submit_array

    if options.array is None:
        raise UsageError("--max-parallel applies to a job array", hint="add --array A-B")
    indices = array_indices(options.array)
    if dry_run:
        raise UsageError("--dry-run shows one job, not an array",
                         hint="drop --array to see one job's plan and commands")  # fmt: skip
    first = prepare(replace(options, array=None, max_parallel=None))
    if not first.request.defer:
        raise UsageError(
            "a job array waits for green hours in the scheduler",
            hint="add --defer-until-green (or --threshold) with a --deadline that fits the array",
        )
    _refuse_launcher_problems(first)
    array_id, made, warnings = submit_array(first, indices, options.max_parallel)
    warn_all(warnings)
    if json_output:
        print_json({"array_id": array_id, "jobs": [
            {"index": index, "job_id": job.id, "hub": job.hub, "planned_start": job.planned_start}
            for index, job in made
        ]})  # fmt: skip
        return 0
    starts = sorted(job.planned_start or "" for _, job in made)
    typer.echo(array_id)
    typer.echo(
        f"{len(made)} jobs waiting for their windows, {starts[0]} to {starts[-1]}: list them "
        f"with `harchos jobs list --array {array_id}`, cancel them with `harchos jobs cancel "
        f"--array {array_id}`",
        err=True,
    )
    return 0


def _refuse_launcher_problems(prepared: Prepared) -> None:
    from harchos_cli.errors import UsageError

    problems = _launcher_problems(prepared)
    if problems:
        raise UsageError(
            problems[0],
            hint="install it where the job runs (pip install 'accelerate>=1.0' in the project's "
            "environment, or with [job] setup), then run again; --dry-run shows this check",
        )


def _launcher_problems(prepared: Prepared) -> list[str]:
    """Training's launcher, checked on each hub the job will run on before it waits."""
    from harchos_cli.jobs.launchers import missing_launcher
    from harchos_cli.jobs.request import get_hub

    request = prepared.request
    if request.kind != "train":
        return []
    names = request.nodes or [prepared.plan.choice.hub]
    found = [missing_launcher(request.project, get_hub(name, request.project)) for name in names]
    return [problem for problem in found if problem]


def masked(plan: dict[str, Any], marked: Sequence[str] = ()) -> dict[str, Any]:
    """The dry run's plan with secret values masked in every machine's `env` and command line
    (display only: the job is launched with the real values)."""
    from harchos_cli.jobs.launchers import render
    from harchos_cli.secrets import mask_env

    def machine(launch: dict[str, Any]) -> dict[str, Any]:
        env = mask_env(launch.get("env") or {}, marked)
        shown = {**launch, "env": env}
        if "command_line" in launch:
            shown["command_line"] = render(launch["argv"], env, launch.get("cwd"))
        return shown

    main = machine(plan["launch"])
    return {
        **plan,
        "launch": main,
        "nodes": [machine(node) for node in plan.get("nodes") or []],
        "command_line": render(main["argv"], main["env"], main.get("cwd")),
    }


def _run_id(prepared: Prepared, fresh: bool) -> str | None:
    from harchos_cli.jobs.control import choose_run
    from harchos_cli.jobs.store import JobStore

    store = JobStore()
    try:
        request = prepared.request
        return choose_run(store, str(request.project.root), request.kind, fresh=fresh)
    finally:
        store.close()


def _detach(prepared: Prepared, json_output: bool, run_id: str | None) -> int:
    from harchos_cli.cli.output import print_json
    from harchos_cli.jobs.liveness import spawn, start_scheduler
    from harchos_cli.jobs.supervisor import create_job, queues_in_slurm

    job = create_job(prepared, detached=True, run_id=run_id)
    if job.state == "waiting" and not queues_in_slurm(job, prepared.request):
        # Waiting for its window costs no process of its own: the scheduler holds it.
        start_scheduler()
    else:
        spawn(job.id)
    if json_output:
        print_json({**prepared.plan.as_json(), "job_id": job.id, "state": job.state,
                    "detached": True})  # fmt: skip
    else:
        _print_plan(prepared, job.id)
        typer.echo(job.id)
        typer.echo(
            f"running in the background: follow with `harchos jobs logs -f {job.id}`, "
            f"stop with `harchos jobs cancel {job.id}`",
            err=True,
        )
    return 0


def _foreground(job_id: str, create: Callable[[], object], json_output: bool) -> int:
    from harchos_cli.cli.app import Interrupted
    from harchos_cli.cli.output import print_json
    from harchos_cli.jobs.liveness import spawn
    from harchos_cli.jobs.store import JobStore
    from harchos_cli.jobs.supervisor import Supervisor

    reporter = ConsoleReporter(json_output)
    store = JobStore()
    try:
        try:
            final = Supervisor(job_id, reporter, store=store).run(create)
        except (Interrupted, KeyboardInterrupt):
            reporter.close()
            current = store.get(job_id)
            if current.state == "waiting" and store.advance(
                job_id, ["waiting"], "cancelled", cancel_requested=True,
                message="cancelled with Ctrl-C while waiting; nothing ran",
            ):  # fmt: skip
                typer.echo(f"cancelled job {job_id} while it waited; nothing ran", err=True)
            elif current.active:
                spawn(job_id)
                typer.echo(
                    f"job {job_id} goes on in the background on hub {current.hub}: "
                    f"`harchos jobs logs -f {job_id}` follows it, "
                    f"`harchos jobs cancel {job_id}` stops it",
                    err=True,
                )
            raise
        reporter.close()
    finally:
        store.close()
    if json_output:
        print_json(result_json(final))
    else:
        typer.echo(_summary(final), err=True)
    return exit_code(final)


def exit_code(job: Job) -> int:
    """The job's exit code as `harchos run`'s own: 4 when a hub step failed, else the
    workload's, 1 when it has none."""
    if job.failure == "hub":
        return 4
    if job.exit_code is not None:
        return job.exit_code if 0 <= job.exit_code <= 255 else 1
    return 130 if job.state == "cancelled" else 1


def result_json(job: Job) -> dict[str, Any]:
    """`harchos run --json`: the job and its plan as one object (docs/run.md)."""
    plan = dict(job.plan or {})
    plan.pop("hub", None)
    return {**plan, **job.as_json(), "planned_start": job.planned_start}


def _summary(job: Job) -> str:
    code = "no exit code" if job.exit_code is None else f"exit code {job.exit_code}"
    text = f"job {job.id} {job.state} on hub {job.hub} ({code})"
    return f"{text}: {job.message}" if job.message and job.state != "done" else text


def plan_line(plan: dict[str, Any]) -> str:
    """One line: when, where, expected intensity, saving against now, and the data's source."""
    hub = plan.get("hub") or "?"
    if plan.get("expected_intensity") is None:
        return f"start at once on hub {hub} ({plan.get('reason')})"
    where = f"hub {hub}, {plan.get('region')} ({plan.get('zone')})"
    text = (
        f"start {plan['planned_start']} on {where}: {plan['reason']}, expected "
        f"{plan['expected_intensity']:g} gCO2eq/kWh"
    )
    saving = plan.get("saving_vs_now")
    if saving is not None and plan.get("now_intensity") is not None:
        from harchos_cli.carbon.windows import saving_text

        shown = saving_text(saving, plan.get("uncertainty"))
        text += f", {shown} less than starting now ({plan['now_intensity']:g})"
    detail = f", {plan['source_detail']}" if plan.get("source_detail") else ""
    return f"{text}; data: {plan.get('provider')} ({plan.get('source_kind')}{detail})"


def _print_plan(prepared: Prepared, job_id: str) -> None:
    from harchos_cli.cli.render import plan_choice_lines

    plan = prepared.plan.as_json()
    typer.echo(f"job {job_id}: {plan_line(plan)}", err=True)
    for line in plan_choice_lines(plan):
        typer.echo(line, err=True)


def _print_dry_run(plan: dict[str, Any]) -> None:
    from harchos_cli.cli.render import plan_choice_lines
    from harchos_cli.jobs.launchers import render

    typer.echo(f"plan: {plan_line(plan)}")
    for line in plan_choice_lines(plan):
        typer.echo(line)
    typer.echo("commands (nothing is run):")
    if plan["sync"]:
        typer.echo(f"  sync   {plan['sync']['from']} -> {plan['sync']['to']} (never .git)")
    if plan["setup"]:
        typer.echo(f"  setup  {render(plan['setup']['command'])}")
    launch = plan["launch"]
    slurm = launch.get("slurm")
    if slurm:
        typer.echo(f"  submit {render(slurm['sbatch'])} (the batch script runs the launch)")
        if slurm.get("nodes", 1) > 1:
            typer.echo(f"  on each of {slurm['nodes']} machines (srun), with its rank filled in:")
    typer.echo(f"  launch {render(launch['argv'], launch['env'], launch['cwd'])}")
    for rank, node in enumerate(plan.get("nodes") or [], start=1):
        typer.echo(f"  machine {rank} on hub {node['hub']}: {node['command_line']}")
    launcher = (plan.get("checks") or {}).get("launcher", "ok")
    if launcher != "ok":
        for problem in launcher:
            typer.echo(f"check: {problem} (a real run stops here, before waiting)")


class ConsoleReporter:
    """The foreground reporter: plan and countdown on stderr (rich), the job's log on stdout
    (on stderr with --json, so stdout holds only the JSON object)."""

    def __init__(self, json_output: bool) -> None:
        import codecs
        import sys

        from rich.console import Console

        self.json_output = json_output
        self.console = Console(stderr=True)
        self.out = sys.stderr if json_output else sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.status: Any = None

    def planned(self, job: Job, plan: dict[str, Any], *, replanned: bool) -> None:
        del job
        if not self.json_output:
            verb = "re-planned" if replanned else "plan"
            self._stop_status()
            self.console.print(f"{verb}: {plan_line(plan)}", highlight=False, markup=False)

    def waiting(self, job: Job, now: Any, start: Any) -> None:
        del job
        if self.json_output:
            return
        from harchos_cli.timeparse import format_duration, iso

        left = format_duration(start - now)
        text = f"waiting for a green window: starts in {left} (at {iso(start)}); Ctrl-C cancels"
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def stage(self, job: Job, stage: str, detail: str) -> None:
        del job
        self._stop_status()
        if not self.json_output or stage in {"failed", "cancelled"}:
            self.console.print(f"[{stage}] {detail}", highlight=False, markup=False, soft_wrap=True)

    def output(self, data: bytes) -> None:
        self._stop_status()
        self.out.write(self.decoder.decode(data))
        self.out.flush()

    def notice(self, message: str) -> None:
        self._stop_status()
        self.console.print(f"harchos: {message}", highlight=False, markup=False)

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        self._stop_status()
