"""Electricity Maps client against recorded responses on a loopback server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpfake import FakeServer, Reply, fixture, provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.electricitymaps import ElectricityMaps
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ProviderError, UsageError

NOW = datetime(2026, 5, 3, 10, 5, tzinfo=UTC)
DE = Region("de", "DE", "Germany", "zone", ("electricitymaps",))
HISTORY = "/v3/carbon-intensity/history"
FORECAST = "/v3/carbon-intensity/forecast"


def provider(server: FakeServer, tmp_path: Path, **settings: Any) -> ElectricityMaps:
    values: dict[str, Any] = {
        "electricitymaps__base_url": f"{server.url}/v3/",
        "electricitymaps__token": "secret-token",
        "http__timeout": 2.0,
    }
    values.update(settings)
    config = provider_config(tmp_path, **values)
    return ElectricityMaps(config, ResponseCache(tmp_path / "state.db"), sleep=lambda _: None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_history_and_forecast(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    data = provider(server, tmp_path).fetch(DE, NOW, 12)

    recorded = fixture("electricitymaps/forecast_DE.json")["forecast"][:12]
    assert data.forecast is not None
    assert [(o.start, o.intensity) for o in data.forecast] == [
        (at(e["datetime"]), float(e["carbonIntensity"])) for e in recorded
    ]
    assert all(o.end - o.start == timedelta(hours=1) for o in data.forecast)
    assert data.warnings == []
    assert data.source.provider == "electricitymaps"
    assert data.source.signal == "average"
    assert data.source.method == "lifecycle"
    assert data.source.kind == "forecast"
    assert data.source.fetched_at == NOW
    assert "carbon-intensity/forecast" in data.source.detail

    (history_request,) = server.hits(HISTORY)
    (forecast_request,) = server.hits(FORECAST)
    assert history_request.headers["auth-token"] == "secret-token"
    assert forecast_request.headers["auth-token"] == "secret-token"
    assert history_request.query == {"zone": "DE", "emissionFactorType": "lifecycle"}
    assert forecast_request.query["horizonHours"] == "24"


def test_history_skips_nulls_and_marks_estimates(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    data = provider(server, tmp_path).fetch(DE, NOW, 6)

    entries = fixture("electricitymaps/history_DE.json")["history"]
    kept = [e for e in entries if e["carbonIntensity"] is not None]
    assert len(kept) == len(entries) - 2
    assert [(o.start, o.intensity, o.estimated) for o in data.history] == [
        (at(e["datetime"]), float(e["carbonIntensity"]), e["isEstimated"]) for e in kept
    ]
    assert sum(o.estimated for o in data.history) == 2


def test_forecast_durations_come_from_spacing(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE_30min.json")))
    data = provider(server, tmp_path).fetch(DE, NOW, 6)
    assert data.forecast is not None
    # Half-hour points 200, 220, 240, ... averaged in pairs.
    assert [o.intensity for o in data.forecast] == [210.0, 250.0, 290.0, 330.0, 370.0, 410.0]
    assert server.hits(FORECAST)[0].query["horizonHours"] == "6"


def test_forecast_403_falls_back_to_history(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(403, fixture("electricitymaps/error_403_forecast.json")))
    data = provider(server, tmp_path).fetch(DE, NOW, 24)
    assert data.forecast is None
    assert len(data.history) == 22
    assert data.warnings == [
        "electricitymaps: your plan has no forecast endpoint (HTTP 403); "
        "using the embedded model on Electricity Maps history"
    ]
    assert data.source.kind == "estimated"
    assert "2 of 22 h estimated" in data.source.detail
    assert len(server.hits(FORECAST)) == 1


def test_refused_forecast_is_not_asked_again(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(401, fixture("electricitymaps/error_401.json")))
    client = provider(server, tmp_path, cache__enabled=False)
    first = client.fetch(DE, NOW, 24)
    second = client.fetch(DE, NOW, 24)
    assert len(server.hits(FORECAST)) == 1
    assert len(server.hits(HISTORY)) == 2
    assert first.warnings == second.warnings
    assert "(HTTP 401)" in second.warnings[0]
    assert second.forecast is None


def test_forecast_server_error_also_degrades(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(502, "bad gateway"))
    data = provider(server, tmp_path, http__retries=1).fetch(DE, NOW, 24)
    assert data.forecast is None
    assert len(data.warnings) == 1
    assert "HTTP 502" in data.warnings[0]
    assert len(server.hits(FORECAST)) == 2


def test_bad_token_is_one_permanent_error(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(401, fixture("electricitymaps/error_401.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    assert caught.value.permanent
    assert caught.value.provider == "electricitymaps"
    assert "token was rejected (HTTP 401)" in str(caught.value)
    assert "ELECTRICITYMAPS_API_TOKEN" in str(caught.value)
    assert "secret-token" not in str(caught.value)
    assert server.hits(FORECAST) == []
    assert len(server.hits(HISTORY)) == 1


def test_no_token_is_not_configured_and_makes_no_request(
    server: FakeServer, tmp_path: Path
) -> None:
    client = provider(server, tmp_path, electricitymaps__token=None)
    assert not client.configured()
    with pytest.raises(ProviderError) as caught:
        client.fetch(DE, NOW, 24)
    assert caught.value.permanent
    assert server.hits() == []


def test_direct_emission_factor(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    data = provider(server, tmp_path, electricitymaps__emission_factor="direct").fetch(DE, NOW, 6)
    assert data.source.method == "direct"
    assert {r.query["emissionFactorType"] for r in server.hits()} == {"direct"}


def test_unknown_emission_factor_is_usage_error(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="emission_factor"):
        provider(server, tmp_path, electricitymaps__emission_factor="marginal")


def test_cache_hit_makes_no_second_request(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    client = provider(server, tmp_path)
    first = client.fetch(DE, NOW, 6)
    second = client.fetch(DE, NOW + timedelta(minutes=10), 6)
    assert len(server.hits()) == 2
    assert second.forecast == first.forecast
    assert second.history == first.history
    assert "(cached)" in second.source.detail


def test_cache_disabled_requests_again(server: FakeServer, tmp_path: Path) -> None:
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    client = provider(server, tmp_path, cache__enabled=False)
    client.fetch(DE, NOW, 6)
    client.fetch(DE, NOW, 6)
    assert len(server.hits(HISTORY)) == 2
    assert len(server.hits(FORECAST)) == 2


def test_covers_every_zone(server: FakeServer, tmp_path: Path) -> None:
    client = provider(server, tmp_path)
    gb = Region("london", "GB", "Great Britain", "ukgrid", ("ukgrid",), ukgrid_region=13)
    assert client.covers(DE)
    assert client.covers(gb)
