"""The `harchos_*` exporter: what `harchos metrics serve` shows Prometheus, read at scrape time.

`HarchosCollector` is a prometheus-client custom collector. Every scrape reads the job store
(states, decisions, migrations, held GPUs), the meter (each job's power, energy, emissions and
cost), the hub inventory and the carbon providers (each hub's grid intensity, kept for
`INTENSITY_TTL_S` so that a 15 s scrape does not refetch). Names, help texts and labels come from
the catalogue, `harchos_cli.metrics`.

A scrape never fails: a part that raises is left out of that scrape, logged on stderr and counted
in `harchos_exporter_errors_total{part}`. Only jobs that are not finished, or finished less than
`RECENT` ago, are exported, so that the number of series does not grow for ever.

A job's emissions budget is its request's `emissions_budget_kg`, exported for a job that has one.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from harchos_cli import __version__
from harchos_cli.errors import UsageError
from harchos_cli.metrics import by_name
from harchos_cli.timeparse import iso, parse_instant, utcnow

if TYPE_CHECKING:
    from harchos_cli.hubs.base import Hub
    from harchos_cli.jobs.store import Job, JobStore

__all__ = [
    "INTENSITY_TTL_S",
    "PARTS",
    "RECENT",
    "HarchosCollector",
    "JobAccount",
    "exposition",
    "job_accounts",
    "job_power",
    "registry",
    "serve_http",
    "write_textfile",
]

RECENT = timedelta(hours=24)
INTENSITY_TTL_S = 300.0
# The parts of a scrape that fail on their own; each is a value of harchos_exporter_errors_total's
# `part` label, exported from the first scrape on (at 0) so that rate() sees the first error.
PARTS = ("jobs", "decisions", "power", "ledger", "hubs", "intensity")
_JOB_STATES = ("waiting", "syncing", "running", "paused", "lost", "done", "failed", "cancelled")
_FINISHED = ("done", "failed", "cancelled")
_HOLDING_GPUS = ("syncing", "running")
_NO_HUB = "none"


def _stderr(message: str) -> None:
    print(f"{iso(utcnow())} harchos metrics: {message}", file=sys.stderr, flush=True)


def _gauge(name: str) -> GaugeMetricFamily:
    metric = by_name(name)
    return GaugeMetricFamily(name, metric.help, labels=list(metric.labels))


def _counter(name: str) -> CounterMetricFamily:
    metric = by_name(name)
    # CounterMetricFamily adds `_total` to the samples' name itself.
    return CounterMetricFamily(name.removesuffix("_total"), metric.help, labels=list(metric.labels))


@dataclass(frozen=True)
class JobAccount:
    """What the meter's ledger says one job used, emitted and cost so far."""

    job_id: str
    energy_kwh: dict[str, float] = field(default_factory=dict)  # by hub
    emissions_kg: dict[str, float] = field(default_factory=dict)  # by hub
    cost: float | None = None
    currency: str | None = None
    waiting_s: float = 0.0


def _ledger_module() -> Any:
    # Imported by name at scrape time: the meter's ledger is its own module, and a failing
    # import is one failing part of a scrape, not an exporter that cannot start.
    return importlib.import_module("harchos_cli.meter.ledger")


def job_accounts(job_ids: Sequence[str]) -> list[JobAccount]:
    """The ledger of each job in `job_ids`, as the exporter's per-hub sums.

    Energy and emissions per hub are the sums of the ledger's intervals on that hub (an interval
    whose intensity is unknown adds energy but no emissions); cost is the ledger's total.
    """
    if not job_ids:
        return []
    accounts = []
    for ledger in _ledger_module().ledgers(job_ids=tuple(job_ids)):
        energy: dict[str, float] = {}
        emissions: dict[str, float] = {}
        for interval in ledger.intervals:
            energy[interval.hub] = energy.get(interval.hub, 0.0) + interval.energy_kwh
            if interval.emissions_kg is not None:
                emissions[interval.hub] = emissions.get(interval.hub, 0.0) + interval.emissions_kg
        waiting = sum(
            (p.end - p.start).total_seconds() for p in ledger.periods if p.kind == "waiting"
        )
        accounts.append(
            JobAccount(ledger.job_id, energy, emissions, ledger.cost.value, ledger.currency,
                       waiting)
        )  # fmt: skip
    return accounts


def job_power(job_id: str) -> dict[str, float]:
    """Hub → watts of the job's newest meter sample there."""
    power: dict[str, float] = _ledger_module().latest_power(job_id)
    return power


@dataclass
class _Reading:
    """One hub's current grid intensity, as fetched."""

    zone: str
    provider: str
    signal: str
    intensity: float
    fetched_at: datetime


class HarchosCollector:
    """The `harchos_*` metrics, read from harchos's state at each scrape.

    Args:
        provider: the carbon data provider for the hubs' intensity (None: the configured one).
        project_dir: where to look for a harchos.toml whose `[hubs]` tables and `[carbon]` region
            add to the inventory's hubs (None: the working directory).
        notice: where a failing part is reported (default: a line on stderr).
        monotonic: the clock the intensity cache ages by.
    """

    def __init__(
        self,
        provider: str | None = None,
        project_dir: Path | None = None,
        *,
        notice: Callable[[str], None] = _stderr,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.project_dir = project_dir
        self.notice = notice
        self.monotonic = monotonic
        self.errors: Counter[str] = Counter(dict.fromkeys(PARTS, 0))
        self._intensity: dict[str, tuple[float, _Reading | None]] = {}
        self._final: dict[str, JobAccount] = {}
        self._service: Any = None
        # One scrape at a time: the HTTP server answers scrapes in threads, and the intensity
        # cache and forecast service are shared.
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._scrape()
        yield from families

    def _part(self, part: str, read: Callable[[], list[Metric]]) -> list[Metric]:
        try:
            return read()
        except Exception as exc:
            self._failed(part, exc)
            return []

    def _failed(self, part: str, exc: BaseException) -> None:
        self.errors[part] += 1
        self.notice(f"{part} left out of this scrape: {type(exc).__name__}: {exc}")

    def _scrape(self) -> list[Metric]:
        from harchos_cli.jobs.store import JobStore

        build = _gauge("harchos_build_info")
        build.add_metric([__version__], 1.0)
        families: list[Metric] = [build]
        store: JobStore | None = None
        try:
            store = JobStore()
            jobs: list[Job] | None = self._recent_jobs(store)
        except Exception as exc:
            # Without the job list every per-job family is left out, rather than shown empty.
            self._failed("jobs", exc)
            jobs = None
        if store is not None:
            opened = store
            try:
                if jobs is not None:
                    listed = jobs
                    families += self._part("jobs", lambda: self._job_families(listed))
                    families += self._part(
                        "decisions", lambda: self._decision_families(opened, listed)
                    )
                    families += self._part("power", lambda: self._power_families(listed))
                    families += self._part("ledger", lambda: self._ledger_families(listed))
                families += self._part("hubs", lambda: self._hub_families(opened))
            finally:
                opened.close()
        families += self._part("intensity", self._intensity_families)
        errors = _counter("harchos_exporter_errors_total")
        for part, count in sorted(self.errors.items()):
            errors.add_metric([part], float(count))
        families.append(errors)
        return families

    @staticmethod
    def _recent_jobs(store: JobStore) -> list[Job]:
        since = utcnow() - RECENT
        recent = []
        for job in store.list():
            if job.state not in _FINISHED:
                recent.append(job)
            elif job.finished_at is None or parse_instant(job.finished_at) >= since:
                # A finished job without a finish time is kept: its age is unknown.
                recent.append(job)
        return recent

    @staticmethod
    def _job_families(jobs: Sequence[Job]) -> list[Metric]:
        state = _gauge("harchos_job_state")
        budget = _gauge("harchos_job_emissions_budget_kgco2")
        for job in jobs:
            hub = job.hub or _NO_HUB
            for name in _JOB_STATES:
                state.add_metric([job.id, hub, name], 1.0 if job.state == name else 0.0)
            limit = job.request.get("emissions_budget_kg")
            if isinstance(limit, int | float) and not isinstance(limit, bool):
                budget.add_metric([job.id], float(limit))
        return [state, budget]

    @staticmethod
    def _decision_families(store: JobStore, jobs: Sequence[Job]) -> list[Metric]:
        decisions = _counter("harchos_job_decisions_total")
        migrations = _counter("harchos_job_migrations_total")
        for job in jobs:
            taken = store.decisions(job.id)
            for action, count in sorted(Counter(d.action for d in taken).items()):
                decisions.add_metric([job.id, action], float(count))
            moves = Counter(
                (str(d.details.get("source") or _NO_HUB), d.hub or _NO_HUB)
                for d in taken
                if d.action in {"migrate", "auto-migrate"}
            )
            for (source, target), count in sorted(moves.items()):
                migrations.add_metric([job.id, source, target], float(count))
        return [decisions, migrations]

    @staticmethod
    def _power_families(jobs: Sequence[Job]) -> list[Metric]:
        power = _gauge("harchos_job_power_watts")
        for job in jobs:
            if job.state != "running":
                continue
            for hub, watts in sorted(job_power(job.id).items()):
                power.add_metric([job.id, hub], float(watts))
        return [power]

    def _ledger_families(self, jobs: Sequence[Job]) -> list[Metric]:
        energy = _counter("harchos_job_energy_kwh_total")
        emissions = _counter("harchos_job_emissions_kgco2_total")
        cost = _counter("harchos_job_cost_total")
        deferred = _counter("harchos_job_deferred_seconds_total")
        # A finished job's account no longer changes: it is built once, not at every scrape.
        cached = {job.id: self._final[job.id] for job in jobs if job.id in self._final}
        fresh = job_accounts([job.id for job in jobs if job.id not in cached])
        finished = {job.id for job in jobs if job.state in _FINISHED}
        self._final = cached | {a.job_id: a for a in fresh if a.job_id in finished}
        accounts = cached | {a.job_id: a for a in fresh}
        for _, account in sorted(accounts.items()):
            for hub, kwh in sorted(account.energy_kwh.items()):
                energy.add_metric([account.job_id, hub], kwh)
            for hub, kg in sorted(account.emissions_kg.items()):
                emissions.add_metric([account.job_id, hub], kg)
            if account.cost is not None:
                cost.add_metric([account.job_id, account.currency or "unknown"], account.cost)
            deferred.add_metric([account.job_id], account.waiting_s)
        return [energy, emissions, cost, deferred]

    def _hubs(self) -> list[Hub]:
        """Every hub: the inventory's (`local` first), then the project's own tables, with the
        regions the project fills in (as `harchos run` sees them)."""
        from harchos_cli.hubs import inventory
        from harchos_cli.jobs.request import get_hub
        from harchos_cli.jobs.spec import load_project

        project = load_project(self.project_dir, required=False)
        names = [hub.name for hub in inventory.list_hubs()]
        names += [name for name in project.spec.hubs if name not in names]
        return [get_hub(name, project) for name in names]

    def _hub_families(self, store: JobStore) -> list[Metric]:
        from harchos_cli.jobs.store import held_gpus

        busy: Counter[str] = Counter()
        for job in store.list(states=_HOLDING_GPUS):
            for name, ids in held_gpus(job.hub, job.gpu_ids).items():
                busy[name] += len(ids)
        gpus = _gauge("harchos_hub_gpus")
        for hub in self._hubs():
            if hub.gpus is None:
                continue
            used = min(busy[hub.name], hub.gpus)
            gpus.add_metric([hub.name, "busy"], float(used))
            gpus.add_metric([hub.name, "free"], float(hub.gpus - used))
        return [gpus]

    def _intensity_families(self) -> list[Metric]:
        intensity = _gauge("harchos_carbon_intensity_gco2_per_kwh")
        age = _gauge("harchos_carbon_data_age_seconds")
        now = utcnow()
        for hub in self._hubs():
            if not hub.region:
                continue
            reading = self._reading(hub.region)
            if reading is None:
                continue
            intensity.add_metric(
                [hub.name, reading.zone, reading.provider, reading.signal], reading.intensity
            )
            seconds = max((now - reading.fetched_at).total_seconds(), 0.0)
            age.add_metric([hub.name, reading.provider], seconds)
        return [intensity, age]

    def _reading(self, region: str) -> _Reading | None:
        """The region's intensity now, fetched at most once per `INTENSITY_TTL_S`; None (and
        one error counted per fetch) when it cannot be had."""
        cached = self._intensity.get(region)
        if cached is not None and self.monotonic() - cached[0] < INTENSITY_TTL_S:
            return cached[1]
        try:
            reading = self._fetch(region)
        except Exception as exc:
            self._failed("intensity", exc)
            reading = None
        self._intensity[region] = (self.monotonic(), reading)
        return reading

    def _fetch(self, region: str) -> _Reading | None:
        from harchos_cli.carbon import regions
        from harchos_cli.carbon.service import ForecastService
        from harchos_cli.jobs.spec import find

        if self._service is None:
            self._service = ForecastService.from_settings(
                self.provider, project_file=find(self.project_dir)
            )
        service = self._service
        resolved = regions.resolve(region)
        forecast = service.forecast(resolved, service.default_now(utcnow()), 1)
        if not forecast.points:
            return None
        source = forecast.source
        return _Reading(
            resolved.zone, source.provider, source.signal, float(forecast.points[0].intensity),
            source.fetched_at,
        )  # fmt: skip


def registry(collector: HarchosCollector | None = None) -> CollectorRegistry:
    """A registry holding only the harchos collector (no process or platform metrics: every
    family exported is one of the catalogue's)."""
    holder = CollectorRegistry()
    holder.register(collector or HarchosCollector())
    return holder


def exposition(source: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `source`."""
    return generate_latest(source)


def serve_http(host: str, port: int, source: CollectorRegistry) -> None:
    """Serve `source` at http://HOST:PORT/metrics from a background thread.

    Raises:
        UsageError: the port is in use, or the address is not one of this machine's.
    """
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=source)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is in use",
                hint="stop what listens there, or choose another port with --port",
            ) from None
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="give an address of this machine with --host (127.0.0.1, 0.0.0.0)",
        ) from None


def write_textfile(path: Path, source: CollectorRegistry) -> None:
    """Write the exposition to `path` atomically (a temporary file in the same folder, renamed),
    so that node_exporter's textfile collector never reads half a file.

    Raises:
        UsageError: the folder does not exist or cannot be written.
    """
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(
            f"the folder {str(folder)!r} for --textfile does not exist",
            hint="give a file in node_exporter's --collector.textfile.directory",
        )
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        temporary.write_bytes(exposition(source))
        temporary.chmod(0o644)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UsageError(
            f"cannot write {str(path)!r}: {exc.strerror or exc}",
            hint="give a file in a folder you can write",
        ) from None
