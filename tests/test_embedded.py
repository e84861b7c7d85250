"""The packaged embedded model: coverage, shapes, bands, conditioning and no look-ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from harchos_cli.carbon.embedded import HISTORY_HOURS, EmbeddedModel
from harchos_cli.carbon.types import Observation
from harchos_cli.errors import ExitCode, NoCarbonDataError

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
    assert 0 < info["backtest_mape_24h"] < 1


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
    longer = np.concatenate([np.full(500, 1.0), history])
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
