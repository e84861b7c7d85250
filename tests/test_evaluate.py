"""The evaluation protocol on traces where the answer is known, and on a real trace."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from clirunner import harchos

from harchos_cli.carbon.embedded import EmbeddedModel, epoch_hour
from harchos_cli.carbon.traces import Trace, read_trace
from harchos_cli.errors import UsageError
from harchos_cli.plan.evaluate import (
    WARMUP_HOURS,
    Hourly,
    backtest,
    evaluate,
    evaluate_spatial,
    model_forecast,
    origins,
    parse_history,
    persistence_forecast,
    rolling_interruptible,
    rolling_starts,
)

START = datetime(2030, 1, 1, tzinfo=UTC)  # outside every fit period


@pytest.fixture(scope="module")
def model() -> EmbeddedModel:
    return EmbeddedModel.load()


def make(values: np.ndarray, zone: str = "DE", start: datetime = START) -> Trace:
    return Trace(
        zone=zone, start=start, values=np.asarray(values, dtype=np.float64), path=Path("t")
    )


def daily(profile: list[float], days: int = 40) -> np.ndarray:
    return np.tile(np.asarray(profile, dtype=np.float64), days)


def test_origins_follow_the_protocol() -> None:
    trace = make(np.ones(24 * 20), start=datetime(2030, 1, 1, 3, tzinfo=UTC))
    idx = origins(trace, 24)
    hours_of_day = (idx + 3) % 24
    assert set(hours_of_day.tolist()) == {0, 6, 12, 18}
    assert idx.min() >= WARMUP_HOURS
    assert idx.max() + 24 <= len(trace.values)
    # day 14 (from 03:00): 06, 12, 18; days 15-18: four each; day 19: only 00 has 24 h after it
    assert len(idx) == 3 + 4 * 4 + 1
    assert idx[0] == WARMUP_HOURS + 3


def test_persistence_uses_the_most_recent_same_hour() -> None:
    values = np.arange(24 * 20, dtype=np.float64)
    idx = np.array([400])
    fc = persistence_forecast(values, idx, 50)[0]
    assert fc[0] == 400 - 24  # lead 1: the hour starting at the origin, one day earlier
    assert fc[23] == 423 - 24
    assert fc[24] == 424 - 48  # beyond a day: still the most recent same hour before t
    assert (fc < 400).all()


def test_constant_trace_persistence_is_perfect(model: EmbeddedModel) -> None:
    result = backtest(make(np.full(24 * 30, 250.0)), model, horizon=24)
    assert result["baseline"]["persistence_24h"]["mape"] == 0.0
    assert result["baseline"]["persistence_24h"]["mae"] == 0.0
    assert result["origins"] == (24 * 30 - 24 - WARMUP_HOURS) // 6 + 1
    assert result["fit_overlap"] is False
    assert result["mape"] < 0.05  # the blend follows a flat history closely


def test_periodic_trace_persistence_is_perfect_and_keeps_the_oracle_saving(
    model: EmbeddedModel,
) -> None:
    profile = [300.0 + 100 * np.sin(2 * np.pi * h / 24) for h in range(24)]
    trace = make(daily(profile))
    assert backtest(trace, model)["baseline"]["persistence_24h"]["mape"] == pytest.approx(
        0, abs=1e-12
    )
    result = evaluate(trace, model, job_hours=3, slack_hours=24)
    assert result["saving"]["oracle"] > 0.2
    assert result["share_of_oracle"]["persistence"] == pytest.approx(1.0)
    assert result["saving"]["persistence"] == pytest.approx(result["saving"]["oracle"])


def test_one_cheap_hour_per_day_savings_by_hand(model: EmbeddedModel) -> None:
    profile = [100.0] * 24
    profile[3] = 40.0
    trace = make(daily(profile))
    full = evaluate(trace, model, job_hours=1, slack_hours=24)
    assert full["saving"]["oracle"] == pytest.approx(0.6)  # every job can reach 03:00
    assert full["share_of_oracle"]["persistence"] == pytest.approx(1.0)
    # slack 3: only the 00:00 origin reaches 03:00 -> 1 - (40 + 3 * 100) / 400
    short = evaluate(trace, model, job_hours=1, slack_hours=3)
    assert short["saving"]["oracle"] == pytest.approx(0.15)
    # interruptible 2 h job in [t, t+5): only from 00:00 it gets 40 and 100 -> 1 - (70 + 300) / 400
    pause = evaluate(trace, model, job_hours=2, slack_hours=3, interruptible=True)
    assert pause["saving"]["oracle"] == pytest.approx(0.075)
    assert pause["interruptible"] is True
    # non-interruptible, a 2 h job in [0, 3] from 00:00: window 02-04 -> (100 + 40) / 2 = 70
    block = evaluate(trace, model, job_hours=2, slack_hours=3)
    assert block["saving"]["oracle"] == pytest.approx(1 - (70 + 300) / 400)


def test_ties_go_to_the_earliest_start(model: EmbeddedModel) -> None:
    trace = make(np.full(24 * 30, 200.0))
    result = evaluate(trace, model, job_hours=1, slack_hours=12)
    assert result["saving"] == {
        "oracle": 0.0, "forecast": 0.0, "rolling": 0.0, "persistence": 0.0
    }  # fmt: skip
    assert result["share_of_oracle"] == {"forecast": None, "rolling": None, "persistence": None}


def test_no_look_ahead(model: EmbeddedModel) -> None:
    rng = np.random.default_rng(7)
    values = 300 + 50 * rng.standard_normal(24 * 30)
    values = np.abs(values)
    trace = make(values)
    origin = np.array([WARMUP_HOURS + 6])
    before = model_forecast(trace, model, origin, 24)
    changed = values.copy()
    changed[origin[0] :] *= 3
    after = model_forecast(make(changed), model, origin, 24)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    changed[origin[0] - 1] *= 3
    moved = model_forecast(make(changed), model, origin, 24)
    assert not np.array_equal(before[0], moved[0])


def test_too_short_or_zoneless_traces_are_usage_errors(model: EmbeddedModel) -> None:
    with pytest.raises(UsageError, match="too short"):
        backtest(make(np.ones(24 * 10)), model)
    with pytest.raises(UsageError, match="zone"):
        backtest(Trace(zone=None, start=START, values=np.ones(24 * 30), path=Path("x.csv")), model)
    with pytest.raises(UsageError):
        evaluate(make(np.ones(24 * 30)), model, job_hours=0, slack_hours=4)


def test_real_trace_backtest_and_evaluate(traces: Path, model: EmbeddedModel) -> None:
    trace = read_trace(traces / "eco4cast" / "DE_2022_hourly.csv")
    result = backtest(trace, model, horizon=24)
    assert result["zone"] == "DE"
    assert result["fit_overlap"] is True
    assert "in-sample" in result["note"]
    assert result["origins"] > 1300
    persistence = result["baseline"]["persistence_24h"]["mape"]
    assert 0.1 < persistence < 0.4
    assert result["mape"] < persistence
    assert 0.6 < result["coverage"] < 0.95
    plan = evaluate(trace, model, job_hours=1, slack_hours=24, rolling=False)
    assert (
        plan["saving"]["oracle"] >= plan["saving"]["forecast"] > plan["saving"]["persistence"] > 0
    )


def test_an_all_zero_trace_has_no_mape_and_no_saving(model: EmbeddedModel) -> None:
    zeros = make(np.zeros(40 * 24))
    assert backtest(zeros, model)["mape"] is None
    with pytest.raises(UsageError, match="zero"):
        evaluate(zeros, model, job_hours=1, slack_hours=4)


def known(trace: Trace, idx: np.ndarray, span: int) -> Hourly:
    """Forecasts made every hour that are exactly right (what an oracle forecaster gives)."""
    hours = np.arange(int(idx.min()), int(idx.max()) + span + 1)
    padded = np.pad(trace.values, (0, span), mode="edge")
    point = padded[hours[:, None] + np.arange(span)]
    return point, point, point


def test_rolling_follows_the_supervisors_rule_and_its_minimum_saving() -> None:
    # Every day one hour is 10 % cheaper: worth waiting for under a 2 % minimum, not a 20 % one.
    profile = [100.0] * 24
    profile[9] = 90.0
    trace = make(daily(profile))
    idx = origins(trace, 25)
    right = known(trace, idx, 25)
    waits, _ = rolling_starts([trace], [right], idx, job_hours=1, slack_hours=24, min_saving=0.02)
    hour_of_origin = (idx + epoch_hour(START)) % 24
    np.testing.assert_array_equal(waits, (9 - hour_of_origin) % 24)  # the 09:00 hour, every day
    at_once, _ = rolling_starts([trace], [right], idx, job_hours=1, slack_hours=24, min_saving=0.2)
    assert not at_once.any()


def test_rolling_catches_what_the_first_forecast_missed() -> None:
    # The forecasts made at midnight expect the cheap hour at 03:00; those made at other hours
    # know it is at 20:00. A job submitted at midnight re-plans at 01:00 and waits for 20:00.
    profile = [100.0] * 24
    profile[20] = 40.0
    trace = make(daily(profile))
    idx = origins(trace, 25)
    point = known(trace, idx, 25)[0].copy()
    first = int(idx.min())
    stale = [100.0] * 24
    stale[3] = 10.0
    midnight = (idx + epoch_hour(START)) % 24 == 0
    for origin in idx[midnight]:
        hours = (origin + np.arange(25) + epoch_hour(START)) % 24
        point[origin - first] = np.asarray(stale)[hours]
    starts, _ = rolling_starts(
        [trace], [(point, point, point)], idx, job_hours=1, slack_hours=24, min_saving=0.0
    )
    assert (starts[midnight] == 20).all()
    assert midnight.sum() > 10


def test_rolling_interruptible_pauses_through_dirty_hours() -> None:
    profile = [100.0] * 24
    profile[2:4] = [40.0, 40.0]
    trace = make(daily(profile))
    idx = origins(trace, 24)
    emitted = rolling_interruptible(
        trace, known(trace, idx, 24)[0], idx, job_hours=2, slack_hours=22
    )
    # It runs the two cheap hours, less the restart's lost minutes run at the cheap hour.
    assert emitted.max() < 45.0
    assert emitted.min() >= 40.0


def test_rolling_is_scored_with_the_model(model: EmbeddedModel) -> None:
    profile = [100.0] * 24
    profile[2:4] = [40.0, 40.0]
    trace = make(daily(profile))
    block = evaluate(trace, model, job_hours=2, slack_hours=22, min_saving=0.0)
    pause = evaluate(trace, model, job_hours=2, slack_hours=22, interruptible=True)
    for result in (block, pause):
        assert 0 <= result["saving"]["rolling"] <= result["saving"]["oracle"] == pytest.approx(0.6)
    assert evaluate(trace, model, 2, 22, rolling=False)["saving"].keys() == {
        "oracle", "forecast", "persistence"
    }  # fmt: skip


def test_history_limits_what_the_model_sees(model: EmbeddedModel) -> None:
    rng = np.random.default_rng(3)
    values = np.abs(300 + 60 * rng.standard_normal(24 * 30))
    trace = make(values)
    origin = np.array([WARMUP_HOURS + 6])
    none = model_forecast(trace, model, origin, 24, history_hours=0)[0][0]
    at = datetime.fromtimestamp((int(START.timestamp()) // 3600 + origin[0]) * 3600, tz=UTC)
    seasonal = [p.intensity for p in model.forecast("DE", at, 24)]
    np.testing.assert_allclose(none, seasonal, rtol=1e-9)
    day = model_forecast(trace, model, origin, 24, history_hours=24)[0][0]
    older = values.copy()
    older[: origin[0] - 24] *= 2  # only hours more than a day back change
    assert np.array_equal(day, model_forecast(make(older), model, origin, 24, 24)[0][0])
    assert not np.array_equal(day, model_forecast(make(older), model, origin, 24)[0][0])
    assert evaluate(trace, model, 1, 6, history_hours=24)["history_hours"] == 24


@pytest.mark.parametrize(
    ("text", "hours"), [("all", None), ("0h", 0), ("0", 0), ("24h", 24), ("7d", 168), ("168", 168)]
)
def test_history_values(text: str, hours: int | None) -> None:
    assert parse_history(text) == hours


@pytest.mark.parametrize("text", ["-1h", "90m", "soon", ""])
def test_bad_history_values_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_history(text)


def test_spatial_score_chooses_the_hub_and_the_time(model: EmbeddedModel) -> None:
    dirty = [300.0] * 24
    clean = [300.0] * 24
    clean[5] = 60.0  # the second hub is cleaner one hour a day
    hubs = [make(daily(dirty)), make(daily(clean), zone="FR")]
    result = evaluate_spatial(hubs, model, 1, 24, min_saving=0.0)
    assert result["hubs"] == ["DE", "FR"]
    assert result["saving"]["oracle"] == pytest.approx(0.8)
    assert result["first_hub"]["saving"]["oracle"] == 0.0  # staying put saves nothing
    assert result["gain_over_first_hub"]["oracle"] == pytest.approx(0.8)
    assert result["chosen_hub"]["oracle"] == {"DE": 0.0, "FR": 1.0}
    # Re-planned every hour over both hubs with right forecasts, it is the oracle.
    idx = origins(hubs[0], 25)
    starts, chosen = rolling_starts(
        hubs, [known(t, idx, 25) for t in hubs], idx, job_hours=1, slack_hours=24,
        min_saving=0.02,
    )  # fmt: skip
    assert chosen.all()
    np.testing.assert_array_equal((idx + starts + epoch_hour(START)) % 24, 5)


def test_spatial_score_aligns_traces_and_refuses_what_it_cannot_score(
    model: EmbeddedModel,
) -> None:
    a = make(np.full(24 * 30, 200.0))
    later = make(np.full(24 * 30, 100.0), zone="FR", start=datetime(2030, 1, 3, tzinfo=UTC))
    result = evaluate_spatial([a, later], model, 1, 4)
    assert result["period"]["start"].startswith("2030-01-03")
    assert result["saving"]["oracle"] == pytest.approx(0.5)
    with pytest.raises(UsageError, match="at least two"):
        evaluate_spatial([a], model, 1, 4)
    far = make(np.full(24 * 30, 100.0), zone="FR", start=datetime(2031, 1, 1, tzinfo=UTC))
    with pytest.raises(UsageError, match="share too few hours"):
        evaluate_spatial([a, far], model, 1, 4)


def test_real_traces_rolling_and_spatial(traces: Path, model: EmbeddedModel) -> None:
    # Three months of 2022 (Mar-May) keep it quick: a rolling score plans every job every hour.
    def spring(name: str) -> Trace:
        trace = read_trace(traces / "eco4cast" / name)
        first = 24 * (31 + 28)
        return replace(
            trace,
            start=trace.start + timedelta(hours=first),
            values=trace.values[first : first + 24 * 92],
        )

    de = spring("DE_2022_hourly.csv")
    week = evaluate(de, model, job_hours=6, slack_hours=24, history_hours=168)
    share = week["share_of_oracle"]
    assert share["rolling"] > share["persistence"]
    offline = evaluate(de, model, job_hours=6, slack_hours=24, history_hours=0, rolling=False)
    assert offline["saving"]["forecast"] < week["saving"]["forecast"]
    es = spring("ES_2022_hourly.csv")
    both = evaluate_spatial([de, es], model, job_hours=6, slack_hours=24)
    assert both["saving"]["oracle"] > both["first_hub"]["saving"]["oracle"]
    assert both["gain_over_first_hub"]["rolling"] > 0
    assert both["first_hub"]["saving"]["rolling"] == pytest.approx(
        evaluate(de, model, 6, 24)["saving"]["rolling"]
    )


def write_trace(path: Path, values: np.ndarray, start: datetime = START) -> Path:
    lines = ["datetime,carbon_intensity"]
    for hour, value in enumerate(values):
        moment = datetime.fromtimestamp(start.timestamp() + 3600 * hour, tz=UTC)
        lines.append(f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')},{value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plan_evaluate_command_scores_hubs_and_history(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dirty = write_trace(tmp_path / "a.csv", np.full(24 * 20, 300.0))
    profile = [300.0] * 24
    profile[5] = 60.0
    clean = write_trace(tmp_path / "b.csv", daily(profile, 20))
    both = harchos(capsys, "plan", "evaluate", str(dirty), str(clean), "--zone", "DE", "--zone",
                   "FR", "--job-hours", "1", "--slack-hours", "24", "--json")  # fmt: skip
    assert both.code == 0, both.err
    result = both.json()
    assert result["hubs"] == ["DE", "FR"]
    assert result["gain_over_first_hub"]["oracle"] == pytest.approx(0.8)
    text = harchos(capsys, "plan", "evaluate", str(dirty), str(clean), "--zone", "DE", "--zone",
                   "FR", "--job-hours", "1", "--slack-hours", "24")  # fmt: skip
    for shown in ("DE + FR", "re-planned hourly", "on DE alone", "jobs ran on: DE 0%, FR 100%"):
        assert shown in text.out
    one = harchos(capsys, "plan", "evaluate", str(clean), "--zone", "FR", "--job-hours", "1",
                  "--slack-hours", "24", "--history", "24h", "--min-saving-percent", "0",
                  "--json")  # fmt: skip
    assert one.code == 0, one.err
    assert (one.json()["history_hours"], one.json()["min_saving"]) == (24, 0.0)
    assert "rolling" in one.json()["share_of_oracle"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--zone", "DE"], "2 --zone for 3 traces"),
        (["--history", "90m"], "whole number of hours"),
        (["--min-saving-percent", "150"], "not a percentage"),
        (["--interruptible"], "one trace at a time"),
    ],
)
def test_plan_evaluate_refuses_what_it_cannot_score(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    trace = write_trace(tmp_path / "a.csv", np.full(24 * 20, 300.0))
    args = ["plan", "evaluate", str(trace), str(trace)]
    if extra[0] == "--zone":
        args.append(str(trace))
        extra = ["--zone", "DE", "--zone", "FR"]
    result = harchos(capsys, *args, "--job-hours", "1", "--slack-hours", "4", *extra)
    assert result.code == 2, result.err
    assert message in result.err
