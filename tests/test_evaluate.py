"""The evaluation protocol on traces where the answer is known, and on a real trace."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from harchos_cli.carbon.embedded import EmbeddedModel
from harchos_cli.carbon.traces import Trace, read_trace
from harchos_cli.errors import UsageError
from harchos_cli.plan.evaluate import (
    WARMUP_HOURS,
    backtest,
    evaluate,
    model_forecast,
    origins,
    persistence_forecast,
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
    assert result["saving"] == {"oracle": 0.0, "forecast": 0.0, "persistence": 0.0}
    assert result["share_of_oracle"] == {"forecast": None, "persistence": None}


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
    plan = evaluate(trace, model, job_hours=1, slack_hours=24)
    assert (
        plan["saving"]["oracle"] >= plan["saving"]["forecast"] > plan["saving"]["persistence"] > 0
    )


def test_an_all_zero_trace_has_no_mape_and_no_saving(model: EmbeddedModel) -> None:
    zeros = make(np.zeros(40 * 24))
    assert backtest(zeros, model)["mape"] is None
    with pytest.raises(UsageError, match="zero"):
        evaluate(zeros, model, job_hours=1, slack_hours=4)
