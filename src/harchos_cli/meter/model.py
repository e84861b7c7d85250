"""The ledger's data: what one job used, emitted and cost, and what running at once would have.

Every figure carries its source: `measured` (a meter read it; for an intensity, the grid's value a
live provider measured), `estimated` (a stated assumption, e.g. a TDP or the flat per-GPU draw; for
an intensity, one the provider marked estimated), `forecast` (a provider's or the embedded model's
forecast intensity), `replayed` (a recorded trace), `configured` (a price from the hub or
config), or `mixed` (a sum of figures from more than one source; `detail` says which). A figure
whose inputs are missing (no price configured) has value None and source `unpriced` or `unknown`.

The JSON shape (`Ledger.as_json`) is the documented `harchos report --json` schema (docs/report.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from harchos_cli.timeparse import iso

FigureSource = Literal[
    "measured", "estimated", "forecast", "replayed", "configured", "mixed", "unpriced", "unknown"
]
PeriodKind = Literal["waiting", "running", "paused"]


def _significant(value: float | None) -> float | None:
    """Six significant digits: a small job's few millijoules keep their precision."""
    return None if value is None else float(f"{value:.6g}")


@dataclass(frozen=True)
class Figure:
    """One number, where it came from, and how it was made (one line a person can read)."""

    value: float | None
    source: FigureSource
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"value": _significant(self.value), "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class Period:
    """A stretch of the job's life on one hub: waiting to start, running, or paused."""

    kind: PeriodKind
    hub: str | None
    region: str | None
    start: datetime
    end: datetime

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hub": self.hub, "region": self.region,
                "start": iso(self.start), "end": iso(self.end)}  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """Energy used on one hub between two meter samples, and what it emitted there and then."""

    hub: str
    start: datetime
    end: datetime
    energy_kwh: float
    intensity: float | None  # gCO2eq/kWh of the hour it fell in (None: no data)
    emissions_kg: float | None  # energy × intensity × PUE / 1000
    source: FigureSource  # of the energy: measured or estimated

    def as_json(self) -> dict[str, Any]:
        return {
            "hub": self.hub, "start": iso(self.start), "end": iso(self.end),
            "energy_kwh": _significant(self.energy_kwh), "intensity": self.intensity,
            "emissions_kg": _significant(self.emissions_kg),
            "source": self.source,
        }  # fmt: skip


@dataclass(frozen=True)
class IntensityPoint:
    """A region's grid intensity at the start of an hour (gCO2eq/kWh), and its source."""

    at: datetime
    value: float
    source: FigureSource

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "value": self.value, "source": self.source}


@dataclass(frozen=True)
class Counterfactual:
    """The same energy profile run at once, at submission, on the submission hub."""

    hub: str | None
    region: str | None
    start: datetime
    energy_kwh: Figure
    emissions_kg: Figure
    cost: Figure
    intervals: tuple[Interval, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "hub": self.hub, "region": self.region, "start": iso(self.start),
            "energy_kwh": self.energy_kwh.as_json(),
            "emissions_kg": self.emissions_kg.as_json(), "cost": self.cost.as_json(),
        }  # fmt: skip


@dataclass(frozen=True)
class Ledger:
    """One job's account, across all its attempts and hubs."""

    job_id: str
    name: str
    kind: str
    state: str
    hubs: tuple[str, ...]
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    currency: str | None
    energy_kwh: Figure
    emissions_kg: Figure
    cost: Figure
    counterfactual: Counterfactual
    saving_emissions_kg: Figure
    saving_cost: Figure
    average_power_w: Figure
    periods: tuple[Period, ...] = ()
    intervals: tuple[Interval, ...] = ()
    intensity: dict[str, tuple[IntensityPoint, ...]] = field(default_factory=dict)
    decisions: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def saving_percent(self) -> float | None:
        base, saved = self.counterfactual.emissions_kg.value, self.saving_emissions_kg.value
        if base is None or saved is None or base <= 0:
            return None
        return 100.0 * saved / base

    def as_json(self) -> dict[str, Any]:
        percent = self.saving_percent
        return {
            "job_id": self.job_id,
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "hubs": list(self.hubs),
            "submitted_at": iso(self.submitted_at),
            "started_at": iso(self.started_at) if self.started_at else None,
            "finished_at": iso(self.finished_at) if self.finished_at else None,
            "currency": self.currency,
            "energy_kwh": self.energy_kwh.as_json(),
            "emissions_kg": self.emissions_kg.as_json(),
            "cost": self.cost.as_json(),
            "counterfactual": self.counterfactual.as_json(),
            "saving": {
                "emissions_kg": self.saving_emissions_kg.as_json(),
                "cost": self.saving_cost.as_json(),
                "percent": None if percent is None else round(percent, 2),
            },
            "average_power_w": self.average_power_w.as_json(),
            "periods": [p.as_json() for p in self.periods],
            "intervals": [i.as_json() for i in self.intervals],
            "counterfactual_intervals": [i.as_json() for i in self.counterfactual.intervals],
            "intensity": {
                hub: [p.as_json() for p in points] for hub, points in self.intensity.items()
            },
            "decisions": list(self.decisions),
            "warnings": list(self.warnings),
        }
