"""Greenest-window search over a forecast, as the GSF Carbon Aware SDK does it.

A window of the job's length slides over the forecast one data point at a time; its intensity is
the time-weighted mean of the points it overlaps (a partial overlap counts by its overlap), and a
window is a candidate only if the data cover it fully. Ties go to the earliest start.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from harchos_cli.carbon.types import Point
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import format_duration, iso

# Means closer than this (gCO2eq/kWh) count as a tie, so float noise never beats "earliest".
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    mean_intensity: float


@dataclass(frozen=True)
class BestWindow:
    """The chosen window and what it saves against starting now and against the median window."""

    best: Window
    now: Window
    median_intensity: float
    candidates: int
    ties: int

    @property
    def saving_vs_now(self) -> float:
        return _saving(self.best.mean_intensity, self.now.mean_intensity)

    @property
    def saving_vs_median(self) -> float:
        return _saving(self.best.mean_intensity, self.median_intensity)


def _saving(chosen: float, reference: float) -> float:
    return 0.0 if reference <= 0 else 1.0 - chosen / reference


class _Integral:
    """Cumulative intensity × seconds over contiguous points, for O(log n) window means."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.starts = [p.start for p in points]
        self.ends = [p.end for p in points]
        self.values = [p.intensity for p in points]
        self.cumulative = [0.0]
        for point in points:
            seconds = (point.end - point.start).total_seconds()
            self.cumulative.append(self.cumulative[-1] + point.intensity * seconds)
        # Index of the first point of the contiguous run each point belongs to.
        self.run_start: list[int] = []
        for index, point in enumerate(points):
            contiguous = index > 0 and points[index - 1].end == point.start
            self.run_start.append(self.run_start[-1] if contiguous else index)

    def area_until(self, moment: datetime) -> float:
        """∫ intensity dt from the first point's start to `moment` (inside the data)."""
        index = bisect.bisect_right(self.starts, moment) - 1
        partial = (moment - self.starts[index]).total_seconds() * self.values[index]
        return self.cumulative[index] + partial

    def covers(self, start: datetime, end: datetime) -> bool:
        first = bisect.bisect_right(self.starts, start) - 1
        last = bisect.bisect_left(self.ends, end)
        if first < 0 or last >= len(self.ends) or self.ends[first] <= start:
            return False
        return self.run_start[last] <= first

    def mean(self, start: datetime, end: datetime) -> float:
        return (self.area_until(end) - self.area_until(start)) / (end - start).total_seconds()


def rolling_means(points: Sequence[Point], duration: timedelta) -> list[Window]:
    """Every fully covered window of `duration` starting at a data point, in time order."""
    if duration <= timedelta(0):
        raise UsageError("the job duration must be positive")
    ordered = sorted(points, key=lambda p: p.start)
    if not ordered:
        return []
    integral = _Integral(ordered)
    windows = []
    for point in ordered:
        end = point.start + duration
        if integral.covers(point.start, end):
            windows.append(Window(point.start, end, integral.mean(point.start, end)))
    return windows


def best_window(
    points: Sequence[Point],
    duration: timedelta,
    *,
    earliest: datetime,
    deadline: datetime,
) -> BestWindow:
    """The greenest window of `duration` starting at or after `earliest` and ending by `deadline`.

    Candidates start at `earliest` itself (usually "now", inside the current data point) and at
    every data point after it; the first candidate is "starting now".
    Raises `UsageError` when no window fits (the job is longer than the time to the deadline, or
    the forecast does not reach far enough).
    """
    ordered = sorted(points, key=lambda p: p.start)
    integral = _Integral(ordered) if ordered else None
    starts = [earliest, *(p.start for p in ordered if p.start > earliest)]
    candidates = [
        Window(start, start + duration, integral.mean(start, start + duration))
        for start in starts
        if integral is not None
        and start + duration <= deadline
        and integral.covers(start, start + duration)
    ]
    if duration <= timedelta(0):
        raise UsageError("the job duration must be positive")
    if not candidates:
        span = deadline - earliest
        if span <= timedelta(0):
            raise UsageError(
                f"the deadline {iso(deadline)} is already past",
                hint="give a deadline in the future (a duration such as 12h, or an ISO time)",
            )
        if duration > span:
            raise UsageError(
                f"a {format_duration(duration)} job cannot finish by the deadline "
                f"({format_duration(span)} away)",
                hint="give a later --deadline or a shorter --duration",
            )
        last = max((p.end for p in points), default=earliest)
        raise UsageError(
            f"the forecast (to {iso(last)}) does not cover a {format_duration(duration)} window "
            f"before the deadline {iso(deadline)}",
            hint="ask for more --hours or a provider with a longer forecast",
        )
    lowest = min(w.mean_intensity for w in candidates)
    tied = [w for w in candidates if w.mean_intensity - lowest <= TIE_TOLERANCE]
    return BestWindow(
        best=tied[0],
        now=candidates[0],
        median_intensity=statistics.median(w.mean_intensity for w in candidates),
        candidates=len(candidates),
        ties=len(tied),
    )


def periods_below(points: Sequence[Point], threshold: float) -> list[Window]:
    """Contiguous spans whose every point is strictly under `threshold`, with their mean."""
    spans: list[Window] = []
    run: list[Point] = []

    def close() -> None:
        if run:
            integral = _Integral(run)
            spans.append(
                Window(run[0].start, run[-1].end, integral.mean(run[0].start, run[-1].end))
            )
            run.clear()

    for point in sorted(points, key=lambda p: p.start):
        if point.intensity < threshold and (not run or run[-1].end == point.start):
            run.append(point)
        else:
            close()
            if point.intensity < threshold:
                run.append(point)
    close()
    return spans


def check_threshold(value: float | None, name: str = "--threshold") -> float | None:
    """`value` unchanged when it is a usable threshold (gCO2eq/kWh), else `UsageError` (exit 2):
    NaN, infinities and negative values mean nothing as an intensity."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UsageError(
            f"{name} {value:g} is not an intensity",
            hint="give a number of gCO2eq/kWh, 0 or more (e.g. --threshold 150)",
        )
    return value


def band_spread(points: Sequence[Point], windows: Sequence[Window]) -> float:
    """How uncertain the forecast is over `windows`: the median relative half-width of the
    P10–P90 band of the points they cover (0 for recorded values, which have no band)."""
    spans = [(w.start, w.end) for w in windows]
    widths = [
        (p.high - p.low) / 2 / p.intensity
        for p in points
        if p.intensity > 0 and any(start <= p.start < end for start, end in spans)
    ]
    return statistics.median(widths) if widths else 0.0


def saving_text(saving: float, spread: float | None) -> str:
    """A saving as a percentage no finer than the band supports: to 0.1 % for recorded values,
    to 1 % for a band within ±10 %, else to the nearest 5 % (with a `~`). `spread` None (not
    known): to 1 %."""
    if spread is not None and spread < 0.01:
        return f"{saving:.1%}"
    if spread is None or spread <= 0.10:
        return f"{saving:.0%}"
    return f"~{round(saving * 20) * 5:.0f}%"
