"""The window search is the exact optimum of the step reading (issue 15).

Checked three ways: against a brute-force search over every whole minute on generated series
(5-, 30- and 60-minute spacing, off-grid now and deadline); against the peers' own test cases
(the Carbon Aware SDK's rolling averages, CATS's windowed forecast), with CATS's numbers beside
ours where the two readings differ on purpose; and on the cases the old search got wrong.
"""

from __future__ import annotations

import csv
import itertools
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harchos_cli.carbon.types import Point
from harchos_cli.carbon.windows import (
    best_window,
    greenest_time,
    ordered_points,
    rolling_means,
    window_mean,
)
from harchos_cli.errors import UsageError

T0 = datetime(2022, 3, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
PEERS = Path(__file__).parent / "fixtures" / "peers"


def series(values: list[float], step: timedelta, start: datetime = T0) -> list[Point]:
    return [Point(start + i * step, start + (i + 1) * step, v, v, v) for i, v in enumerate(values)]


def per_minute(points: list[Point]) -> tuple[datetime, np.ndarray]:
    """The series as one value per minute from its first start (NaN in gaps)."""
    origin = points[0].start
    size = int((points[-1].end - origin) / MINUTE)
    minutes = np.full(size, np.nan)
    for point in points:
        first = int((point.start - origin) / MINUTE)
        minutes[first : first + int((point.end - point.start) / MINUTE)] = point.intensity
    return origin, minutes


def brute_force(
    points: list[Point], minutes_long: int, now: datetime, deadline: datetime
) -> list[tuple[datetime, float]]:
    """Every whole-minute start in [now, deadline − duration] whose window the data cover."""
    origin, minutes = per_minute(points)
    found = []
    first = max(0, math.ceil((now - origin) / MINUTE))
    last = int((deadline - origin) / MINUTE) - minutes_long
    for offset in range(first, min(last, len(minutes) - minutes_long) + 1):
        chunk = minutes[offset : offset + minutes_long]
        if not np.isnan(chunk).any():
            found.append((origin + offset * MINUTE, float(chunk.sum()) / minutes_long))
    return found


@st.composite
def searches(draw: st.DrawFn, whole: bool) -> tuple[list[Point], int, datetime, datetime]:
    step = timedelta(minutes=draw(st.sampled_from([5, 30, 60])))
    count = draw(st.integers(1, 30))
    value = st.integers(0, 60) if whole else st.floats(0, 1000, allow_nan=False)
    values = draw(st.lists(value, min_size=count, max_size=count))
    points = series([float(v) for v in values], step)
    if count > 3 and draw(st.booleans()):
        del points[draw(st.integers(1, count - 2))]  # a gap no window may cross
    span = int(count * step / MINUTE)
    minutes_long = draw(st.integers(1, span))
    now = T0 + draw(st.integers(-30, span)) * MINUTE
    deadline = now + draw(st.integers(1, span + 60)) * MINUTE
    return points, minutes_long, now, deadline


@settings(max_examples=300, deadline=None)
@given(searches(whole=False))
def test_the_pick_is_the_brute_force_minimum(
    search: tuple[list[Point], int, datetime, datetime],
) -> None:
    points, minutes_long, now, deadline = search
    duration = minutes_long * MINUTE
    brute = brute_force(points, minutes_long, now, deadline)
    if not brute:
        with pytest.raises(UsageError):
            best_window(points, duration, earliest=now, deadline=deadline)
        return
    found = best_window(points, duration, earliest=now, deadline=deadline)
    lowest = min(mean for _, mean in brute)
    assert abs(found.best.mean_intensity - lowest) <= 1e-9
    assert now <= found.best.start
    assert found.best.end <= deadline
    at_pick = dict(brute)[found.best.start]
    assert abs(at_pick - found.best.mean_intensity) <= 1e-9


@settings(max_examples=200, deadline=None)
@given(searches(whole=True))
def test_ties_go_to_the_earliest_start(
    search: tuple[list[Point], int, datetime, datetime],
) -> None:
    # Whole-number values: distinct window means differ by at least 1/minutes, far above noise.
    points, minutes_long, now, deadline = search
    brute = brute_force(points, minutes_long, now, deadline)
    if not brute:
        return
    found = best_window(points, minutes_long * MINUTE, earliest=now, deadline=deadline)
    lowest = min(mean for _, mean in brute)
    earliest_best = next(start for start, mean in brute if mean <= lowest + 1e-9)
    assert found.best.start == earliest_best
    assert found.now_is_now == (brute[0][0] == now)
    assert found.now.start == brute[0][0]


@settings(max_examples=200, deadline=None)
@given(searches(whole=False))
def test_the_interruptible_pick_is_the_brute_force_minimum(
    search: tuple[list[Point], int, datetime, datetime],
) -> None:
    points, minutes_long, now, deadline = search
    origin, minutes = per_minute(points)
    first = max(0, math.ceil((now - origin) / MINUTE))
    last = min(len(minutes), int((deadline - origin) / MINUTE))
    available = minutes[first:last] if last > first else minutes[:0]
    available = available[~np.isnan(available)]
    if len(available) < minutes_long:
        with pytest.raises(UsageError):
            greenest_time(points, minutes_long * MINUTE, earliest=now, deadline=deadline)
        return
    spans = greenest_time(points, minutes_long * MINUTE, earliest=now, deadline=deadline)
    cheapest = float(np.sort(available)[:minutes_long].sum())
    total = sum(w.mean_intensity * ((w.end - w.start) / MINUTE) for w in spans)
    assert abs(total - cheapest) <= 1e-9 * max(1.0, cheapest)
    assert sum(((w.end - w.start) for w in spans), timedelta()) == minutes_long * MINUTE
    assert all(now <= w.start and w.end <= deadline for w in spans)


# The Carbon Aware SDK's `RollingAverage` cases (EmissionsDataExtensionsTests.cs): 5-minute data
# 10, 20, 30, 40; a window of W minutes every T minutes from the first point, kept while covered.
SDK_ROLLING_AVERAGE = [
    (5, 5, [10.0, 20.0, 30.0, 40.0]),
    (10, 5, [15.0, 25.0, 35.0]),
    (2, 5, [10.0, 20.0, 30.0, 40.0]),
    (5, 4, [10.0, 18.0, 26.0, 34.0]),
    (10, 4, [15.0, 23.0, 31.0]),
    (2, 4, [10.0, 15.0, 20.0, 30.0, 40.0]),
    (5, 7, [10.0, 24.0, 38.0]),
    (10, 7, [15.0, 29.0]),
    (2, 7, [10.0, 20.0, 35.0]),
]


@pytest.mark.parametrize(("window", "tick", "expected"), SDK_ROLLING_AVERAGE)
def test_carbon_aware_sdk_rolling_averages(window: int, tick: int, expected: list[float]) -> None:
    points = series([10, 20, 30, 40], 5 * MINUTE)
    means = []
    start = T0
    while (mean := window_mean(points, start, start + window * MINUTE)) is not None:
        means.append(mean)
        start += tick * MINUTE
    assert means == pytest.approx(expected)


def test_carbon_aware_sdk_documented_example() -> None:
    means = [
        w.mean_intensity
        for w in rolling_means(series([10, 20, 30, 40, 5], 5 * MINUTE), 10 * MINUTE)
    ]
    assert means == pytest.approx([15, 25, 35, 22.5])


def cats_data() -> list[Point]:
    """CATS's `tests/carbon_intensity_24h.csv`: half-hourly GB values, 2023-05-04 12:30 on."""
    with (PEERS / "cats_carbon_intensity_24h.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    half_hour = 30 * MINUTE
    points = []
    for row in rows:
        start = datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
        value = float(row["intensity"])
        points.append(Point(start, start + half_hour, value, value, value))
    return points


def trapezoid(values: list[float]) -> float:
    """CATS's reading: straight lines between the values, averaged over equal intervals."""
    return sum((a + b) / 2 for a, b in itertools.pairwise(values)) / (len(values) - 1)


def test_cats_minimise_average_differs_by_reading() -> None:
    # CATS (test_minimise_average): 180 min from the first point; its linear reading picks
    # 2023-05-05 12:00–15:00 at 7.333. The step reading holds each half-hour value flat, which
    # makes that window 7.5 and 12:30–15:30 (8, 7, 7, 5, 8, 8) the greenest at 43/6.
    points = cats_data()
    found = best_window(points, 180 * MINUTE, earliest=points[0].start, deadline=points[-1].start)
    assert found.best.start == datetime(2023, 5, 5, 12, 30, tzinfo=UTC)
    assert found.best.mean_intensity == pytest.approx(43 / 6)
    cats_pick = datetime(2023, 5, 5, 12, tzinfo=UTC)
    assert trapezoid([10, 8, 7, 7, 5, 8, 8]) == pytest.approx(44 / 6)
    assert window_mean(points, cats_pick, cats_pick + 180 * MINUTE) == pytest.approx(7.5)


def test_cats_average_intensity_now() -> None:
    # CATS (test_average_intensity_now): 330 min from the first point. Step: the mean of the
    # first 11 values; CATS: the trapezoid over the first 12. They agree here because the first
    # and twelfth values are equal (11), which is what the two readings' difference hinges on.
    points = cats_data()
    values = [p.intensity for p in points]
    start = points[0].start
    ours = window_mean(points, start, start + 330 * MINUTE)
    assert ours == pytest.approx(sum(values[:11]) / 11) == pytest.approx(155 / 11)
    assert trapezoid(values[:12]) == pytest.approx(155 / 11)


def test_cats_average_intensity_with_offset() -> None:
    # CATS (test_average_intensity_with_offset): a 194-minute job from 13:48 (its third window
    # from a 12:48 start). CATS interpolates the ends (16.8 at 13:48) and expects 14.6125; the
    # step reading gives 12 min at 15, 6 half hours (18, 19, 17, 16, 11, 11), 2 min at 11.
    points = cats_data()
    start = datetime(2023, 5, 4, 13, 48, tzinfo=UTC)
    ours = window_mean(points, start, start + 194 * MINUTE)
    assert ours == pytest.approx((12 * 15 + 30 * (18 + 19 + 17 + 16 + 11 + 11) + 2 * 11) / 194)
    assert trapezoid([16.8, 18, 19, 17, 16, 11, 11, 11, 11]) == pytest.approx(14.6125)


def test_cats_integral_of_a_sine_within_one_percent() -> None:
    # CATS (test_values): −sin sampled every minute over 200 minutes, 160-minute windows; the
    # window means are within 1 % of the exact integral, as CATS asks of its own reading.
    step = math.pi / 200
    points = series([-math.sin(i * step) for i in range(200)], MINUTE)
    windows = rolling_means(points, 160 * MINUTE)
    exact = [
        (math.cos((i + 160) * step) - math.cos(i * step)) / (160 * step)
        for i in range(len(windows))
    ]
    assert [w.mean_intensity for w in windows] == pytest.approx(exact, rel=0.01)


def test_a_window_ending_at_an_off_the_hour_deadline() -> None:
    # Hourly data, deadline at :57: the greenest hour is the last one the deadline allows,
    # 57 minutes into the final point, which no data point starts.
    points = series([300, 300, 300, 200, 100], timedelta(hours=1))
    deadline = T0 + timedelta(hours=4, minutes=57)
    found = best_window(points, timedelta(hours=1), earliest=T0, deadline=deadline)
    assert found.best.start == T0 + timedelta(hours=3, minutes=57)
    assert found.best.mean_intensity == pytest.approx((3 * 200 + 57 * 100) / 60)


def test_a_90_minute_job_ends_with_the_period_it_wants() -> None:
    # The cheapest 90 minutes end with the low last hour: start at the previous hour's half.
    points = series([100, 500, 10], timedelta(hours=1))
    found = best_window(points, timedelta(minutes=90), earliest=T0, deadline=T0 + 3 * 60 * MINUTE)
    assert found.best.start == T0 + timedelta(minutes=90)
    assert found.best.mean_intensity == pytest.approx((30 * 500 + 60 * 10) / 90)


def test_half_hour_slots_are_searched_as_they_are() -> None:
    points = series([261.0, 259.8, 262.64], 30 * MINUTE)
    found = best_window(points, 30 * MINUTE, earliest=T0, deadline=T0 + 90 * MINUTE)
    assert found.best.start == T0 + 30 * MINUTE
    assert found.best.mean_intensity == pytest.approx(259.8)


def test_now_before_the_forecast_is_labelled() -> None:
    points = series([200, 100, 300], timedelta(hours=1), start=T0 + timedelta(minutes=5))
    found = best_window(points, timedelta(hours=1), earliest=T0, deadline=T0 + timedelta(hours=4))
    assert not found.now_is_now
    assert found.now.start == T0 + timedelta(minutes=5)
    assert found.best.start == T0 + timedelta(hours=1, minutes=5)


def test_overlapping_points_are_refused_and_repeats_count_once() -> None:
    hour = timedelta(hours=1)
    flat = series([50, 50, 50], hour)
    # The old search averaged 110 over data that are 50 everywhere.
    overlapping = [*flat, Point(T0 + 30 * MINUTE, T0 + 90 * MINUTE, 50, 50, 50)]
    with pytest.raises(UsageError, match="overlap"):
        best_window(overlapping, hour, earliest=T0, deadline=T0 + 3 * hour)
    repeated = [*flat, *flat]
    assert len(ordered_points(repeated)) == 3
    found = best_window(repeated, hour, earliest=T0, deadline=T0 + 3 * hour)
    assert found.best.mean_intensity == 50
    with pytest.raises(UsageError, match="overlap"):
        ordered_points([*flat, Point(T0, T0 + hour, 60, 60, 60)])
