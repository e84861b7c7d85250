from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harchos_cli.carbon.types import Point
from harchos_cli.carbon.windows import best_window, periods_below, rolling_means
from harchos_cli.errors import UsageError

T0 = datetime(2022, 3, 1, tzinfo=UTC)


def series(values: list[float], step: timedelta = timedelta(hours=1)) -> list[Point]:
    return [Point(T0 + i * step, T0 + (i + 1) * step, v, v, v) for i, v in enumerate(values)]


def test_matches_the_carbon_aware_sdk_example() -> None:
    # The GSF SDK's documented example: 5-minute data, 10-minute window.
    points = series([10, 20, 30, 40, 5], timedelta(minutes=5))
    means = [w.mean_intensity for w in rolling_means(points, timedelta(minutes=10))]
    assert means == pytest.approx([15, 25, 35, 22.5])


def test_partial_overlap_is_time_weighted() -> None:
    points = series([100, 200, 300])
    windows = rolling_means(points, timedelta(minutes=90))
    # 60 min at 100 + 30 min at 200 → 133.3; the last start is not fully covered.
    assert [round(w.mean_intensity, 1) for w in windows] == [133.3, 233.3]


def test_gap_in_the_data_is_never_covered() -> None:
    points = series([100, 200, 300, 400])
    del points[2]
    windows = rolling_means(points, timedelta(hours=2))
    assert [w.start for w in windows] == [T0]


def test_best_window_ties_go_to_the_earliest_and_savings_are_relative() -> None:
    points = series([300, 100, 200, 100, 400, 500])
    best = best_window(points, timedelta(hours=1), earliest=T0, deadline=T0 + timedelta(hours=6))
    assert best.best.start == T0 + timedelta(hours=1)
    assert best.ties == 2
    assert best.now.mean_intensity == 300
    assert best.saving_vs_now == pytest.approx(1 - 100 / 300)
    assert best.median_intensity == 250
    assert best.saving_vs_median == pytest.approx(1 - 100 / 250)


def test_deadline_bounds_the_window_end() -> None:
    points = series([300, 300, 300, 10, 10])
    best = best_window(points, timedelta(hours=2), earliest=T0, deadline=T0 + timedelta(hours=4))
    assert best.best.end <= T0 + timedelta(hours=4)
    assert best.best.start == T0 + timedelta(hours=2)


def test_job_longer_than_the_deadline_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot finish by the deadline") as caught:
        best_window(
            series([1] * 10), timedelta(hours=6), earliest=T0, deadline=T0 + timedelta(hours=3)
        )
    assert caught.value.exit_code == 2


def test_forecast_too_short_for_the_deadline_is_explained() -> None:
    with pytest.raises(UsageError, match="does not cover"):
        best_window(
            series([1] * 3), timedelta(hours=6), earliest=T0, deadline=T0 + timedelta(days=1)
        )


def test_periods_below_threshold_are_contiguous_runs() -> None:
    spans = periods_below(series([50, 40, 300, 20, 10, 30, 400]), 100)
    assert [(s.start.hour, s.end.hour, s.mean_intensity) for s in spans] == [
        (0, 2, 45),
        (3, 6, 20),
    ]


@given(st.lists(st.floats(min_value=1, max_value=2000), min_size=2, max_size=60), st.integers(1, 8))
def test_best_window_is_the_minimum_of_brute_force(values: list[float], hours: int) -> None:
    points = series(values)
    deadline = T0 + timedelta(hours=len(values))
    if hours > len(values):
        with pytest.raises(UsageError):
            best_window(points, timedelta(hours=hours), earliest=T0, deadline=deadline)
        return
    brute = [sum(values[i : i + hours]) / hours for i in range(len(values) - hours + 1)]
    best = best_window(points, timedelta(hours=hours), earliest=T0, deadline=deadline)
    assert best.best.mean_intensity == pytest.approx(min(brute))
    chosen = int((best.best.start - T0) / timedelta(hours=1))
    assert brute[chosen] == pytest.approx(min(brute), abs=1e-6)
    # Ties go to the earliest: no earlier window is (beyond float noise) as green.
    assert all(m > min(brute) + 1e-12 for m in brute[:chosen])
    assert best.candidates == len(brute)


def test_windows_never_start_before_now() -> None:
    now = T0 + timedelta(minutes=50)
    points = series([100, 300, 200, 50])
    best = best_window(points, timedelta(hours=1), earliest=now, deadline=T0 + timedelta(hours=4))
    # "Now" starts at 00:50, inside the first point: 10 min at 100 + 50 min at 300.
    assert best.now.start == now
    assert best.now.mean_intensity == pytest.approx((10 * 100 + 50 * 300) / 60)
    assert best.best.start == T0 + timedelta(hours=3)
    assert all(w.start >= now for w in (best.best, best.now))


def test_a_deadline_that_a_started_hour_cannot_meet_is_refused() -> None:
    now = T0 + timedelta(minutes=50)
    with pytest.raises(UsageError, match="cannot finish"):
        best_window(
            series([1] * 6), timedelta(hours=2), earliest=now, deadline=now + timedelta(minutes=80)
        )


def test_a_past_deadline_says_so() -> None:
    with pytest.raises(UsageError, match="already past"):
        best_window(series([1] * 6), timedelta(hours=1), earliest=T0, deadline=T0)
