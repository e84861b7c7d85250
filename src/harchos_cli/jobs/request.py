"""From what the user asked (`harchos run` options and `harchos.toml`) to a planned job.

Precedence, as everywhere in harchos: command-line flag > `harchos.toml` > default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from harchos_cli.carbon.types import Forecast, Point, Region
from harchos_cli.carbon.windows import check_threshold
from harchos_cli.errors import HarchosError, UsageError
from harchos_cli.hubs.base import LOCAL, Hub
from harchos_cli.jobs.clock import Clock, SimulatedClock
from harchos_cli.jobs.spec import HubTable, Project, load_project
from harchos_cli.plan import planner
from harchos_cli.plan.planner import Candidate, Plan
from harchos_cli.timeparse import (
    floor_hour,
    iso,
    parse_deadline,
    parse_duration,
    parse_instant,
    utcnow,
)

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
    hubs: str | None = None  # "a,b": one machine of a multi-node training on each, in rank order
    nodes: int | None = None
    main_address: str | None = None
    objective: str | None = None  # carbon, cost or balanced; None: carbon
    array: str | None = None  # "1-200": one job per index
    max_parallel: int | None = None  # at most this many of the array's jobs in one hour


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
    # Multi-node training: every machine's hub in rank order (the first is `hub`, the main node),
    # and the address the others reach the main node at (None: its SSH host).
    nodes: list[str] | None = None
    main_address: str | None = None
    objective: str = "carbon"
    emissions_budget_kg: float | None = None
    # Multi-node training inside a Slurm cluster (`--hub CLUSTER --nodes N`): Slurm places the
    # machines, `srun` starts one `accelerate launch` on each.
    cluster_nodes: int = 1
    # One job of an array: {"id", "index", "size", "max_parallel"} (None: not in one).
    array: dict[str, Any] | None = None

    @property
    def machines(self) -> int:
        """How many machines the training runs on."""
        return len(self.nodes) if self.nodes else self.cluster_nodes

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
            "emissions_budget_kg": self.emissions_budget_kg,
            "nodes": self.nodes,
            "main_address": self.main_address,
            "cluster_nodes": self.cluster_nodes,
            "array": self.array,
            "objective": self.objective,
            # For display: which values `jobs show` masks (harchos_cli.secrets).
            "secret_env": list(self.project.spec.job.secret_env),
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], project_dir: str, project: Project | None = None
    ) -> Request:
        """The request a job stored; `project`, when given, is its project already loaded."""
        if project is None:
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
            emissions_budget_kg=data.get("emissions_budget_kg"),
            nodes=list(data["nodes"]) if data.get("nodes") else None,
            main_address=data.get("main_address"),
            objective=str(data.get("objective") or "carbon"),
            cluster_nodes=int(data.get("cluster_nodes") or 1),
            array=data.get("array"),
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
    threshold = check_threshold(options.threshold)
    if threshold is None:
        threshold = check_threshold(spec.carbon.threshold, "[carbon] threshold")
    # In harchos.toml, 0 means "no threshold: wait for the greenest window".
    if threshold == 0 and options.threshold is None:
        threshold = None
    defer = options.defer or options.threshold is not None
    nodes = node_hubs(options)
    shift = shift_policy(options, project, multi_node=nodes is not None or (options.nodes or 1) > 1)
    if options.deadline and not defer and shift is None:
        raise UsageError(
            "--deadline needs --defer-until-green, --threshold, --interruptible, "
            "--migrate auto or --scale",
            hint="add --defer-until-green to wait for a green window before the deadline",
        )
    if options.speedup is not None and not (math.isfinite(options.speedup) and options.speedup > 0):
        raise UsageError(f"--speedup {options.speedup:g} must be a positive number")
    return Request(
        kind=options.kind,
        project=project,
        args=list(options.args),
        hub=nodes[0] if nodes else options.hub or default_hub(project),
        defer=defer,
        duration=duration,
        deadline=None,
        threshold=threshold if defer else None,
        provider=options.provider,
        gpus=spec.job.gpus if options.kind == "train" else 0,
        clock=None,
        deadline_text=options.deadline or spec.carbon.deadline or DEFAULT_DEADLINE,
        shift=shift,
        emissions_budget_kg=spec.carbon.emissions_budget_kg,
        nodes=nodes,
        main_address=options.main_address if nodes else None,
        objective=_objective(options.objective),
        cluster_nodes=cluster_nodes(options, project),
    )


MAX_ARRAY = 10_000


def array_indices(spec: str) -> list[int]:
    """`--array A-B` (or `N`, one index) as the list of indices, A <= B."""
    text = spec.strip()
    first, dash, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if dash else low
    except ValueError:
        raise UsageError(
            f"--array {spec!r} is not a range", hint="e.g. --array 1-200, or --array 0-9"
        ) from None
    if low < 0 or high < low:
        raise UsageError(f"--array {spec!r} is not a range from a lower to a higher index",
                         hint="e.g. --array 1-200")  # fmt: skip
    if high - low + 1 > MAX_ARRAY:
        raise UsageError(f"--array {spec!r} makes {high - low + 1} jobs",
                         hint=f"at most {MAX_ARRAY:,} in one array")  # fmt: skip
    return list(range(low, high + 1))


def _objective(value: str | None) -> str:
    from harchos_cli.plan.planner import OBJECTIVES

    if value is None:
        return "carbon"
    if value not in OBJECTIVES:
        raise UsageError(
            f"unknown objective {value!r}", hint=f"choose one of: {', '.join(OBJECTIVES)}"
        )
    return value


def cluster_nodes(options: RunOptions, project: Project) -> int:
    """`--hub CLUSTER --nodes N`: how many machines of the Slurm cluster the training runs on."""
    if options.hubs is not None or options.nodes is None:
        return 1
    if options.hub == AUTO:
        raise UsageError(
            "--nodes with --hub auto",
            hint="name the Slurm cluster (--hub CLUSTER --nodes N), or the machines (--hubs A,B)",
        )
    assert options.hub is not None
    if options.main_address is not None:
        raise UsageError(
            "--main-address with a Slurm cluster",
            hint="Slurm places the machines; harchos finds the first one's address itself",
        )
    if get_hub(options.hub, project).transport != "slurm":
        raise UsageError(
            f"--nodes {options.nodes} on hub {options.hub!r}, which is not a Slurm cluster",
            hint="one machine on each hub: --hubs A,B; or a cluster: harchos hubs add NAME "
            "--slurm LOGIN --partition P",
        )
    return options.nodes


def node_hubs(options: RunOptions) -> list[str] | None:
    """`--hubs a,b [--nodes 2]`: the hubs of a multi-node training in rank order, or None for
    a job on one hub."""
    if options.hubs is None and options.nodes is None:
        if options.main_address is not None:
            raise UsageError("--main-address applies to multi-node training",
                             hint="add --hubs A,B (one machine on each hub)")  # fmt: skip
        return None
    if options.kind != "train":
        raise UsageError("--nodes and --hubs apply to training only",
                         hint="harchos run train --hubs A,B")  # fmt: skip
    if options.hub is not None and options.hubs is None:
        return None  # `--hub CLUSTER --nodes N`: see cluster_nodes
    if options.hub is not None:
        raise UsageError("--hub and --hubs together", hint="--hubs A,B names every machine's hub")
    names = [name.strip() for name in (options.hubs or "").split(",")]
    names = [name for name in names if name]
    if not names:
        raise UsageError(
            "--nodes needs --hubs, or a Slurm cluster as --hub",
            hint="e.g. --nodes 2 --hubs box1,box2, or --hub CLUSTER --nodes 2",
        )
    if len(set(names)) != len(names) or AUTO in names:
        raise UsageError(f"--hubs {options.hubs!r} names a hub twice, or auto",
                         hint="one machine per hub, each named once: --hubs box1,box2")  # fmt: skip
    if options.nodes is not None and options.nodes != len(names):
        raise UsageError(
            f"--nodes {options.nodes} but --hubs names {len(names)} hub(s)",
            hint="one machine runs on each hub given to --hubs",
        )
    if options.main_address is not None and not options.main_address.strip():
        raise UsageError("--main-address is empty", hint="the main hub's IP or host name")
    return names if len(names) > 1 else None


def shift_policy(
    options: RunOptions, project: Project, *, multi_node: bool = False
) -> dict[str, Any] | None:
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
    if multi_node:
        if options.migrate == "auto" or options.scale is not None:
            raise UsageError(
                "a multi-node training is not moved or rescaled (yet)",
                hint="drop --migrate auto / --scale, or run on one hub",
            )
        migrate = False
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
    elif (
        spec.carbon.allow_rescale and spec.job.min_processes and spec.job.max_processes
        and not multi_node
    ):  # fmt: skip
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
    if table.transport == "slurm" and not table.partition:
        raise UsageError(
            f"Slurm hub {name!r} in harchos.toml has no partition",
            hint=f'add partition = "..." under [hubs.{name}] (sinfo lists them)',
        )
    values: dict[str, Any] = {
        "name": name,
        "transport": table.transport,
        "host": table.host,
        "user": table.user,
        "port": table.port,
        "identity": Path(os.path.expanduser(table.identity)) if table.identity else None,
        "region": table.region,
        "gpus": table.gpus,
        "gpu_type": table.gpu_type,
        "price_per_gpu_hour": table.price_per_gpu_hour,
        "pue": table.pue,
        "electricity_price_per_kwh": table.electricity_price_per_kwh,
        "currency": table.currency,
        "cpu_tdp_w": table.cpu_tdp_w,
        "max_jobs": table.max_jobs,
        "partition": table.partition,
        "account": table.account,
        "qos": table.qos,
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
            electricity_price_per_kwh=hub.electricity_price_per_kwh
            if hub.electricity_price_per_kwh is not None
            else table.electricity_price_per_kwh,
            currency=hub.currency or table.currency,
            cpu_tdp_w=hub.cpu_tdp_w or table.cpu_tdp_w,
            max_jobs=hub.max_jobs or table.max_jobs,
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
            self._check_zone(hub, region)
            if region.name not in cache:
                cache[region.name] = self.forecast(region, now, hours)
            candidates.append(Candidate(hub, cache[region.name]))
        return candidates

    def forecast(self, region: Region, now: datetime, hours: int) -> Forecast:
        """The forecast for `region` from `now`, `hours` long."""
        return self.service.forecast(region, now, hours)

    def _check_zone(self, hub: Hub, region: Region) -> None:
        """A replayed trace plans only hubs of its own zone, unless `replay.any_zone`: FR's
        grid replayed for a DE hub would plan on numbers that are not that hub's."""
        zones = self.service.replayed_zones()
        if not zones or region.zone in zones or self.service.config.get("replay.any_zone"):
            return
        raise UsageError(
            f"the replayed trace is for {', '.join(zones)}, but hub {hub.name!r} is in "
            f"{region.name} ({region.zone})",
            hint=f"replay a trace for {region.zone} too (--provider replay:A.csv,B.csv takes one "
            "per zone), or apply it anyway: HARCHOS_REPLAY_ANY_ZONE=1 (replay.any_zone)",
        )


def make_plan(
    request: Request,
    forecaster: Forecaster | None,
    now: datetime,
    job_id: str | None = None,
    *,
    replanning: bool = False,
) -> Plan:
    """Plan the job at `now` (job `job_id`, when it is one already): start at once unless
    deferred; with `--hub auto`, choose the hub; never into an hour its hub's slots are full.
    `replanning`: the job waits already (see `planner.choose`'s `waiting`)."""
    hubs = candidate_hubs(request)
    every = [get_hub(name, request.project) for name in request.nodes or []]
    clusters = [hub.name for hub in every if hub.transport == "slurm"]
    if clusters:
        raise UsageError(
            f"--hubs names the Slurm hub {clusters[0]!r}: harchos does not spread one training "
            "over a cluster and other hubs",
            hint="run it on the cluster alone (--hub), where Slurm places its machines",
        )
    if every:
        main_address(request, every)  # refused now rather than when the job launches
    machines = request.machines
    gpus = request.gpus * machines
    power = expected_power(request, gpus)
    if not request.defer and len(hubs) == 1:
        return planner.start_now(
            hubs[0], now=now, duration=request.duration, gpus=gpus, power=power
        )
    assert forecaster is not None
    deadline = request.deadline or now + request.duration
    if request.nodes:
        # One start for every machine: planned on the mean of their regions' intensities.
        candidates = [combine(forecaster.forecasts(every, now, deadline))]
    else:
        candidates = forecaster.forecasts(hubs, now, deadline)
    queue_notes: list[str] = []
    if len(candidates) > 1:
        candidates = [queue_wait(request, c, now, queue_notes) for c in candidates]
    candidates = booked(candidates, job_id, request.array, now=now)
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
        gpus=gpus,
        objective=cast("planner.Objective", request.objective),
        carbon_price=_carbon_price(request),
        power=power,
        min_saving=_min_saving(request),
        waiting=replanning,
    )
    plan.warnings[:0] = [w for w in forecaster.warnings + queue_notes if w not in plan.warnings]
    from harchos_cli.carbon.service import horizon_warning

    beyond = plan.forecast and horizon_warning(plan.forecast, now, deadline)
    if beyond and beyond not in plan.warnings:
        plan.warnings.append(beyond)
    if not request.defer:
        # --hub auto without deferral: the greenest hub right now.
        plan.deadline = None
    return plan


def expected_power(request: Request, gpus: int) -> planner.Power:
    """The workload's measured average power from its last metered run (scaled to `gpus` when
    that run had another count), else the flat estimate."""
    from harchos_cli import state
    from harchos_cli.meter.samples import SampleStore

    try:
        db = state.connect()
    except HarchosError:
        return planner.Power.flat(gpus)
    try:
        remembered = SampleStore(db).remembered_power(str(request.project.root), request.kind)
    finally:
        db.close()
    if remembered is None:
        return planner.Power.flat(gpus)
    watts, measured_gpus, job_id = remembered
    if measured_gpus and gpus and measured_gpus != gpus:
        watts = planner.HOST_WATTS + (watts - planner.HOST_WATTS) * gpus / measured_gpus
        return planner.Power(watts, f"measured on job {job_id} ({measured_gpus} GPU(s)), "
                                    f"scaled to {gpus}")  # fmt: skip
    return planner.Power(watts, f"measured: {watts:.0f} W average on job {job_id}")


def _min_saving(request: Request) -> float:
    from harchos_cli.config import Config

    value = Config.load({}, project_file=request.project.file).get("plan.min_saving_percent")
    percent = float(value or 0.0)
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise UsageError(
            f"plan.min_saving_percent {percent:g} is not a percentage",
            hint="a number from 0 to 100 (harchos config, or HARCHOS_MIN_SAVING)",
        )
    return percent / 100.0


def _carbon_price(request: Request) -> float | None:
    from harchos_cli.config import Config

    value = Config.load({}, project_file=request.project.file).get("cost.carbon_price_per_tonne")
    return None if value is None else float(value)


def main_address(request: Request, hubs: Sequence[Hub]) -> str:
    """Where the machines of a multi-node job meet: `--main-address`, else the main node's SSH
    host, or 127.0.0.1 when every machine is this one."""
    main = hubs[0]
    if request.main_address is not None:
        return request.main_address
    if main.transport != LOCAL and main.host:
        return main.host
    if all(hub.transport == LOCAL for hub in hubs):
        return "127.0.0.1"
    raise UsageError(
        f"the main node (hub {main.name}) is this machine, and the other machines need its address",
        hint="give it with --main-address IP, or list an SSH hub first in --hubs",
    )


def booked(
    candidates: Sequence[Candidate],
    job_id: str | None,
    array: dict[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> list[Candidate]:
    """`candidates` with what their slots hold: the planned windows of each hub's other waiting
    and running jobs (a hub without `max_jobs` has no limit), and of the job's array's other
    jobs on any hub (`--max-parallel`). A started job holds its slot until it ends: one that
    runs past its planned window still holds `now`'s hour."""
    limited = {c.hub.name: c.hub.max_jobs for c in candidates if c.hub.max_jobs}
    parallel = int((array or {}).get("max_parallel") or 0)
    if not limited and not parallel:
        return list(candidates)
    from harchos_cli.jobs.store import JobStore

    windows: dict[str, list[tuple[datetime, datetime]]] = {name: [] for name in limited}
    siblings: list[tuple[datetime, datetime]] = []
    store = JobStore()
    try:
        bookings = store.bookings()
    finally:
        store.close()
    for booking in bookings:
        if booking.id == job_id:
            continue
        start = parse_instant(booking.planned_start)
        end = parse_instant(booking.planned_end) if booking.planned_end else start
        if booking.started and now is not None and end <= now:
            end = now + timedelta(seconds=1)
        window = (start, end)
        if booking.hub in windows:
            windows[booking.hub].append(window)
        if parallel and booking.array_id == (array or {}).get("id"):
            siblings.append(window)
    return [
        replace(
            c,
            booked=tuple(windows.get(c.hub.name, ())),
            slots=limited.get(c.hub.name),
            array_booked=tuple(siblings),
            array_slots=parallel or None,
        )
        for c in candidates
    ]


def queue_wait(
    request: Request, candidate: Candidate, now: datetime, notes: list[str]
) -> Candidate:
    """`candidate` with the earliest start its hub's queue allows: on a Slurm cluster, what
    `sbatch --test-only` estimates for the job now (wall time, mapped onto the job's clock).
    Without an estimate (the login node unreachable, say) the hub is ranked as if it started at
    once, and `notes` says so."""
    hub = candidate.hub
    if hub.transport != "slurm":
        return candidate
    from harchos_cli.hubs import transport_for
    from harchos_cli.hubs.slurm_cli import estimated_start
    from harchos_cli.jobs.clock import from_json

    clock = from_json(request.clock)
    real_duration = clock.real_seconds(request.duration.total_seconds())
    try:
        start = estimated_start(
            transport_for(hub).run, partition=hub.partition, account=hub.account, qos=hub.qos,
            gpus=request.gpus, nodes=request.cluster_nodes,
            time_limit_minutes=max(1, math.ceil(real_duration / 60)),
        )  # fmt: skip
    except HarchosError as exc:
        notes.append(f"hub {hub.name}: no queue estimate from Slurm ({exc}); ranked as if it "
                     "started at once")  # fmt: skip
        return candidate
    wait = max(0.0, (start - utcnow()).total_seconds())
    # Seconds of the job's clock per real second (1 unless it replays at a speed-up).
    rate = 1.0 / clock.real_seconds(1.0)
    return replace(candidate, earliest=now + timedelta(seconds=wait * rate))


def combine(candidates: Sequence[Candidate]) -> Candidate:
    """The machines of a multi-node job as one candidate on the main node's hub: each hour's
    intensity (and P10/P90 band) is the mean over the machines, hours all of them cover; a
    machine without carbon data leaves the job without (it starts at once)."""
    main = candidates[0]
    forecasts = [c.forecast for c in candidates]
    if any(f is None for f in forecasts) or len(candidates) == 1:
        return Candidate(main.hub, None if len(candidates) > 1 else main.forecast)
    known = [f for f in forecasts if f is not None]
    by_start = [{p.start: p for p in f.points} for f in known]
    starts = sorted(set(by_start[0]).intersection(*by_start[1:]))
    points = []
    for start in starts:
        each = [table[start] for table in by_start]
        points.append(Point(
            start, min(p.end for p in each), sum(p.intensity for p in each) / len(each),
            sum(p.low for p in each) / len(each), sum(p.high for p in each) / len(each),
        ))  # fmt: skip
    first = known[0]
    # Shown as "FR+DE": the plan is for all the machines' regions together.
    names = "+".join(dict.fromkeys(f.region.name for f in known))
    zones = "+".join(dict.fromkeys(f.region.zone for f in known))
    region = replace(
        first.region, name=names, zone=zones,
        display_name=f"mean of {len(known)} machines ({zones})",
    )  # fmt: skip
    source = replace(first.source, method=f"{first.source.method}; mean over the machines")
    warnings = [w for f in known for w in f.warnings]
    combined = replace(
        first, region=region, points=points, history=[], source=source, warnings=warnings,
        comparison=None,
    )  # fmt: skip
    return Candidate(main.hub, combined)


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
