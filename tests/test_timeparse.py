from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from harchos_cli.errors import UsageError
from harchos_cli.timeparse import (
    format_duration,
    iso,
    parse_deadline,
    parse_duration,
    parse_instant,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(minutes=90)),
        ("PT6H", timedelta(hours=6)),
        ("P1DT2H", timedelta(hours=26)),
        ("pt30m", timedelta(minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("3", timedelta(hours=3)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "6x", "-1h", "0h", "PT", "h6"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_duration(text)
    assert caught.value.exit_code == 2
    assert caught.value.hint


def test_instants_are_utc() -> None:
    assert parse_instant("2022-03-01T00:00:00Z") == datetime(2022, 3, 1, tzinfo=UTC)
    assert parse_instant("2022-03-01T02:00:00+02:00") == datetime(2022, 3, 1, tzinfo=UTC)
    assert parse_instant("2022-03-01 05:00") == datetime(2022, 3, 1, 5, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_instant("yesterday")


def test_deadline_is_a_duration_or_a_timestamp() -> None:
    now = datetime(2022, 3, 1, tzinfo=UTC)
    assert parse_deadline("12h", now) == now + timedelta(hours=12)
    assert parse_deadline("2022-03-02T06:00Z", now) == datetime(2022, 3, 2, 6, tzinfo=UTC)
    with pytest.raises(UsageError, match="bad deadline"):
        parse_deadline("tomorrow", now)


def test_formatting() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(days=1, hours=3)) == "1d3h"
    assert iso(datetime(2022, 3, 1, 1, 2, 3, 456, tzinfo=UTC)) == "2022-03-01T01:02:03Z"
