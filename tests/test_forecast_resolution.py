"""A provider's own resolution reaches the search and the JSON; only the display aggregates."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli.carbon.outlook import hourly_display
from harchos_cli.carbon.providers.http import Sample, native_series
from harchos_cli.carbon.types import Point

T0 = datetime(2022, 2, 1, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)


def write_half_hourly(path: Path, days: int = 20) -> list[float]:
    values = []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["datetime", "carbon_intensity"])
        for slot in range(days * 48):
            moment = T0 + slot * HALF_HOUR
            value = 250 + 90 * math.sin(2 * math.pi * slot / 48) + (slot * 37 % 17)
            values.append(round(value, 2))
            writer.writerow([moment.strftime("%Y-%m-%dT%H:%M:%SZ"), values[-1]])
    return values


def test_replayed_half_hours_are_searched_and_reported_as_they_are(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "gb_half_hours.csv"
    values = write_half_hourly(trace)
    at = T0 + timedelta(days=15, hours=3, minutes=17)
    args = ["forecast", "--provider", f"replay:{trace}", "-r", "GB", "--at", at.isoformat()]
    result = harchos(
        capsys, *args, "--duration", "30m", "--deadline", "10h", "--hours", "4", "--json"
    )
    assert result.code == 0, result.err
    data = result.json()
    first = (15 * 24 + 3) * 2
    assert [p["intensity"] for p in data["points"]] == pytest.approx(values[first : first + 8])
    assert data["points"][1]["start"] == "2022-02-16T03:30:00Z"
    # Brute force over every minute of the half-hour step series, now to deadline − 30 min.
    deadline = at + timedelta(hours=10)
    minute = timedelta(minutes=1)

    def value_at(moment: datetime) -> float:
        return values[int((moment - T0) / HALF_HOUR)]

    starts = [at + i * minute for i in range(int((deadline - at) / minute) - 30 + 1)]
    means = [sum(value_at(s + k * minute) for k in range(30)) / 30 for s in starts]
    lowest = min(means)
    assert data["best_window"]["mean_intensity"] == pytest.approx(lowest, abs=0.005)
    best_start = starts[next(i for i, m in enumerate(means) if m <= lowest + 1e-9)]
    assert data["best_window"]["start"] == best_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["best_window"]["now_is_now"] is True
    assert data["best_window"]["now_start"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")

    table = harchos(capsys, *args, "--duration", "30m", "--hours", "4", "--no-plot")
    assert table.code == 0, table.err
    # The table shows hourly means: four rows for four hours (the JSON has eight half hours).
    rows = [line for line in table.out.splitlines() if " Feb 2022 " in line and "–" in line]
    assert len(rows) == 4


def test_hourly_display_weights_by_time() -> None:
    five = timedelta(minutes=5)
    points = [
        Point(T0 + i * five, T0 + (i + 1) * five, float(i), i - 1.0, i + 1.0) for i in range(24)
    ]
    shown = hourly_display(points)
    assert [(p.start, p.end) for p in shown] == [
        (T0, T0 + timedelta(hours=1)),
        (T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
    ]
    assert [p.intensity for p in shown] == pytest.approx([5.5, 17.5])
    assert [p.low for p in shown] == pytest.approx([4.5, 16.5])
    hourly = [Point(T0, T0 + timedelta(hours=1), 3.0, 2.0, 4.0)]
    assert hourly_display(hourly) == hourly


def test_native_series_last_value_wins_and_overlaps_are_cut() -> None:
    five = timedelta(minutes=5)
    samples = [
        Sample(T0, T0 + five, 100.0),
        Sample(T0 + five, T0 + 4 * five, 200.0),  # runs past the next sample's start
        Sample(T0 + 2 * five, T0 + 3 * five, 300.0),
        Sample(T0 + 2 * five, T0 + 3 * five, 310.0),  # the same moment again: the last wins
        Sample(T0 + 3 * five, T0 + 3 * five, 999.0),  # no duration: dropped
        Sample(T0 + 3 * five, T0 + 4 * five, math.nan),  # not a number: dropped
    ]
    series = native_series(samples)
    assert [(o.start, o.end, o.intensity) for o in series] == [
        (T0, T0 + five, 100.0),
        (T0 + five, T0 + 2 * five, 200.0),
        (T0 + 2 * five, T0 + 3 * five, 310.0),
    ]
    assert native_series([]) == []
