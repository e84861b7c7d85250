"""Each job's account: energy from its meter samples, emissions at the intensity of the hours it
ran, cost from its hubs' prices, and the same against running at once where it was submitted.

    energy     Σ over consecutive samples of one attempt: Δ(GPU J + CPU J), in kWh at the plug
    emissions  Σ interval energy × intensity of the interval's hour on its hub × hub PUE / 1000
    cost       Σ interval time × GPUs × price per GPU-hour
               + Σ interval energy × PUE × electricity price per kWh (hubs that set one)
    counterfactual  the same sequence of interval energies and lengths, end to end from the
               submission on the submission hub (`--hub`, or the hub the plan chose for auto)
    saving     counterfactual − actual

Energy and money are physical: they use the hubs' wall clock. Intensity is looked up at the job's
own clock, which a replayed (`--at`/`--speedup`) job runs faster than the wall. An hour's intensity
is what was measured for it where harchos has that (the history store's actuals for hours already
over, or the provider's history), else the forecast of it; a replayed trace's hours are its own.
A job that ran without a meter (`meter.interval` 0, or a hub script from before the meter) is
estimated at the planner's flat draw (300 W per GPU + 100 W for the host) and labelled so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from harchos_cli.errors import HarchosError, UsageError
from harchos_cli.hubs.base import LOCAL, Hub
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.meter.model import (
    Counterfactual,
    Figure,
    FigureSource,
    IntensityPoint,
    Interval,
    Ledger,
    Period,
)
from harchos_cli.meter.samples import Sample, SampleStore
from harchos_cli.timeparse import floor_hour, parse_instant, utcnow

__all__ = ["IntensityLookup", "build", "latest_power", "ledgers", "remember_power"]

HOUR = timedelta(hours=1)
J_PER_KWH = 3.6e6
MEASURED_GPU = frozenset({"nvml-energy", "nvml-power", "nvidia-smi"})


class IntensityLookup:
    """Hourly intensity of regions from one provider spec, cached per (region, hour): a replayed
    trace's values, else the actuals (measured or provider-estimated) where there are any, else
    the forecast."""

    def __init__(
        self, provider: str | None, project_file: Any = None, *, service: Any = None
    ) -> None:
        """`service`: the `ForecastService` to ask (default: made from the settings on first use,
        for `provider` and the project's harchos.toml)."""
        self.provider = provider
        self.project_file = project_file
        self._service: Any = service
        self._cache: dict[tuple[str, datetime], IntensityPoint | None] = {}

    def _get_service(self) -> Any:
        from harchos_cli.carbon.service import ForecastService

        if self._service is None:
            self._service = ForecastService.from_settings(
                self.provider, project_file=self.project_file
            )
        return self._service

    def region_of(self, hub: Hub) -> str | None:
        """The hub's region; with a replayed trace and none set, the trace's zone."""
        if hub.region:
            return hub.region
        try:
            replay = self._get_service().replay
        except HarchosError:
            return None
        return str(replay.trace.zone) if replay is not None and replay.trace.zone else None

    def series(self, region: str, start: datetime, end: datetime) -> list[IntensityPoint]:
        """One point per hour from `start`'s hour to `end`'s (None where no data)."""
        first = floor_hour(start)
        hours = max(1, math.ceil((end - first) / HOUR))
        wanted = [first + i * HOUR for i in range(hours + 1)]
        if any((region, hour) not in self._cache for hour in wanted):
            self._fill(region, first, len(wanted))
        points = (self._cache.get((region, hour)) for hour in wanted)
        return [p for p in points if p is not None]

    def at(self, region: str, moment: datetime) -> IntensityPoint | None:
        hour = floor_hour(moment)
        if (region, hour) not in self._cache:
            self._fill(region, hour, 1)
        return self._cache.get((region, hour))

    def _fill(self, region_name: str, first: datetime, hours: int) -> None:
        from harchos_cli.carbon import regions

        wanted = {first + i * HOUR for i in range(hours)}
        for hour in wanted:
            self._cache.setdefault((region_name, hour), None)
        try:
            region = regions.resolve(region_name)
            service = self._get_service()
            forecast = service.forecast(region, first, hours)
        except HarchosError:
            return
        provider = forecast.source.provider
        source: FigureSource = "replayed" if provider == "replay" else "forecast"
        for point in forecast.points:
            if floor_hour(point.start) in wanted:
                self._cache[(region_name, floor_hour(point.start))] = IntensityPoint(
                    floor_hour(point.start), float(point.intensity), source
                )
        if provider == "replay":
            return
        # What a live provider measured for those hours beats any forecast of them: the actuals
        # the history store kept for the hours already over, and this call's own history.
        over = min(first + hours * HOUR, floor_hour(utcnow()))
        stored = service.stored_actuals(forecast, first, over) if first < over else []
        for observation in [*stored, *forecast.history]:
            hour = floor_hour(observation.start)
            if hour in wanted:
                kind: FigureSource = "estimated" if observation.estimated else "measured"
                self._cache[(region_name, hour)] = IntensityPoint(
                    hour, float(observation.intensity), kind
                )


@dataclass(frozen=True)
class _Pricing:
    currency: str
    per_gpu_hour: float | None
    per_kwh: float | None
    pue: float


def _clock_time(clock: dict[str, Any] | None) -> Any:
    """Wall seconds since the epoch → the job's own (possibly simulated) time."""
    if not clock:
        return lambda t: datetime.fromtimestamp(t, UTC)
    origin = parse_instant(str(clock["origin"]))
    speedup, anchor = float(clock["speedup"]), float(clock["anchor"])
    return lambda t: origin + timedelta(seconds=(t - anchor) * speedup)


def _hubs_of(job: Job) -> dict[str, Hub]:
    """The hubs the job knew, as they were when it launched (the inventory may have changed)."""
    from harchos_cli.hubs import inventory

    found: dict[str, Hub] = {}
    launch = job.request.get("launch") or {}
    for saved in [launch, *(launch.get("nodes") or [])]:
        if saved.get("hub"):
            hub = inventory.from_json(saved["hub"])
            found[hub.name] = hub
    for record in job.request.get("hubs_used") or []:
        hub = inventory.from_json(record)
        found.setdefault(hub.name, hub)
    return found


def _hub(name: str, known: dict[str, Hub]) -> Hub:
    from harchos_cli.hubs import inventory

    if name not in known:  # looked up once per ledger, not once per interval
        try:
            known[name] = inventory.get(name)
        except UsageError:
            known[name] = Hub(name=name, transport="local" if name == LOCAL else "ssh")
    return known[name]


def _energy_source(samples: Sequence[Sample]) -> tuple[FigureSource, str]:
    gpu = {s.gpu_source for s in samples if s.gpu_source}
    cpu = {s.cpu_source for s in samples}
    parts = []
    if gpu:
        parts.append("GPU measured (" + ", ".join(sorted(gpu)) + ")")
    parts.append(
        "CPU measured (RAPL, attributed by CPU time)"
        if cpu == {"rapl"}
        else "CPU estimated (TDP × the job's CPU time)"
        if "rapl" not in cpu
        else "CPU partly RAPL, partly TDP estimate"
    )
    if cpu == {"rapl"}:
        return "measured", "; ".join(parts)
    return ("mixed" if gpu else "estimated"), "; ".join(parts)


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class _Builder:
    def __init__(self, job: Job, store: JobStore, lookup: IntensityLookup, currency: str) -> None:
        self.job = job
        self.store = store
        self.lookup = lookup
        self.default_currency = currency
        self.to_clock = _clock_time(job.request.get("clock"))
        self.known = _hubs_of(job)
        self.warnings: list[str] = []
        self.gpus = int(job.request.get("gpus") or 0)
        # A multi-node job inside a Slurm cluster has no meter (Slurm places its machines).
        self.machines = int(job.request.get("cluster_nodes") or 1)
        # The intervals' intensity sources, each with the energy priced at it (kWh).
        self.intensity_sources: dict[FigureSource, float] = {}

    def pricing(self, hub: Hub) -> _Pricing:
        return _Pricing(
            hub.currency or self.default_currency,
            hub.price_per_gpu_hour,
            hub.electricity_price_per_kwh,
            hub.pue,
        )

    def measured(self, samples: list[Sample]) -> list[tuple[Interval, float, int, Hub]]:
        """(interval, wall seconds, GPUs, hub) between consecutive samples of each attempt."""
        by_attempt: dict[str, list[Sample]] = {}
        for sample in samples:
            by_attempt.setdefault(sample.hub_job_id, []).append(sample)
        rows = []
        for attempt in by_attempt.values():
            attempt.sort(key=lambda s: s.at)
            hub = _hub(attempt[0].hub, self.known)
            region = self.lookup.region_of(hub)
            source, _ = _energy_source(attempt)
            for before, after in itertools.pairwise(attempt):
                if after.at <= before.at:
                    continue
                joules = max(0.0, after.energy_j - before.energy_j)
                interval = self._interval(hub, region, before.at, after.at,
                                          kwh=joules / J_PER_KWH, source=source)  # fmt: skip
                rows.append((interval, after.at - before.at, len(after.gpu_names), hub))
        rows.sort(key=lambda row: row[0].start)
        return rows

    def _interval(
        self, hub: Hub, region: str | None, t0: float, t1: float, *, kwh: float,
        source: FigureSource,
    ) -> Interval:  # fmt: skip
        start, end = self.to_clock(t0), self.to_clock(t1)
        return self._placed(hub, region, start, end, kwh=kwh, source=source,
                            seen=self.intensity_sources)  # fmt: skip

    def _placed(
        self, hub: Hub, region: str | None, start: datetime, end: datetime, *, kwh: float,
        source: FigureSource, seen: dict[FigureSource, float],
    ) -> Interval:  # fmt: skip
        """Energy on `hub` from `start` to `end`, at the intensity of the hour of its middle;
        the energy is added to its intensity's source in `seen`."""
        point = self.lookup.at(region, start + (end - start) / 2) if region else None
        if point is None:
            return Interval(hub.name, start, end, kwh, None, None, source)
        seen[point.source] = seen.get(point.source, 0.0) + kwh
        emissions = kwh * point.value * hub.pue / 1000.0
        return Interval(hub.name, start, end, kwh, point.value, emissions, source)

    def estimated(self) -> list[tuple[Interval, float, int, Hub]]:
        """One interval over the job's running time at the flat draw (no meter samples)."""
        from harchos_cli.plan.planner import GPU_WATTS, HOST_WATTS

        job = self.job
        if not job.started_at:
            return []
        t0 = parse_instant(job.started_at).timestamp()
        t1 = (parse_instant(job.finished_at) if job.finished_at else utcnow()).timestamp()
        if t1 <= t0:
            return []
        hub = _hub(job.hub or LOCAL, self.known)
        watts = (self.gpus * GPU_WATTS + HOST_WATTS) * self.machines
        kwh = watts * (t1 - t0) / J_PER_KWH
        hosts = "for the host" if self.machines == 1 else f"for each of {self.machines} machines"
        self.warnings.append(
            f"no meter samples: energy estimated at {GPU_WATTS:g} W per GPU + {HOST_WATTS:g} W "
            f"{hosts} over the job's running time"
        )
        interval = self._interval(hub, self.lookup.region_of(hub), t0, t1, kwh=kwh,
                                  source="estimated")  # fmt: skip
        return [(interval, t1 - t0, self.gpus * self.machines, hub)]

    def build(self) -> Ledger:
        job = self.job
        samples = SampleStore(self.store.db).samples(job.id)
        self.warnings.extend(SampleStore(self.store.db).errors(job.id))
        shared = sorted({s.hub for s in samples if s.shared_gpu})
        for name in shared:
            self.warnings.append(
                f"the GPUs on hub {name} ran other processes too: their energy is in the "
                "measured figure"
            )
        rows = self.measured(samples) if samples else self.estimated()
        intervals = [row[0] for row in rows]
        energy = sum(i.energy_kwh for i in intervals)
        if samples:
            source, detail = _energy_source(samples)
        else:
            source, detail = "estimated", "no meter: flat 300 W/GPU + 100 W host"
        emissions = self._emissions_figure(intervals, source)
        cost, currency = self._cost(rows)
        clock = job.request.get("clock")
        # A simulated clock starts at the submission (`--at`); the wall-clock creation time, to
        # the second, would be off by up to `speedup` seconds there.
        submitted = parse_instant(str(clock["origin"])) if clock else parse_instant(job.created_at)
        counterfactual = self._counterfactual(rows, submitted, currency)
        wall = sum(row[1] for row in rows)
        power = (
            Figure(energy * J_PER_KWH / wall, source, detail)
            if wall > 0
            else Figure(None, "unknown")
        )
        return Ledger(
            job_id=job.id,
            name=job.name,
            kind=job.kind,
            state=job.state,
            hubs=tuple(dict.fromkeys(i.hub for i in intervals)) or ((job.hub or LOCAL),),
            submitted_at=submitted,
            started_at=intervals[0].start if intervals else None,
            finished_at=intervals[-1].end if intervals and not job.active else None,
            currency=currency,
            energy_kwh=Figure(energy, source, detail),
            emissions_kg=emissions,
            cost=cost,
            counterfactual=counterfactual,
            saving_emissions_kg=_difference(counterfactual.emissions_kg, emissions),
            saving_cost=_difference(counterfactual.cost, cost),
            average_power_w=power,
            periods=tuple(self._periods(intervals, submitted)),
            intervals=tuple(intervals),
            intensity=self._intensity(intervals, counterfactual, submitted),
            decisions=tuple(d.as_json() for d in self.store.decisions(job.id)),
            warnings=tuple(self.warnings),
        )

    def _emissions_figure(self, intervals: Sequence[Interval], energy: FigureSource) -> Figure:
        total = _sum(i.emissions_kg for i in intervals)
        if total is None:
            return Figure(None, "unknown", "no intensity for the hours it ran (no region?)")
        missing = sum(1 for i in intervals if i.emissions_kg is None)
        if missing:
            self.warnings.append(f"{missing} interval(s) had no intensity data: left out")
        detail = "energy × intensity of each hour it ran × hub PUE"
        source = _emission_source(energy, self.intensity_sources)
        return Figure(total, source, detail + _shares(self.intensity_sources))

    def _region(self, hub_name: str) -> str | None:
        return self.lookup.region_of(_hub(hub_name, self.known))

    def _cost(self, rows: Sequence[tuple[Interval, float, int, Hub]]) -> tuple[Figure, str | None]:
        totals: dict[str, float] = {}
        priced = unpriced = 0
        for interval, seconds, gpus, hub in rows:
            pricing = self.pricing(hub)
            money = self._money(pricing, interval.energy_kwh, seconds, gpus)
            if money is not None:
                totals[pricing.currency] = totals.get(pricing.currency, 0.0) + money
                priced += 1
            else:
                unpriced += 1
        if not totals:
            currency = self.default_currency if rows else None
            return Figure(None, "unpriced", "no price set on the hubs it ran on"), currency
        if len(totals) > 1:
            self.warnings.append("its hubs price in different currencies: no total cost")
            return Figure(None, "unpriced", ", ".join(sorted(totals))), None
        ((currency, total),) = totals.items()
        detail = "GPU-hours × price per GPU-hour + energy × PUE × electricity price"
        if unpriced:
            detail += f" ({unpriced} of {priced + unpriced} intervals on unpriced hubs)"
        return Figure(total, "configured", detail), currency

    def _money(self, pricing: _Pricing, kwh: float, seconds: float, gpus: int) -> float | None:
        """GPU-hours × price + energy × PUE × electricity price; None: the hub sets neither."""
        if pricing.per_gpu_hour is None and pricing.per_kwh is None:
            return None
        money = 0.0
        if pricing.per_gpu_hour is not None:
            money += pricing.per_gpu_hour * max(gpus, self.gpus, 1) * seconds / 3600.0
        if pricing.per_kwh is not None:
            money += kwh * pricing.pue * pricing.per_kwh
        return money

    def _submission_hub(self) -> Hub:
        requested = self.job.request.get("hub")
        name = requested if requested and requested != "auto" else None
        name = name or (self.job.plan or {}).get("hub") or self.job.hub or LOCAL
        return _hub(str(name), self.known)

    def _counterfactual(
        self, rows: Sequence[tuple[Interval, float, int, Hub]], submitted: datetime,
        currency: str | None,
    ) -> Counterfactual:  # fmt: skip
        hub = self._submission_hub()
        region = self.lookup.region_of(hub)
        t = submitted.timestamp()
        speed = _speedup(self.job.request.get("clock"))
        shifted = []
        money = 0.0
        pricing = self.pricing(hub)
        seen: dict[FigureSource, float] = {}
        for interval, seconds, gpus, _ in rows:
            start = datetime.fromtimestamp(t, UTC)
            end = start + timedelta(seconds=seconds * speed)
            shifted.append(self._placed(hub, region, start, end, kwh=interval.energy_kwh,
                                        source=interval.source, seen=seen))  # fmt: skip
            money += self._money(pricing, interval.energy_kwh, seconds, gpus) or 0.0
            t += seconds * speed
        energy = sum(i.energy_kwh for i in shifted)
        total = _sum(i.emissions_kg for i in shifted)
        emission_source: FigureSource = (
            "unknown" if total is None else _emission_source("estimated", seen)
        )
        priced = pricing.per_gpu_hour is not None or pricing.per_kwh is not None
        same_currency = currency is None or pricing.currency == currency
        cost = (
            Figure(money, "configured", f"at hub {hub.name}'s prices")
            if priced and same_currency and rows
            else Figure(None, "unpriced", f"no price set on hub {hub.name}")
        )
        where = f"hub {hub.name}" + (f" ({region})" if region else ", no region")
        return Counterfactual(
            hub.name,
            region,
            submitted,
            Figure(energy, "estimated", "the job's own energy profile"),
            Figure(total, emission_source, f"run at once on {where}" + _shares(seen)),
            cost,
            tuple(shifted),
        )

    def _periods(self, intervals: Sequence[Interval], submitted: datetime) -> list[Period]:
        if not intervals:
            return []
        periods: list[Period] = []
        runs: list[tuple[str, datetime, datetime]] = []
        for interval in intervals:
            if (
                runs
                and runs[-1][0] == interval.hub
                and interval.start - runs[-1][2]
                <= max(timedelta(minutes=1), (interval.end - interval.start) * 2)
            ):
                runs[-1] = (runs[-1][0], runs[-1][1], interval.end)
            else:
                runs.append((interval.hub, interval.start, interval.end))
        first_region = self._region(runs[0][0])
        if runs[0][1] > submitted:
            periods.append(Period("waiting", runs[0][0], first_region, submitted, runs[0][1]))
        for index, (hub, start, end) in enumerate(runs):
            if index:
                before = runs[index - 1]
                periods.append(Period("paused", before[0], self._region(before[0]), before[2],
                                      start))  # fmt: skip
            periods.append(Period("running", hub, self._region(hub), start, end))
        return periods

    def _intensity(
        self, intervals: Sequence[Interval], counterfactual: Counterfactual, submitted: datetime
    ) -> dict[str, tuple[IntensityPoint, ...]]:
        if not intervals:
            return {}
        end = max(intervals[-1].end, counterfactual.intervals[-1].end)
        names = list(dict.fromkeys([*(i.hub for i in intervals), counterfactual.hub or LOCAL]))
        series: dict[str, tuple[IntensityPoint, ...]] = {}
        for name in names:
            region = self._region(name)
            if region:
                series[name] = tuple(self.lookup.series(region, submitted, end))
        return series


def _one_source(sources: Collection[FigureSource]) -> FigureSource:
    """The source of a sum: the one its parts share, else `mixed`."""
    return next(iter(sources)) if len(sources) == 1 else "mixed"


def _emission_source(energy: FigureSource, intensities: Collection[FigureSource]) -> FigureSource:
    """The source of energy × intensity: never more certain than its energy (a measured intensity
    times an estimated energy is an estimate); a forecast or replayed intensity labels it so."""
    intensity = _one_source(intensities)
    if energy in ("measured", intensity) or intensity not in ("measured", "estimated"):
        return intensity
    if intensity == "measured" or energy == "estimated":
        return energy
    return "mixed"


def _shares(energy: dict[FigureSource, float]) -> str:
    """For emissions priced at intensities of several sources, which ones and for how much of the
    energy (`; intensity measured for 75% of the energy, forecast for 25%`); '' for one source."""
    if len(energy) < 2:
        return ""
    total = sum(energy.values())
    ranked = sorted(energy.items(), key=lambda kv: (-kv[1], kv[0]))
    if total <= 0:
        return "; intensity " + ", ".join(name for name, _ in ranked)
    parts = [f"{name} for {100 * kwh / total:.0f}%" for name, kwh in ranked]
    parts[0] += " of the energy"
    return "; intensity " + ", ".join(parts)


def _speedup(clock: dict[str, Any] | None) -> float:
    return float(clock["speedup"]) if clock else 1.0


def _difference(base: Figure, actual: Figure) -> Figure:
    if base.value is None or actual.value is None:
        return Figure(None, "unknown", "needs both the counterfactual and the actual figure")
    source: FigureSource = base.source if base.source == actual.source else "mixed"
    return Figure(base.value - actual.value, source, "counterfactual − actual")


def build(job: Job, store: JobStore, lookup: IntensityLookup | None = None) -> Ledger:
    """The ledger of one job (see the module docstring for the formulae)."""
    from harchos_cli.config import Config

    config = Config.load({})
    if lookup is None:
        lookup = IntensityLookup(job.request.get("provider"), _project_file(job))
    currency = str(config.get("cost.currency") or "USD")
    return _Builder(job, store, lookup, currency).build()


def _project_file(job: Job) -> Any:
    from pathlib import Path

    path = job.request.get("project_file")
    return Path(path) if path and Path(path).is_file() else None


def ledgers(job_ids: Sequence[str] = (), *, since: datetime | None = None) -> list[Ledger]:
    """The ledgers of `job_ids` (every job when empty, created since `since`), oldest first.

    Raises:
        UsageError: an id names no job.
    """
    store = JobStore()
    try:
        if job_ids:
            jobs = [store.get(job_id) for job_id in job_ids]
        else:
            jobs = [j for j in store.list() if j.kind in ("train", "batch")]
        if since is not None:
            jobs = [j for j in jobs if parse_instant(j.created_at) >= since]
        jobs.sort(key=lambda j: j.created_at)
        lookups: dict[tuple[Any, Any], IntensityLookup] = {}
        result = []
        for job in jobs:
            key = (job.request.get("provider"), _project_file(job))
            lookup = lookups.setdefault(key, IntensityLookup(*key))
            result.append(build(job, store, lookup))
        return result
    finally:
        store.close()


def latest_power(job_id: str) -> dict[str, float]:
    """Hub name: watts the job drew over its newest meter sample there."""
    store = JobStore()
    try:
        return SampleStore(store.db).latest_power(job_id)
    finally:
        store.close()


def remember_power(store: JobStore, job: Job) -> float | None:
    """Remember the job's measured average power for its project's next plan; the watts, or
    None when the job had no measured samples."""
    samples = SampleStore(store.db).samples(job.id)
    by_attempt: dict[str, list[Sample]] = {}
    for sample in samples:
        by_attempt.setdefault(sample.hub_job_id, []).append(sample)
    joules = seconds = 0.0
    gpus = 0
    for attempt in by_attempt.values():
        attempt.sort(key=lambda s: s.at)
        if len(attempt) < 2:
            continue
        joules += max(0.0, attempt[-1].energy_j - attempt[0].energy_j)
        seconds += attempt[-1].at - attempt[0].at
        gpus = max(gpus, len(attempt[-1].gpu_names))
    if seconds <= 0:
        return None
    watts = joules / seconds
    from harchos_cli.timeparse import iso

    SampleStore(store.db).remember_power(
        job.project_dir, job.kind, watts=watts, gpus=gpus or int(job.request.get("gpus") or 0),
        job_id=job.id, at=iso(utcnow()),
    )  # fmt: skip
    return watts
