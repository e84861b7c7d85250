"""Value types shared by the carbon core. Plain dataclasses: cheap to import, easy to test."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Signal = Literal["average", "marginal"]
ValueKind = Literal["forecast", "measured", "estimated", "replayed"]


@dataclass(frozen=True)
class Region:
    """A name the user typed, resolved to one grid zone.

    `zone` is an Electricity Maps zone id (`DE`, `US-MIDA-PJM`); the provider-specific ids say how
    the other providers address the same place (None where they don't cover it).
    """

    name: str
    zone: str
    display_name: str
    kind: Literal["alias", "cloud", "zone", "ukgrid", "watttime"]
    providers: tuple[str, ...]
    watttime_region: str | None = None
    ukgrid_region: int | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        """The documented `harchos regions show --json` object."""
        return {
            "name": self.name,
            "zone": self.zone,
            "display_name": self.display_name,
            "kind": self.kind,
            "providers": list(self.providers),
            "watttime_region": self.watttime_region,
            "ukgrid_region": self.ukgrid_region,
            "note": self.note,
        }


@dataclass(frozen=True)
class Observation:
    """A measured (or provider-estimated) intensity value for the period starting at `start`."""

    start: datetime
    end: datetime
    intensity: float
    estimated: bool = False


@dataclass(frozen=True)
class Point:
    """One forecast period: central value and the P10–P90 band, in gCO2eq/kWh."""

    start: datetime
    end: datetime
    intensity: float
    low: float
    high: float


@dataclass(frozen=True)
class Source:
    """Where the numbers came from; shown with every figure."""

    provider: str
    signal: Signal
    method: str
    kind: ValueKind
    fetched_at: datetime
    model: str = ""
    detail: str = ""


@dataclass
class Forecast:
    """The intensity ahead for one region, with the history it was conditioned on."""

    region: Region
    points: list[Point]
    source: Source
    history: list[Observation] = field(default_factory=list)
    history_source: str | None = None
    warnings: list[str] = field(default_factory=list)
    comparison: Comparison | None = None


@dataclass(frozen=True)
class Comparison:
    """How harchos's own model, run on the same live history, differs from a provider's forecast.

    The provider's forecast is the one used (it sees weather and market data harchos does not);
    the comparison tells the user how much the two disagree.
    """

    model: str
    mean_abs_diff: float
    relative_diff: float
    hours: int
