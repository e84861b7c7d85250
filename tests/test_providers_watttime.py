"""WattTime v3 client against recorded responses on a loopback server."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpfake import FakeServer, Reply, Request, fixture, provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.watttime import WattTime, unit_factor
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ProviderError, UsageError

NOW = datetime(2026, 5, 3, 10, 2, tzinfo=UTC)
NORTH = Region("caiso-north", "US-CAL-CISO", "California", "watttime", ("watttime",), "CAISO_NORTH")
PJM = Region("us-east", "US-MIDA-PJM", "PJM", "alias", ("watttime",), "PJM_DC")
LB = 0.453592


class Tokens:
    """Login replies with a new token each time."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def __call__(self, request: Request) -> Reply:
        expected = "Basic " + base64.b64encode(b"ada:hunter2").decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, {"error": "invalid credentials"})
        token = f"token-{len(self.issued) + 1}"
        self.issued.append(token)
        return Reply(200, {"token": token})


def routes(server: FakeServer, forecast: Any = None, historical: Any = None) -> Tokens:
    tokens = Tokens()
    server.route("/login", tokens)
    server.route(
        "/v3/forecast", forecast or Reply(200, fixture("watttime/forecast_CAISO_NORTH.json"))
    )
    server.route(
        "/v3/historical", historical or Reply(200, fixture("watttime/historical_CAISO_NORTH.json"))
    )
    return tokens


def provider(server: FakeServer, tmp_path: Path, **settings: Any) -> WattTime:
    values: dict[str, Any] = {
        "watttime__base_url": server.url,
        "watttime__username": "ada",
        "watttime__password": "hunter2",
        "http__timeout": 2.0,
    }
    clock = settings.pop("clock", None)
    values.update(settings)
    config = provider_config(tmp_path, **values)
    cache = ResponseCache(tmp_path / "state.db")
    if clock is not None:
        return WattTime(config, cache, sleep=lambda _: None, clock=clock)
    return WattTime(config, cache, sleep=lambda _: None)


def test_login_bearer_and_native_points(server: FakeServer, tmp_path: Path) -> None:
    routes(server)
    data = provider(server, tmp_path).fetch(NORTH, NOW, 24)

    assert data.forecast is not None
    start = datetime(2026, 5, 3, 10, tzinfo=UTC)
    # The forecast keeps WattTime's 5-minute points, converted from lbs/MWh: 10:00 to 13:10.
    five = timedelta(minutes=5)
    assert [o.start for o in data.forecast] == [start + i * five for i in range(39)]
    assert all(o.end - o.start == five for o in data.forecast)
    assert round(data.forecast[0].intensity, 2) == 187.11
    assert data.forecast[12].intensity == pytest.approx(400 * LB)
    assert data.forecast[25].intensity == pytest.approx(500 * LB)
    assert data.source.provider == "watttime"
    assert data.source.signal == "marginal"
    assert data.source.method == "co2_moer"
    assert data.source.kind == "forecast"
    assert data.source.fetched_at == NOW

    (forecast_request,) = server.hits("/v3/forecast")
    assert forecast_request.headers["authorization"] == "Bearer token-1"
    assert forecast_request.query == {
        "region": "CAISO_NORTH",
        "signal_type": "co2_moer",
        "horizon_hours": "25",
    }
    assert len(server.hits("/login")) == 1


def test_history_is_hourly_and_converted(server: FakeServer, tmp_path: Path) -> None:
    routes(server)
    data = provider(server, tmp_path).fetch(NORTH, NOW, 6)
    points = fixture("watttime/historical_CAISO_NORTH.json")["data"]
    expected = [sum(p["value"] for p in points[i : i + 12]) / 12 * LB for i in range(0, 288, 12)]
    assert [o.intensity for o in data.history] == pytest.approx(expected)
    assert data.history[0].start == datetime(2026, 5, 2, 10, tzinfo=UTC)
    (request,) = server.hits("/v3/historical")
    assert request.query["start"] == "2026-05-02T10:00:00Z"
    assert request.query["end"] == "2026-05-03T10:02:00Z"
    assert request.headers["authorization"] == "Bearer token-1"


def test_relogin_once_on_401(server: FakeServer, tmp_path: Path) -> None:
    good = Reply(200, fixture("watttime/forecast_CAISO_NORTH.json"))
    tokens = routes(server, forecast=None)
    server.route("/v3/forecast", Reply(401, {"error": "token expired"}), good)
    data = provider(server, tmp_path).fetch(NORTH, NOW, 6)
    assert data.forecast
    assert tokens.issued == ["token-1", "token-2"]
    auths = [r.headers["authorization"] for r in server.hits("/v3/forecast")]
    assert auths == ["Bearer token-1", "Bearer token-2"]


def test_token_reused_until_old(server: FakeServer, tmp_path: Path) -> None:
    tokens = routes(server)
    now = [1000.0]
    client = provider(server, tmp_path, cache__enabled=False, clock=lambda: now[0])
    client.fetch(NORTH, NOW, 6)
    client.fetch(NORTH, NOW, 6)
    assert tokens.issued == ["token-1"]
    now[0] += 26 * 60
    client.fetch(NORTH, NOW, 6)
    assert tokens.issued == ["token-1", "token-2"]


def test_region_outside_subscription(server: FakeServer, tmp_path: Path) -> None:
    tokens = routes(server, forecast=Reply(403, fixture("watttime/error_403_region.json")))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(PJM, NOW, 24)
    assert caught.value.permanent
    assert "PJM_DC is outside your WattTime subscription" in str(caught.value)
    assert "only CAISO_NORTH" in str(caught.value)
    assert len(tokens.issued) == 2
    assert server.hits("/v3/historical") == []


def test_wrong_password(server: FakeServer, tmp_path: Path) -> None:
    routes(server)
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path, watttime__password="Xq9-not-it").fetch(NORTH, NOW, 24)
    assert caught.value.permanent
    assert "login refused" in str(caught.value)
    assert "Xq9-not-it" not in str(caught.value)
    assert server.hits("/v3/forecast") == []


def test_units_already_grams_are_not_converted(server: FakeServer, tmp_path: Path) -> None:
    body = copy.deepcopy(fixture("watttime/forecast_CAISO_NORTH.json"))
    body["meta"]["units"] = "g_co2_per_kwh"
    routes(server, forecast=Reply(200, body))
    data = provider(server, tmp_path).fetch(NORTH, NOW, 6)
    assert data.forecast is not None
    assert data.forecast[0].intensity == pytest.approx(412.5)


def test_unknown_units_are_an_error(server: FakeServer, tmp_path: Path) -> None:
    body = copy.deepcopy(fixture("watttime/forecast_CAISO_NORTH.json"))
    body["meta"]["units"] = "percentile"
    routes(server, forecast=Reply(200, body))
    with pytest.raises(ProviderError, match="unknown units 'percentile'"):
        provider(server, tmp_path).fetch(NORTH, NOW, 6)


def test_unit_factor_spellings() -> None:
    assert unit_factor("lbs_co2_per_mwh") == LB
    assert unit_factor("kg_co2_per_mwh") == 1.0
    with pytest.raises(ProviderError):
        unit_factor(None)


def test_average_signal(server: FakeServer, tmp_path: Path) -> None:
    routes(server)
    data = provider(server, tmp_path, watttime__signal="co2_aoer").fetch(NORTH, NOW, 6)
    assert data.source.signal == "average"
    assert server.hits("/v3/forecast")[0].query["signal_type"] == "co2_aoer"


def test_unknown_signal_is_usage_error(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"watttime\.signal"):
        provider(server, tmp_path, watttime__signal="health_damage")


def test_history_failure_is_a_warning(server: FakeServer, tmp_path: Path) -> None:
    routes(server, historical=Reply(500, {"error": "oops"}))
    data = provider(server, tmp_path, http__retries=0).fetch(NORTH, NOW, 6)
    assert data.forecast
    assert data.history == []
    assert len(data.warnings) == 1
    assert data.warnings[0].startswith("watttime: HTTP 500")


def test_cache_hit_needs_no_login(server: FakeServer, tmp_path: Path) -> None:
    routes(server)
    provider(server, tmp_path).fetch(NORTH, NOW, 6)
    again = provider(server, tmp_path).fetch(NORTH, NOW + timedelta(minutes=5), 6)
    assert len(server.hits()) == 3  # login, forecast, historical: all from the first fetch
    assert "(cached)" in again.source.detail
    assert again.forecast


def test_covers_and_configured(server: FakeServer, tmp_path: Path) -> None:
    client = provider(server, tmp_path)
    assert client.covers(NORTH)
    assert not client.covers(Region("de", "DE", "Germany", "zone", ("electricitymaps",)))
    assert client.configured()
    assert not provider(server, tmp_path, watttime__password=None).configured()
