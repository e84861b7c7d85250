"""The embedded model: coverage, shapes, bands, conditioning, explain, and the fit itself."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from harchos_cli.carbon.embedded import HISTORY_HOURS, EmbeddedModel, calendar, predict_batch
from harchos_cli.carbon.traces import Trace
from harchos_cli.carbon.types import Observation
from harchos_cli.errors import ExitCode, NoCarbonDataError
from harchos_cli.plan.evaluate import backtest, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fit_embedded

ORIGIN = datetime(2023, 6, 14, 6, tzinfo=UTC)


@pytest.fixture(scope="module")
def model() -> EmbeddedModel:
    return EmbeddedModel.load()


def test_covers_all_125_zones(model: EmbeddedModel) -> None:
    zones = model.zones()
    assert len(zones) == 125
    for zone in ("DE", "US-CAL-CISO", "BR", "NO", "SE-SE3", "ZA"):
        assert model.has_zone(zone)
    assert EmbeddedModel.load() is EmbeddedModel.load()


def test_fit_info_names_sources_and_period(model: EmbeddedModel) -> None:
    info = model.fit_info("DE")
    assert any("eco4cast" in s for s in info["sources"])
    assert any("lets-wait-awhile" in s for s in info["sources"])
    assert info["fit_start"] < info["fit_end"]
    backtest = info["backtest"]
    assert backtest["kind"] == "held-out"
    assert backtest["period"].startswith(backtest["fit_until"][:10])
    assert 0 < backtest["mape"] < backtest["persistence_mape"] < 1
    assert 0.5 < backtest["coverage"] < 1


def test_unknown_zone_is_no_carbon_data(model: EmbeddedModel) -> None:
    with pytest.raises(NoCarbonDataError) as info:
        model.forecast("XX-NOWHERE", ORIGIN, 24)
    assert info.value.exit_code == ExitCode.NO_CARBON_DATA
    assert info.value.hint


@pytest.mark.parametrize("zone", ["DE", "FR", "US-CAL-CISO", "NO", "PL"])
def test_forecast_points_are_positive_finite_and_inside_band(
    model: EmbeddedModel, zone: str
) -> None:
    points = model.forecast(zone, ORIGIN + timedelta(minutes=37), 96)
    assert len(points) == 96
    assert points[0].start == ORIGIN
    assert points[1].start - points[0].start == timedelta(hours=1)
    for p in points:
        assert np.isfinite(p.intensity)
        assert p.intensity > 0
        assert p.low <= p.intensity <= p.high
        assert p.low < p.high


def test_far_future_date_works(model: EmbeddedModel) -> None:
    point, low, high = model.forecast_values("GB", datetime(2031, 2, 1, tzinfo=UTC), 48, None)
    assert point.shape == low.shape == high.shape == (48,)
    assert (point > 0).all()


def test_solar_dip_in_california_climatology(model: EmbeddedModel) -> None:
    point, _, _ = model.forecast_values("US-CAL-CISO", datetime(2024, 5, 1, tzinfo=UTC), 24, None)
    assert point[19:22].mean() < 0.85 * point[3:6].mean()


def test_history_at_twice_the_climatology_raises_the_forecast(model: EmbeddedModel) -> None:
    zone = "DE"
    clim, _, _ = model.forecast_values(zone, ORIGIN, 24, None)
    past_clim, _, _ = model.forecast_values(zone, ORIGIN - timedelta(hours=48), 48, None)
    high_hist, _, _ = model.forecast_values(zone, ORIGIN, 24, 2 * past_clim)
    low_hist, _, _ = model.forecast_values(zone, ORIGIN, 24, 0.5 * past_clim)
    assert high_hist.mean() > 1.3 * clim.mean()
    assert low_hist.mean() < 0.8 * clim.mean()
    # observations give the same answer as the array path
    observations = [
        Observation(
            start=ORIGIN - timedelta(hours=48 - i),
            end=ORIGIN - timedelta(hours=47 - i),
            intensity=float(2 * past_clim[i]),
        )
        for i in range(48)
    ]
    points = model.forecast(zone, ORIGIN, 24, observations)
    np.testing.assert_allclose([p.intensity for p in points], high_hist)


def test_history_at_or_after_origin_is_ignored(model: EmbeddedModel) -> None:
    base = [
        Observation(ORIGIN - timedelta(hours=k), ORIGIN - timedelta(hours=k - 1), 300.0)
        for k in range(1, 30)
    ]
    late = [
        Observation(ORIGIN + timedelta(hours=k), ORIGIN + timedelta(hours=k + 1), 5000.0)
        for k in range(5)
    ]
    a = model.forecast("FR", ORIGIN, 12, base)
    b = model.forecast("FR", ORIGIN, 12, base + late)
    assert [p.intensity for p in a] == [p.intensity for p in b]


def test_short_and_gappy_history_is_accepted(model: EmbeddedModel) -> None:
    history = np.full(30, 400.0)
    history[5:10] = np.nan
    point, low, high = model.forecast_values("NL", ORIGIN, 24, history)
    assert np.isfinite(point).all()
    assert (low <= point).all()
    assert (point <= high).all()
    longer = np.concatenate([np.full(HISTORY_HOURS, 1.0), history])
    again, _, _ = model.forecast_values("NL", ORIGIN, 24, longer)
    assert longer[-HISTORY_HOURS:].shape == (HISTORY_HOURS,)
    np.testing.assert_allclose(
        again, model.forecast_values("NL", ORIGIN, 24, longer[-HISTORY_HOURS:])[0]
    )


def test_band_ratios_bracket_one_and_history_band_is_narrower(model: EmbeddedModel) -> None:
    lo_h, hi_h = model.band_ratios("DE", 100, with_history=True)
    lo_c, hi_c = model.band_ratios("DE", 100, with_history=False)
    assert lo_h.shape == hi_h.shape == (100,)
    assert (lo_h <= 1).all()
    assert (hi_h >= 1).all()
    assert (hi_h[:6] - lo_h[:6]).mean() < (hi_c[:6] - lo_c[:6]).mean()
    # the band widens with lead time when the history is informative
    assert hi_h[23] - lo_h[23] > hi_h[0] - lo_h[0]


def test_explain_says_model_history_mode_and_backtest(model: EmbeddedModel) -> None:
    month = model.explain("DE", HISTORY_HOURS + 100)
    assert month["history"]["mode"] == "long"
    assert month["history"]["used_hours"] == HISTORY_HOURS
    assert f"last {HISTORY_HOURS} h of actuals" in month["method"]
    week = model.explain("DE", 24 * 14)
    assert week["model"] == model.model_name
    assert week["history"]["mode"] == "full"
    assert week["history"]["used_hours"] == 168
    assert week["fit"]["sources"] == model.fit_info("DE")["sources"]
    assert week["backtest"]["kind"] == "held-out"
    day = model.explain("DE", 24)
    assert day["history"]["mode"] == "short"
    assert day["history"]["used_hours"] == 24
    none = model.explain("DE", 3)
    assert none["history"]["mode"] == "climatology"
    assert none["history"]["used_hours"] == 0
    assert "only 3 recent hours" in none["method"]
    nothing = model.explain("DE", 0)
    assert nothing["history"]["mode"] == "climatology"
    assert "no recent actuals were available" in nothing["method"]
    assert "regression" not in nothing["method"]
    assert "no recent actuals" in nothing["history"]["description"]
    with pytest.raises(NoCarbonDataError):
        model.explain("XX-NOWHERE", 24)


def test_history_length_selects_the_weights(model: EmbeddedModel) -> None:
    """A day of history (a free live provider) and a week (replay) both move the forecast."""
    clim, _, _ = model.forecast_values("GB", ORIGIN, 24, None)
    past, _, _ = model.forecast_values("GB", ORIGIN - timedelta(hours=HISTORY_HOURS), 168, None)
    # a quiet week, then a day at 1.5 times the climatology
    week_history = past * np.concatenate([np.ones(144), np.full(24, 1.5)])
    day, lo_day, hi_day = model.forecast_values("GB", ORIGIN, 24, week_history[-24:])
    week, lo_week, hi_week = model.forecast_values("GB", ORIGIN, 24, week_history)
    assert day.mean() > 1.2 * clim.mean()
    assert week.mean() > 1.05 * clim.mean()
    assert not np.allclose(day, week)
    assert model.explain("GB", 24)["history"]["mode"] == "short"
    assert model.explain("GB", 168)["history"]["mode"] == "full"
    assert (lo_day <= day).all()
    assert (day <= hi_day).all()
    assert (lo_week <= week).all()
    assert (week <= hi_week).all()


def test_four_weeks_of_history_select_the_long_weights(model: EmbeddedModel) -> None:
    """Four weeks use the long weights; the same last week alone gives a different forecast,
    and a window shorter than HISTORY_HOURS reads as its most recent hours."""
    past, _, _ = model.forecast_values(
        "DE", ORIGIN - timedelta(hours=HISTORY_HOURS), HISTORY_HOURS, None
    )
    rng = np.random.default_rng(3)
    month = past * np.exp(0.2 * rng.standard_normal(HISTORY_HOURS))
    long, lo, hi = model.forecast_values("DE", ORIGIN, 48, month)
    week, _, _ = model.forecast_values("DE", ORIGIN, 48, month[-168:])
    assert np.isfinite(long).all()
    assert (lo <= long).all()
    assert (long <= hi).all()
    assert not np.allclose(long, week)
    assert model.explain("DE", HISTORY_HOURS)["history"]["mode"] == "long"
    params = model.params("DE")
    origin = np.array([int(ORIGIN.timestamp() // 3600)])
    short_window = predict_batch(params, month[None, -168:], origin, 48)[0]
    np.testing.assert_allclose(short_window[0], week)


def test_calendar_day_types() -> None:
    # 2024-06-07 is a Friday, 06-08 a Saturday, 06-09 a Sunday, 06-10 a Monday
    hours = np.array(
        [datetime(2024, 6, d, 12, tzinfo=UTC).timestamp() // 3600 for d in (7, 8, 9, 10)]
    )
    month, day_type, hour, _ = calendar(hours.astype(np.int64))
    assert day_type.tolist() == [0, 1, 2, 0]
    assert month.tolist() == [5] * 4
    assert hour.tolist() == [12] * 4


def _synthetic(days: int, seed: int, start: datetime) -> np.ndarray:
    """A daily cycle with weekend dips and persistent (AR(1)) weather-like swings."""
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    weekday = ((int(start.timestamp() // 3600) + hours) // 24 + 3) % 7
    cycle = 1 + 0.3 * np.sin(2 * np.pi * (hours % 24) / 24) - 0.15 * (weekday >= 5)
    swing = np.zeros(len(hours))
    for i in range(1, len(hours)):
        swing[i] = 0.97 * swing[i - 1] + 0.04 * rng.standard_normal()
    return 300 * cycle * np.exp(swing)


def test_fit_on_synthetic_zones_beats_persistence_out_of_sample() -> None:
    """The fit script's core: climatology, pooled and shrunk weights, bands, document round trip."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    first = int(start.timestamp() // 3600)
    series = {f"Z{i}": (first, _synthetic(120, seed=i, start=start)) for i in range(2)}
    fitted = fit_embedded.fit_all(series)
    info = {z: {"fit_start": "2030-01-01T00:00Z", "fit_end": "2030-04-30T23:00Z"} for z in series}
    model = EmbeddedModel.from_document(fit_embedded.to_document(fitted, info, None))
    assert model.zones() == ["Z0", "Z1"]
    later = start + timedelta(days=120)
    trace = Trace("Z0", later, _synthetic(60, seed=9, start=later), Path("z0.csv"))
    result = backtest(trace, model, horizon=24)
    assert result["fit_overlap"] is False
    assert result["mape"] < 0.8 * result["baseline"]["persistence_24h"]["mape"]
    assert 0.65 < result["coverage"] < 0.95
    plan = evaluate(trace, model, job_hours=1, slack_hours=24)
    assert plan["share_of_oracle"]["forecast"] > plan["share_of_oracle"]["persistence"]
