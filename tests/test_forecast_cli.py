"""`harchos forecast` end to end: embedded offline, replay, several regions, errors."""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos

T0 = datetime(2022, 2, 1, tzinfo=UTC)


def write_trace(path: Path, days: int = 40, zone_column: bool = False) -> list[float]:
    """A deterministic hourly trace with a daily cycle, a trend and a dip at 13:00 UTC."""
    values = []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["datetime", "carbon_intensity"])
        for hour in range(days * 24):
            moment = T0 + timedelta(hours=hour)
            value = 300 + 80 * math.sin(2 * math.pi * (moment.hour - 6) / 24) + hour * 0.05
            if moment.hour == 13:
                value -= 120
            value += (hour * 37 % 11) - 5
            values.append(round(value, 2))
            writer.writerow([moment.strftime("%Y-%m-%dT%H:%M:%SZ"), values[-1]])
    return values


def test_offline_embedded_forecast(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "forecast", "--region", "eu-west", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["region"] == "eu-west"
    assert data["zone"] == "IE"
    assert data["provider"] == "embedded"
    assert data["signal"] == "average"
    assert data["kind"] == "forecast"
    assert len(data["points"]) >= 48
    for point in data["points"]:
        assert point["low"] <= point["intensity"] <= point["high"]
        assert set(point) == {"start", "end", "intensity", "low", "high"}
        assert point["start"].endswith("Z")
    best = data["best_window"]
    assert {"start", "end", "mean_intensity", "saving_vs_now", "saving_vs_median"} <= set(best)
    assert best["mean_intensity"] <= best["now_intensity"]
    assert best["saving_vs_now"] >= 0


def test_human_output_names_the_source(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "forecast", "--region", "DE", "--duration", "3h")
    assert result.code == 0, result.err
    assert "source: embedded" in result.out
    assert "Greenest start" in result.out
    assert "█" in result.out


def test_replay_best_window_matches_brute_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.csv"
    values = write_trace(trace)
    at = T0 + timedelta(days=20, hours=2)
    result = harchos(
        capsys,
        "forecast",
        "--provider",
        f"replay:{trace}",
        "--region",
        "DE",
        "--at",
        at.isoformat(),
        "--duration",
        "2h",
        "--deadline",
        "20h",
        "--json",
    )
    assert result.code == 0, result.err
    data = result.json()
    assert data["provider"] == "replay"
    assert data["kind"] == "replayed"
    first = 20 * 24 + 2
    means = [(values[i] + values[i + 1]) / 2 for i in range(first, first + 19)]
    best = min(range(len(means)), key=lambda i: (means[i], i))
    assert data["best_window"]["start"] == (at + timedelta(hours=best)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert data["best_window"]["mean_intensity"] == pytest.approx(means[best], abs=0.01)
    assert data["points"][0]["intensity"] == pytest.approx(values[first])
    assert data["history"]["provider"] == "replay"


def test_replay_defaults_now_to_14_days_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace)
    data = harchos(capsys, "forecast", "--provider", f"replay:{trace}", "-r", "DE", "--json").json()
    assert data["now"] == "2022-02-15T00:00:00Z"


def test_replay_outside_the_trace_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace, days=20)
    result = harchos(
        capsys, "forecast", "-r", "DE", "--provider", f"replay:{trace}", "--at", "2030-01-01T00:00Z"
    )
    assert result.code == 3
    assert "outside the trace" in result.err


def test_several_regions_are_ranked(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(
        capsys,
        "forecast",
        "--region",
        "aws:eu-central-1,eu-north,PL",
        "--duration",
        "4h",
        "--at",
        "2026-06-01T00:00Z",
        "--json",
    )
    assert result.code == 0, result.err
    data = result.json()
    ranking = data["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    means = [r["mean_intensity"] for r in ranking]
    assert means == sorted(means)
    # Sweden's grid is far cleaner than Poland's in every season.
    assert ranking[0]["zone"] == "SE-SE3"
    assert ranking[-1]["zone"] == "PL"
    assert {f["zone"] for f in data["forecasts"]} == {"DE", "SE-SE3", "PL"}


def test_threshold_periods(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace)
    data = harchos(
        capsys,
        "forecast",
        "--provider",
        f"replay:{trace}",
        "-r",
        "DE",
        "--threshold",
        "250",
        "--json",
    ).json()
    assert data["threshold"] == 250
    spans = data["below_threshold"]
    assert spans
    under = {p["start"] for p in data["points"] if p["intensity"] < 250}
    covered = set()
    for span in spans:
        assert span["mean_intensity"] < 250
        start = datetime.fromisoformat(span["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(span["end"].replace("Z", "+00:00"))
        while start < end:
            covered.add(start.strftime("%Y-%m-%dT%H:%M:%SZ"))
            start += timedelta(hours=1)
    assert covered == under


def test_csv_output(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(
        capsys,
        "forecast",
        "-r",
        "FR",
        "--hours",
        "6",
        "--deadline",
        "6h",
        "--at",
        "2026-06-01",
        "--csv",
    )
    assert result.code == 0, result.err
    rows = list(csv.DictReader(result.out.splitlines()))
    assert len(rows) == 6
    assert rows[0]["zone"] == "FR"
    assert rows[0]["provider"] == "embedded"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--region", "atlantis"], "unknown region 'atlantis'"),
        (["--region", "DE", "--duration", "soon"], "bad duration"),
        (["--region", "DE", "--duration", "6h", "--deadline", "3h"], "cannot finish"),
        (["--region", "DE", "--provider", "carbonfairy"], "unknown provider"),
        (["--region", "DE", "--provider", "replay:/nonexistent.csv"], "not found"),
        (["--region", "DE", "--at", "teatime"], "bad timestamp"),
        ([], "no region given"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_a_hint(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    result = harchos(capsys, "forecast", *args)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert fragment in lines[0]
    assert lines[0].startswith("harchos: error: ")
    assert len(lines) == 2
    assert lines[1].startswith("  hint: ")


def test_atlantis_suggests_names(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "forecast", "--region", "atlantis")
    assert result.code == 2
    assert "did you mean" in result.err


def test_explain_names_the_model_history_and_backtest(capsys: pytest.CaptureFixture[str]) -> None:
    data = harchos(capsys, "forecast", "-r", "DE", "--explain", "--json").json()
    explained = data["explain"]
    assert explained["used"] == "embedded"
    assert explained["model"] == data["model"]
    assert explained["history"]["given_hours"] == 0
    assert explained["history"]["mode"] == "climatology"
    assert 0 < explained["backtest"]["mape"] < 1
    assert "explain" not in harchos(capsys, "forecast", "-r", "DE", "--json").json()
    human = harchos(capsys, "forecast", "-r", "DE", "--explain", "--no-plot")
    assert "How this forecast was made" in human.out
    assert "backtest for DE" in human.out


def test_explain_replay_with_history(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace)
    data = harchos(
        capsys, "forecast", "--provider", f"replay:{trace}", "-r", "DE", "--explain", "--json"
    ).json()
    assert data["explain"]["used"] == "replay"


def test_hours_sets_the_points_shown_even_when_the_deadline_is_further(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = harchos(
        capsys, "forecast", "-r", "DE", "--hours", "2", "--deadline", "24h", "--json"
    ).json()
    assert len(data["points"]) == 2
    assert data["best_window"]["candidates"] >= 20


def test_several_regions_none_of_which_fits_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(
        capsys, "forecast", "-r", "DE,FR", "--deadline", "30m", "--duration", "1h", "--json"
    )
    assert result.code == 2
    assert "no region can fit the job" in result.err


def test_backtest_history_limits_what_the_model_sees(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace)

    def scored(*extra: str) -> dict[str, Any]:
        result = harchos(capsys, "forecast", "backtest", str(trace), "--zone", "DE", *extra)
        assert result.code == 0, result.err
        data: dict[str, Any] = result.json()
        return data

    full, day = scored("--json"), scored("--history", "24h", "--json")
    assert (full["history_hours"], day["history_hours"]) == (None, 24)
    assert scored("--history", "all", "--json") == full
    assert day["origins"] == full["origins"]
    assert day["mape"] != pytest.approx(full["mape"], rel=1e-3)
    # The reference is not the model: it sees the day before whatever the model is given.
    assert day["baseline"] == full["baseline"]
    text = harchos(capsys, "forecast", "backtest", str(trace), "--zone", "DE", "--history", "7d")
    assert text.code == 0, text.err
    assert "the model sees 168 h of history" in text.out
    text = harchos(capsys, "forecast", "backtest", str(trace), "--zone", "DE")
    assert "the model sees all the history" in text.out


HISTORY_HINT = "give 0h (offline), 24h (a live provider's day), 168h (a week), or all"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("90m", "history '90m' is not a whole number of hours"),
        ("soon", "history: bad duration 'soon'"),
        ("-1h", "history: bad duration '-1h'"),
        ("", "history: empty duration"),
    ],
)
def test_backtest_bad_history_exits_2_with_one_line_and_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str, fragment: str
) -> None:
    trace = tmp_path / "t.csv"
    write_trace(trace)
    result = harchos(capsys, "forecast", "backtest", str(trace), "--history", value)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert lines[0] == f"harchos: error: {fragment}"
    assert len(lines) == 2
    assert lines[1] == f"  hint: {HISTORY_HINT}"
    assert result.out == ""
