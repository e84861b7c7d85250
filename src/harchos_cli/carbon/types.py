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


@dataclass(frozen=True)
class HistoryInfo:
    """Where a forecast's recent history came from (see `harchos_cli.carbon.history`).

    The hours of `Forecast.history` split into those this run fetched, those this run backfilled
    and those the history store held from earlier runs. `backfill` is what the backfill did:
    `fetched`, `not needed` (the store had the hours), `not offered` (the provider or the plan has
    no past ranges), `failed` (now, or recently: asked again later), or None (the provider offers
    none). `used_by_model` says whether the embedded model conditioned on this history.
    """

    fetched_hours: int = 0
    stored_hours: int = 0
    backfilled_hours: int = 0
    backfill: str | None = None
    sources: tuple[str, ...] = ()
    signal: str = "average"
    method: str = "lifecycle"
    used_by_model: bool = False


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
    history_info: HistoryInfo | None = None

    def history_json(self) -> dict[str, Any] | None:
        """The documented `history` object of `harchos forecast --json` (None: no history)."""
        if not self.history:
            return None
        from harchos_cli.timeparse import iso

        info = self.history_info or HistoryInfo(
            fetched_hours=len(self.history),
            sources=(self.history_source,) if self.history_source else (),
            signal=self.source.signal,
            method=self.source.method,
        )
        starts = [o.start for o in self.history]
        return {
            "provider": self.history_source,
            "hours": len(self.history),
            "fetched_hours": info.fetched_hours,
            "stored_hours": info.stored_hours,
            "backfilled_hours": info.backfilled_hours,
            "backfilled": info.backfilled_hours > 0,
            "backfill": info.backfill,
            "sources": list(info.sources),
            "signal": info.signal,
            "method": info.method,
            "oldest": iso(min(starts)),
            "newest": iso(max(starts)),
            "used_by_model": info.used_by_model,
        }


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
