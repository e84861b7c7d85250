"""What `harchos forecast` reports: per region the intensity ahead, the greenest window for a job,
the spans under a threshold, and, across regions, a ranking of where and when to run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from harchos_cli.carbon.service import ForecastService, horizon_warning
from harchos_cli.carbon.types import Forecast, Point, Region
from harchos_cli.carbon.windows import (
    BestWindow,
    Window,
    band_spread,
    best_window,
    check_threshold,
    periods_below,
)
from harchos_cli.errors import HarchosError, UsageError
from harchos_cli.timeparse import floor_hour, format_duration, iso

UNIT = "gCO2eq/kWh"


@dataclass
class RegionOutlook:
    forecast: Forecast
    best: BestWindow | None
    below: list[Window] | None
    error: str | None = None
    shown_hours: int | None = None

    @property
    def spread(self) -> float:
        """The forecast's relative uncertainty over the best window and the one starting now."""
        if self.best is None:
            return 0.0
        return band_spread(self.forecast.points, (self.best.best, self.best.now))

    @property
    def shown_points(self) -> list[Point]:
        """The points of the first `--hours` hours at the provider's own resolution (the search
        may have looked further): what JSON reports."""
        points = sorted(self.forecast.points, key=lambda p: p.start)
        if self.shown_hours is None or not points:
            return points
        until = floor_hour(points[0].start) + timedelta(hours=self.shown_hours)
        return [p for p in points if p.start < until]

    @property
    def shown(self) -> list[Point]:
        """The shown points as hourly means, for the chart and the table only (one row or column
        an hour whatever the provider's resolution); the numbers reported elsewhere and the
        search use the points themselves."""
        return hourly_display(self.shown_points)


def hourly_display(points: Sequence[Point]) -> list[Point]:
    """Time-weighted hourly means of sub-hourly points (hourly points unchanged); an hour is
    labelled by the span its points cover."""
    if all(p.end - p.start >= timedelta(hours=1) for p in points):
        return list(points)
    hours: dict[datetime, list[Point]] = {}
    for point in points:
        hours.setdefault(floor_hour(point.start), []).append(point)
    shown = []
    for group in hours.values():
        weights = np.array([(p.end - p.start).total_seconds() for p in group])
        columns = np.array([[p.intensity, p.low, p.high] for p in group])
        intensity, low, high = (weights @ columns) / weights.sum()
        shown.append(Point(group[0].start, group[-1].end, intensity, low, high))
    return shown


@dataclass
class Outlook:
    now: datetime
    duration: timedelta
    deadline: datetime
    threshold: float | None
    regions: list[RegionOutlook]
    warnings: list[str] = field(default_factory=list)

    def all_warnings(self) -> list[str]:
        return [*self.warnings, *(w for r in self.regions for w in r.forecast.warnings)]

    def ranking(self) -> list[RegionOutlook]:
        """Regions with a best window, greenest first; average and marginal signals apart."""
        ranked = [r for r in self.regions if r.best is not None]
        return sorted(
            ranked,
            key=lambda r: (
                r.forecast.source.signal != "average",
                r.best.best.mean_intensity if r.best else math.inf,
                r.best.best.start if r.best else self.now,
            ),
        )


def build_outlook(
    service: ForecastService,
    regions: Sequence[Region],
    *,
    now: datetime,
    hours: int,
    duration: timedelta,
    deadline: datetime,
    threshold: float | None,
) -> Outlook:
    """Forecast every region and search each for its greenest window before `deadline`."""
    check_threshold(threshold)
    # The window search needs the forecast to reach the deadline even if fewer hours are shown.
    needed = max(hours, math.ceil((deadline - floor_hour(now)) / timedelta(hours=1)))
    outlooks = []
    for region in regions:
        forecast = service.forecast(region, now, needed)
        best: BestWindow | None = None
        error = None
        try:
            best = best_window(forecast.points, duration, earliest=now, deadline=deadline)
        except HarchosError as exc:
            if len(regions) == 1:
                raise
            error = exc.message
        if best is not None and not best.now_is_now:
            forecast.warnings.append(
                f"{region.name}: the forecast starts at {iso(best.now.start)}, after now "
                f"({iso(now)}); 'now' figures compare against the first window that can run, "
                f"{iso(best.now.start)}–{iso(best.now.end)}"
            )
        below = periods_below(forecast.points, threshold) if threshold is not None else None
        outlooks.append(RegionOutlook(forecast, best, below, error, shown_hours=hours))
    if not any(item.best for item in outlooks):
        raise UsageError(
            f"no region can fit the job: {outlooks[0].forecast.region.name}: {outlooks[0].error}",
            hint="give a later --deadline or a shorter --duration",
        )
    outlook = Outlook(now, duration, deadline, threshold, outlooks, list(service.config.warnings))
    outlook.warnings.extend(
        f"{item.forecast.region.name}: {item.error}" for item in outlooks if item.error
    )
    beyond = (horizon_warning(item.forecast, now, deadline) for item in outlooks)
    outlook.warnings.extend(warning for warning in beyond if warning)
    signals = {r.forecast.source.signal for r in outlooks}
    if len(signals) > 1:
        outlook.warnings.append(
            "some regions have marginal and some average intensity; they are ranked apart, "
            "averages first (the two are not comparable)"
        )
    return outlook


def _point_json(point: Point) -> dict[str, Any]:
    return {
        "start": iso(point.start),
        "end": iso(point.end),
        "intensity": round(point.intensity, 2),
        "low": round(point.low, 2),
        "high": round(point.high, 2),
    }


def _window_json(window: Window) -> dict[str, Any]:
    return {
        "start": iso(window.start),
        "end": iso(window.end),
        "mean_intensity": round(window.mean_intensity, 2),
    }


def explain(forecast: Forecast) -> dict[str, Any]:
    """Which model made the numbers, what history it used, and how it backtested for this zone."""
    from harchos_cli.carbon.embedded import EmbeddedModel

    model = EmbeddedModel.load()
    source = forecast.source
    if source.provider == "embedded":
        return {"used": "embedded", **model.explain(forecast.region.zone, len(forecast.history))}
    if source.provider == "replay":
        return {"used": "replay", "method": "the trace's own recorded values, served as a forecast"}
    explained: dict[str, Any] = {
        "used": source.provider,
        "method": f"{source.provider}'s own forecast ({source.method})",
    }
    # What the embedded model would make of the provider's history: only of history of its own
    # kind (average lifecycle); marginal or direct values never reach it.
    same_kind = source.signal == "average" and source.method == "lifecycle"
    if same_kind and model.has_zone(forecast.region.zone):
        explained["embedded_on_same_history"] = model.explain(
            forecast.region.zone, len(forecast.history)
        )
    return explained


def region_json(
    outlook: Outlook, item: RegionOutlook, *, with_explain: bool = False
) -> dict[str, Any]:
    """The documented `harchos forecast --json` object for one region (docs/json.md)."""
    forecast = item.forecast
    source = forecast.source
    best = item.best
    extra = {"explain": explain(forecast)} if with_explain else {}
    return {
        "region": forecast.region.name,
        "zone": forecast.region.zone,
        "display_name": forecast.region.display_name,
        "provider": source.provider,
        "signal": source.signal,
        "method": source.method,
        "kind": source.kind,
        "model": source.model or None,
        "source_detail": source.detail or None,
        "fetched_at": iso(source.fetched_at),
        "history": forecast.history_json(),
        "unit": UNIT,
        "now": iso(outlook.now),
        "duration": format_duration(outlook.duration),
        "deadline": iso(outlook.deadline),
        "points": [_point_json(p) for p in item.shown_points],
        "best_window": None
        if best is None
        else {
            **_window_json(best.best),
            "saving_vs_now": round(best.saving_vs_now, 4),
            "saving_vs_median": round(best.saving_vs_median, 4),
            "now_intensity": round(best.now.mean_intensity, 2),
            "now_start": iso(best.now.start),
            "now_is_now": best.now_is_now,
            "median_intensity": round(best.median_intensity, 2),
            "candidates": best.candidates,
        },
        "threshold": outlook.threshold,
        "below_threshold": None if item.below is None else [_window_json(w) for w in item.below],
        "comparison": None
        if forecast.comparison is None
        else {
            "model": forecast.comparison.model,
            "hours": forecast.comparison.hours,
            "mean_abs_diff": round(forecast.comparison.mean_abs_diff, 2),
            "relative_diff": round(forecast.comparison.relative_diff, 4),
        },
        "error": item.error,
        "warnings": forecast.warnings,
        **extra,
    }


def outlook_json(outlook: Outlook, *, explain: bool = False) -> dict[str, Any]:
    """One region: its object. Several: `{"ranking": [...], "forecasts": [...]}`."""
    if len(outlook.regions) == 1:
        return region_json(outlook, outlook.regions[0], with_explain=explain)
    ranking = []
    for rank, item in enumerate(outlook.ranking(), start=1):
        assert item.best is not None
        ranking.append(
            {
                "rank": rank,
                "region": item.forecast.region.name,
                "zone": item.forecast.region.zone,
                "signal": item.forecast.source.signal,
                **_window_json(item.best.best),
                "saving_vs_now": round(item.best.saving_vs_now, 4),
            }
        )
    return {
        "ranking": ranking,
        "forecasts": [region_json(outlook, r, with_explain=explain) for r in outlook.regions],
        "warnings": outlook.warnings,
    }
