"""Greenest-window search over a forecast: the exact optimum of the step reading.

The reading: each point's value holds flat over its period `[start, end)` (what a provider's
half-hour, five-minute or hourly figure means), so a window's intensity is the time-weighted mean
of the points it overlaps, a partial overlap counting by its overlap. A window counts only when
the data cover it without a gap. Points are taken in time order; two points whose periods overlap
are refused (`UsageError`), except an exact repeat (same period, same value), which counts once.

The candidate rule: a job of length D that may start in `[earliest, latest]` is tried at
`earliest`, at `latest`, at every point's start and at every point's end minus D (those inside the
range). Between two consecutive candidates neither window edge crosses a point boundary, so the
window's integral is linear in its start there and its minimum lies at one of the two ends: the
candidates contain the exact optimum over every real start time, not just the data points. Ties
(within `TIE_TOLERANCE`) go to the earliest start.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from harchos_cli.carbon.types import Point
from harchos_cli.errors import UsageError
from harchos_cli.timeparse import format_duration, iso

# Means closer than this (gCO2eq/kWh) count as a tie, so float noise never beats "earliest".
TIE_TOLERANCE = 1e-9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    mean_intensity: float


@dataclass(frozen=True)
class BestWindow:
    """The chosen window and what it saves against starting now and against the median window.

    `now` is the window starting at the search's `earliest` moment when the data cover it; when
    they do not (the forecast starts later, or has a gap there) it is the first window that can
    run, and `now_is_now` is False so the caller can say so.
    """

    best: Window
    now: Window
    median_intensity: float
    candidates: int
    ties: int
    now_is_now: bool = True

    @property
    def saving_vs_now(self) -> float:
        return _saving(self.best.mean_intensity, self.now.mean_intensity)

    @property
    def saving_vs_median(self) -> float:
        return _saving(self.best.mean_intensity, self.median_intensity)


def _saving(chosen: float, reference: float) -> float:
    return 0.0 if reference <= 0 else 1.0 - chosen / reference


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def ordered_points(points: Sequence[Point]) -> list[Point]:
    """`points` in time order under the stated rule: an exact repeat (same period and value) is
    kept once; any other overlap, or a period that is not positive, is a `UsageError`."""
    ordered = sorted(points, key=lambda p: (p.start, p.end))
    kept: list[Point] = []
    for point in ordered:
        if point.end <= point.start:
            raise UsageError(f"a forecast point at {iso(point.start)} has no duration")
        if kept and point.start < kept[-1].end:
            previous = kept[-1]
            same = (previous.start, previous.end) == (point.start, point.end)
            if same and previous.intensity == point.intensity:
                continue
            raise UsageError(
                f"forecast points overlap: {iso(previous.start)}–{iso(previous.end)} "
                f"({previous.intensity:g}) and {iso(point.start)}–{iso(point.end)} "
                f"({point.intensity:g})",
                hint="give each period once (a provider's repeated slot must carry one value)",
            )
        kept.append(point)
    return kept


class _Integral:
    """Cumulative intensity × time over time-ordered, non-overlapping points (integer
    microseconds, so boundaries compare exactly), for vectorised window means and coverage."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.points = ordered_points(points)
        self.starts = np.array([_micros(p.start) for p in self.points], dtype=np.int64)
        self.ends = np.array([_micros(p.end) for p in self.points], dtype=np.int64)
        self.values = np.array([p.intensity for p in self.points], dtype=np.float64)
        areas = self.values * (self.ends - self.starts).astype(np.float64)
        self.cumulative = np.concatenate(([0.0], np.cumsum(areas)))
        # Each point's contiguous run: a new run begins wherever a point does not start at the
        # previous one's end.
        breaks = np.ones(len(self.points), dtype=np.int64)
        if len(self.points) > 1:
            breaks[1:] = self.starts[1:] != self.ends[:-1]
        self.run = np.cumsum(breaks)

    def __len__(self) -> int:
        return len(self.points)

    def area_until(self, moments: np.ndarray) -> np.ndarray:
        """∫ intensity dt from the first point's start to each of `moments` (inside the data)."""
        index = np.clip(np.searchsorted(self.starts, moments, side="right") - 1, 0, None)
        partial = (moments - self.starts[index]).astype(np.float64) * self.values[index]
        return np.asarray(self.cumulative[index] + partial)

    def covered(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether the data cover each window `[start, start + length)` without a gap."""
        if not len(self.points):
            return np.zeros(len(starts), dtype=bool)
        first = np.searchsorted(self.starts, starts, side="right") - 1
        last = np.searchsorted(self.ends, starts + length, side="left")
        inside = (first >= 0) & (last < len(self.points))
        first_safe = np.clip(first, 0, len(self.points) - 1)
        last_safe = np.clip(last, 0, len(self.points) - 1)
        return np.asarray(
            inside
            & (self.ends[first_safe] > starts)
            & (self.run[first_safe] == self.run[last_safe])
        )

    def means(self, starts: np.ndarray, length: int) -> np.ndarray:
        area = self.area_until(starts + length) - self.area_until(starts)
        return np.asarray(area / float(length))

    def candidate_starts(self, length: int, earliest: int, latest: int) -> np.ndarray:
        """The candidate rule: earliest, latest, every point start and every point end − length,
        inside [earliest, latest] and covered; sorted, each once."""
        every = np.concatenate(
            (np.array([earliest, latest], dtype=np.int64), self.starts, self.ends - length)
        )
        inside = np.unique(every[(every >= earliest) & (every <= latest)])
        return np.asarray(inside[self.covered(inside, length)])


def window_mean(points: Sequence[Point], start: datetime, end: datetime) -> float | None:
    """The step reading's mean intensity over `[start, end)`; None when the data do not cover it."""
    if end <= start:
        raise UsageError("a window must end after it starts")
    integral = _Integral(points)
    begin, length = _micros(start), _micros(end) - _micros(start)
    at = np.array([begin], dtype=np.int64)
    if not integral.covered(at, length)[0]:
        return None
    return float(integral.means(at, length)[0])


def rolling_means(points: Sequence[Point], duration: timedelta) -> list[Window]:
    """Every fully covered window of `duration` starting at a data point, in time order (the
    Carbon Aware SDK's rolling average with a tick of one data point)."""
    if duration <= timedelta(0):
        raise UsageError("the job duration must be positive")
    integral = _Integral(points)
    if not len(integral):
        return []
    length = duration // _MICROSECOND
    starts = integral.starts[integral.covered(integral.starts, length)]
    means = integral.means(starts, length)
    return [
        Window(_moment(int(s)), _moment(int(s) + length), float(m))
        for s, m in zip(starts, means, strict=True)
    ]


def candidate_windows(
    points: Sequence[Point], duration: timedelta, *, earliest: datetime, latest_start: datetime
) -> list[Window]:
    """Every candidate window (the rule above) starting in `[earliest, latest_start]`, in time
    order; empty when none is covered."""
    if duration <= timedelta(0):
        raise UsageError("the job duration must be positive")
    integral = _Integral(points)
    if not len(integral) or latest_start < earliest:
        return []
    length = duration // _MICROSECOND
    starts = integral.candidate_starts(length, _micros(earliest), _micros(latest_start))
    means = integral.means(starts, length)
    return [
        Window(_moment(int(s)), _moment(int(s) + length), float(m))
        for s, m in zip(starts, means, strict=True)
    ]


def best_window(
    points: Sequence[Point],
    duration: timedelta,
    *,
    earliest: datetime,
    deadline: datetime,
) -> BestWindow:
    """The greenest window of `duration` starting at or after `earliest` and ending by `deadline`:
    the exact optimum over every start time, not only the data points (the candidate rule above).

    The first candidate is "starting now" when it starts at `earliest`; otherwise (the data begin
    later) it is the first window that can run and `now_is_now` is False.
    Raises `UsageError` when no window fits (the job is longer than the time to the deadline, or
    the forecast does not reach far enough).
    """
    if duration <= timedelta(0):
        raise UsageError("the job duration must be positive")
    candidates = candidate_windows(
        points, duration, earliest=earliest, latest_start=deadline - duration
    )
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
        first = min((p.start for p in points), default=earliest)
        last = max((p.end for p in points), default=earliest)
        raise UsageError(
            f"the forecast ({iso(first)} to {iso(last)}) does not cover a "
            f"{format_duration(duration)} window between {iso(earliest)} and the deadline "
            f"{iso(deadline)}",
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
        now_is_now=candidates[0].start == earliest,
    )


def greenest_time(
    points: Sequence[Point], run_time: timedelta, *, earliest: datetime, deadline: datetime
) -> list[Window]:
    """The interruptible search: the greenest `run_time` in total, in any pieces, between
    `earliest` and `deadline`, as time-ordered spans with their mean.

    Exact under the step reading: the data clipped to `[earliest, deadline)` are taken cheapest
    first (ties: the earlier), the last one only for the time still needed, from its start.
    Raises `UsageError` when the data there hold less than `run_time`.
    """
    if run_time <= timedelta(0):
        raise UsageError("the job duration must be positive")
    pieces = []
    for point in ordered_points(points):
        start, end = max(point.start, earliest), min(point.end, deadline)
        if end > start:
            pieces.append((point.intensity, start, end))
    needed = run_time
    chosen: list[Window] = []
    for value, start, end in sorted(pieces, key=lambda piece: (piece[0], piece[1])):
        if needed <= timedelta(0):
            break
        taken = min(end - start, needed)
        chosen.append(Window(start, start + taken, value))
        needed -= taken
    if needed > timedelta(0):
        raise UsageError(
            f"the forecast holds less than {format_duration(run_time)} between {iso(earliest)} "
            f"and the deadline {iso(deadline)}",
            hint="give a later --deadline or ask for more --hours",
        )
    return _joined(sorted(chosen, key=lambda w: w.start))


def _joined(spans: list[Window]) -> list[Window]:
    """Adjacent spans as one, its mean weighted by time."""
    joined: list[Window] = []
    for span in spans:
        if not joined or joined[-1].end != span.start:
            joined.append(span)
            continue
        previous = joined.pop()
        before = (previous.end - previous.start).total_seconds()
        after = (span.end - span.start).total_seconds()
        area = previous.mean_intensity * before + span.mean_intensity * after
        joined.append(Window(previous.start, span.end, area / (before + after)))
    return joined


def periods_below(points: Sequence[Point], threshold: float) -> list[Window]:
    """Contiguous spans whose every point is strictly under `threshold`, with their mean."""
    spans: list[Window] = []
    run: list[Point] = []

    def close() -> None:
        if run:
            seconds = sum((p.end - p.start).total_seconds() for p in run)
            area = sum(p.intensity * (p.end - p.start).total_seconds() for p in run)
            spans.append(Window(run[0].start, run[-1].end, area / seconds))
            run.clear()

    for point in ordered_points(points):
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
