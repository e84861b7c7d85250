"""From what the user asked (`harchos run` options and `harchos.toml`) to a planned job.

Precedence, as everywhere in harchos: command-line flag > `harchos.toml` > default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harchos_cli.carbon.types import Forecast
from harchos_cli.errors import UsageError
from harchos_cli.hubs.base import LOCAL, Hub
from harchos_cli.jobs.clock import Clock, SimulatedClock
from harchos_cli.jobs.spec import HubTable, Project, load_project
from harchos_cli.plan import planner
from harchos_cli.plan.planner import Candidate, Plan
from harchos_cli.timeparse import floor_hour, iso, parse_deadline, parse_duration, parse_instant

AUTO = "auto"
DEFAULT_DEADLINE = "24h"
DEFAULT_DURATION = "1h"


@dataclass
class RunOptions:
    """The options of `harchos run train|batch` (None: not given on the command line)."""

    kind: str
    args: list[str] = field(default_factory=list)
    hub: str | None = None
    defer: bool = False
    duration: str | None = None
    deadline: str | None = None
    threshold: float | None = None
    provider: str | None = None
    at: str | None = None
    speedup: float | None = None
    detach: bool = False
    project_dir: Path | None = None
    fresh: bool = False
    migrate: str | None = None  # "auto" or "off"; None: [carbon] allow_migration
    interruptible: bool = False
    scale: str | None = None  # "MIN:MAX"; None: [job] min/max_processes with allow_rescale


@dataclass
class Request:
    """The resolved request: stored with the job, enough to re-plan in another process."""

    kind: str
    project: Project
    args: list[str]
    hub: str
    defer: bool
    duration: timedelta
    deadline: datetime | None
    threshold: float | None
    provider: str | None
    gpus: int
    clock: dict[str, Any] | None
    deadline_text: str = DEFAULT_DEADLINE
    shift: dict[str, Any] | None = None  # what the supervisor may do while it runs (see below)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "argv": self.args,
            "hub": self.hub,
            "defer": self.defer,
            "duration_s": self.duration.total_seconds(),
            "deadline": iso(self.deadline) if self.deadline else None,
            "threshold": self.threshold,
            "provider": self.provider,
            "gpus": self.gpus,
            "clock": self.clock,
            "project_file": str(self.project.file) if self.project.file else None,
            "shift": self.shift,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], project_dir: str) -> Request:
        project = load_project(Path(project_dir), required=data["kind"] == "train")
        return cls(
            kind=data["kind"],
            project=project,
            args=list(data.get("argv") or []),
            hub=data["hub"],
            defer=bool(data["defer"]),
            duration=timedelta(seconds=float(data["duration_s"])),
            deadline=parse_instant(data["deadline"]) if data.get("deadline") else None,
            threshold=data.get("threshold"),
            provider=data.get("provider"),
            gpus=int(data.get("gpus") or 0),
            clock=data.get("clock"),
            shift=data.get("shift"),
        )


def resolve(options: RunOptions) -> Request:
    """Apply the precedence rules and check every value (`UsageError`, exit 2, when bad).

    The deadline is fixed later, by `fix_deadline`, against the clock the job waits on.
    """
    project = load_project(options.project_dir, required=options.kind == "train")
    spec = project.spec
    if options.kind == "batch" and not options.args and spec.job.command is None:
        raise UsageError(
            "no command to run", hint="give one after --: harchos run batch -- python pipeline.py"
        )
    duration = parse_duration(options.duration or spec.job.expected_duration or DEFAULT_DURATION)
    threshold = options.threshold if options.threshold is not None else spec.carbon.threshold
    if threshold is not None and threshold < 0:
        raise UsageError(f"--threshold {threshold:g} must not be negative")
    # In harchos.toml, 0 means "no threshold: wait for the greenest window".
    if threshold == 0 and options.threshold is None:
        threshold = None
    defer = options.defer or options.threshold is not None
    shift = shift_policy(options, project)
    if options.deadline and not defer and shift is None:
        raise UsageError(
            "--deadline needs --defer-until-green, --threshold, --interruptible, "
            "--migrate auto or --scale",
            hint="add --defer-until-green to wait for a green window before the deadline",
        )
    if options.speedup is not None and options.speedup <= 0:
        raise UsageError(f"--speedup {options.speedup:g} must be positive")
    return Request(
        kind=options.kind,
        project=project,
        args=list(options.args),
        hub=options.hub or default_hub(project),
        defer=defer,
        duration=duration,
        deadline=None,
        threshold=threshold if defer else None,
        provider=options.provider,
        gpus=spec.job.gpus if options.kind == "train" else 0,
        clock=None,
        deadline_text=options.deadline or spec.carbon.deadline or DEFAULT_DEADLINE,
        shift=shift,
    )


def shift_policy(options: RunOptions, project: Project) -> dict[str, Any] | None:
    """What the supervisor may do while the job runs (`plan.shifting.ShiftPolicy` as JSON), or
    None: `--migrate auto` (default `[carbon] allow_migration`), `--interruptible`, `--scale
    MIN:MAX` (default `[job] min_processes:max_processes` with `[carbon] allow_rescale`)."""
    spec = project.spec
    if options.migrate not in (None, "auto", "off"):
        raise UsageError(
            f"--migrate {options.migrate!r} is not auto or off",
            hint="--migrate auto lets harchos move the job to a greener hub",
        )
    migrate = spec.carbon.allow_migration if options.migrate is None else options.migrate == "auto"
    scale: list[int] | None = None
    if options.scale is not None:
        low, sep, high = options.scale.partition(":")
        try:
            scale = [int(low), int(high)] if sep else []
        except ValueError:
            scale = []
        if len(scale) != 2 or not 1 <= scale[0] <= scale[1]:
            raise UsageError(
                f"--scale {options.scale!r} is not MIN:MAX",
                hint="e.g. --scale 1:4 (workers: GPUs, or processes on the CPU)",
            )
    elif spec.carbon.allow_rescale and spec.job.min_processes and spec.job.max_processes:
        scale = [spec.job.min_processes, spec.job.max_processes]
    if scale is not None and options.kind != "train":
        raise UsageError("--scale applies to training only", hint="drop --scale")
    if not (migrate or options.interruptible or scale):
        return None
    between = parse_duration(spec.carbon.min_time_between_moves or "6h")
    return {
        "migrate": migrate,
        "interruptible": options.interruptible,
        "scale": scale,
        "min_saving": spec.carbon.min_saving_percent / 100,
        "min_hours_between_moves": between.total_seconds() / 3600,
    }


def fix_deadline(request: Request, now: datetime) -> None:
    """Turn the deadline (a duration from now or a timestamp) into a time, and check the job
    can finish by it."""
    if not request.defer and request.shift is None:
        return
    request.deadline = parse_deadline(request.deadline_text, now)
    planner.check_feasible(now, request.duration, request.deadline)


def default_hub(project: Project) -> str:
    """The only hub `harchos.toml` names, else `local`."""
    names = list(project.spec.carbon.hubs or project.spec.hubs)
    return names[0] if len(names) == 1 else LOCAL


def hub_from_table(name: str, table: HubTable) -> Hub:
    """A hub described only in `harchos.toml`."""
    if table.transport == "ssh" and not table.host:
        raise UsageError(
            f"hub {name!r} in harchos.toml has no host",
            hint=f'add host = "..." under [hubs.{name}], or: harchos hubs add {name} --ssh HOST',
        )
    values: dict[str, Any] = {
        "name": name,
        "transport": table.transport,
        "host": table.host,
        "user": table.user,
        "port": table.port,
        "identity": Path(table.identity).expanduser() if table.identity else None,
        "region": table.region,
        "gpus": table.gpus,
        "gpu_type": table.gpu_type,
        "price_per_gpu_hour": table.price_per_gpu_hour,
        "pue": table.pue,
        "host_key_policy": table.host_key_policy,
    }
    if table.workdir:
        values["workdir"] = table.workdir
    if table.python:
        values["python"] = table.python
    return Hub(**values)


def get_hub(name: str, project: Project) -> Hub:
    """`name` from the hub inventory (`harchos hubs add`), else from `harchos.toml`; the
    project's table fills what the inventory leaves open (region, GPUs, price)."""
    from harchos_cli.hubs import inventory

    table = project.spec.hubs.get(name)
    try:
        hub = inventory.get(name)
    except UsageError:
        if table is None:
            raise
        return _with_region(hub_from_table(name, table), project)
    if table is not None:
        hub = replace(
            hub,
            region=hub.region or table.region,
            gpus=hub.gpus if hub.gpus is not None and name != LOCAL else
            (table.gpus if table.gpus is not None else hub.gpus),
            price_per_gpu_hour=hub.price_per_gpu_hour
            if hub.price_per_gpu_hour is not None
            else table.price_per_gpu_hour,
            pue=hub.pue if hub.pue != 1.0 else table.pue,
        )  # fmt: skip
    return _with_region(hub, project)


def _with_region(hub: Hub, project: Project) -> Hub:
    if hub.region is None and project.spec.carbon.region:
        return replace(hub, region=project.spec.carbon.region)
    return hub


def candidate_hubs(request: Request) -> list[Hub]:
    """The hub the job runs on, or with `--hub auto` every hub with enough GPUs."""
    project = request.project
    if request.hub != AUTO:
        return [get_hub(request.hub, project)]
    from harchos_cli.hubs import inventory

    names = project.spec.carbon.hubs
    if not names:
        names = [hub.name for hub in inventory.list_hubs()]
        names += [name for name in project.spec.hubs if name not in names]
    hubs = [get_hub(name, project) for name in names]
    fitting = [
        hub
        for hub in hubs
        if request.gpus == 0 or (hub.gpus is not None and hub.gpus >= request.gpus)
    ]
    if not fitting:
        raise UsageError(
            f"no hub has the {request.gpus} GPU(s) the job needs "
            f"(hubs: {', '.join(h.name for h in hubs)})",
            hint="add one with: harchos hubs add NAME --ssh HOST --gpus N",
        )
    return fitting


class Forecaster:
    """Forecasts for hubs' regions from one provider, each region fetched once per `now`."""

    def __init__(self, provider: str | None, project: Project) -> None:
        from harchos_cli.carbon.service import ForecastService

        self.service = ForecastService.from_settings(provider, project_file=project.file)
        self.warnings: list[str] = list(self.service.config.warnings)

    def default_now(self, wall: datetime) -> datetime:
        return self.service.default_now(wall)

    def region_name(self, hub: Hub) -> str | None:
        if hub.region:
            return hub.region
        replay = self.service.replay
        return replay.trace.zone if replay is not None else None

    def forecasts(self, hubs: Sequence[Hub], now: datetime, deadline: datetime) -> list[Candidate]:
        from harchos_cli.carbon import regions

        hours = max(1, math.ceil((deadline - floor_hour(now)) / timedelta(hours=1)) + 1)
        cache: dict[str, Forecast] = {}
        candidates = []
        for hub in hubs:
            name = self.region_name(hub)
            if name is None:
                self.warnings.append(
                    f"hub {hub.name!r} has no region: no carbon data, it would start at once "
                    f"(set one with: harchos hubs add {hub.name} --region R, or [carbon] region)"
                )
                candidates.append(Candidate(hub, None))
                continue
            region = regions.resolve(name)
            if region.name not in cache:
                cache[region.name] = self.service.forecast(region, now, hours)
            candidates.append(Candidate(hub, cache[region.name]))
        return candidates


def make_plan(request: Request, forecaster: Forecaster | None, now: datetime) -> Plan:
    """Plan the job at `now`: start at once unless deferred; with `--hub auto`, choose the hub."""
    hubs = candidate_hubs(request)
    if not request.defer and len(hubs) == 1:
        return planner.start_now(hubs[0], now=now, duration=request.duration, gpus=request.gpus)
    assert forecaster is not None
    deadline = request.deadline or now + request.duration
    candidates = forecaster.forecasts(hubs, now, deadline)
    if len(candidates) == 1 and candidates[0].forecast is None:
        name = candidates[0].hub.name
        raise UsageError(
            f"hub {name!r} has no region, so there is no carbon data to plan with",
            hint=f"set [carbon] region in harchos.toml, or: harchos hubs add {name} --region R",
        )
    plan = planner.choose(
        candidates,
        now=now,
        duration=request.duration,
        deadline=deadline,
        threshold=request.threshold,
        gpus=request.gpus,
    )
    plan.warnings[:0] = [w for w in forecaster.warnings if w not in plan.warnings]
    if not request.defer:
        # --hub auto without deferral: the greenest hub right now.
        plan.deadline = None
    return plan


def start_clock(at: str | None, speedup: float | None, forecaster: Forecaster | None) -> Clock:
    """The clock a job waits on: simulated with `--at`/`--speedup` or a replayed trace."""
    from harchos_cli.jobs.clock import RealClock
    from harchos_cli.timeparse import utcnow

    replay = forecaster is not None and forecaster.service.replay is not None
    if at is None and speedup is None and not replay:
        return RealClock()
    origin = (
        parse_instant(at) if at else (forecaster.default_now(utcnow()) if forecaster else utcnow())
    )
    return SimulatedClock(origin, speedup or 1.0)


@dataclass
class Prepared:
    """A request with its plan, and the clock it will wait on (what `harchos run` submits)."""

    request: Request
    plan: Plan
    clock: Clock


def prepare(options: RunOptions) -> Prepared:
    """Resolve the options, fix the deadline, and plan the job.

    A simulated clock (`--at`, `--speedup`, a replayed trace) stands still while planning: it is
    anchored to the wall clock only once the plan is made, so the plan's "now" is `--at` exactly.
    """
    import time

    from harchos_cli.jobs.clock import RealClock

    request = resolve(options)
    needs_forecast = request.defer or request.hub == AUTO or request.shift is not None
    forecaster = Forecaster(request.provider, request.project) if needs_forecast else None
    clock = start_clock(options.at, options.speedup, forecaster)
    now = clock.origin if isinstance(clock, SimulatedClock) else clock.now()
    fix_deadline(request, now)
    plan = make_plan(request, forecaster, now)
    if isinstance(clock, SimulatedClock):
        clock.anchor = time.time()
    request.clock = clock.as_json() if not isinstance(clock, RealClock) else None
    return Prepared(request, plan, clock)
