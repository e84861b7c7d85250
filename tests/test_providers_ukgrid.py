"""UK Carbon Intensity API client against recorded responses on a loopback server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpfake import FakeServer, Reply, fixture, provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.ukgrid import UkGrid, api_time
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ProviderError

NOW = datetime(2026, 5, 3, 10, 20, tzinfo=UTC)
HOUR10 = datetime(2026, 5, 3, 10, tzinfo=UTC)
GB = Region("gb", "GB", "Great Britain", "zone", ("ukgrid", "electricitymaps"))
LONDON = Region("london", "GB", "London", "ukgrid", ("ukgrid",), ukgrid_region=13)
NATIONAL_FW = "/intensity/2026-05-03T10:00Z/fw48h"
NATIONAL_PT = "/intensity/2026-05-03T10:00Z/pt24h"
LONDON_FW = "/regional/intensity/2026-05-03T10:00Z/fw48h/regionid/13"
LONDON_PT = "/regional/intensity/2026-05-02T10:00Z/2026-05-03T10:00Z/regionid/13"


def provider(server: FakeServer, tmp_path: Path, **settings: Any) -> UkGrid:
    values: dict[str, Any] = {"ukgrid__base_url": server.url, "http__timeout": 2.0}
    values.update(settings)
    config = provider_config(tmp_path, **values)
    return UkGrid(config, ResponseCache(tmp_path / "state.db"), sleep=lambda _: None)


def half_hour_pairs(entries: list[dict[str, Any]], field: str) -> list[float]:
    values = [e["intensity"][field] for e in entries]
    return [(a + b) / 2 for a, b in zip(values[::2], values[1::2], strict=True)]


def test_national_forecast_and_history(server: FakeServer, tmp_path: Path) -> None:
    server.route(NATIONAL_FW, Reply(200, fixture("ukgrid/national_fw48h.json")))
    server.route(NATIONAL_PT, Reply(200, fixture("ukgrid/national_pt24h.json")))
    data = provider(server, tmp_path).fetch(GB, NOW, 6)

    # The recorded answer starts with the 09:30 slot, which is before the current hour.
    slots = fixture("ukgrid/national_fw48h.json")["data"][1:]
    assert data.forecast is not None
    # The forecast keeps the API's half-hour slots; history is hourly.
    half_hour = timedelta(minutes=30)
    assert [o.start for o in data.forecast] == [HOUR10 + h * half_hour for h in range(12)]
    assert [o.intensity for o in data.forecast] == [s["intensity"]["forecast"] for s in slots[:12]]
    assert data.source.provider == "ukgrid"
    assert data.source.signal == "average"
    assert data.source.method == "NESO forecast"
    assert data.source.kind == "forecast"
    assert data.source.fetched_at == NOW
    assert "national" in data.source.detail

    past = fixture("ukgrid/national_pt24h.json")["data"]
    assert len(data.history) == 24
    assert data.history[0].start == HOUR10 - timedelta(hours=24)
    # Measured values where `actual` is published; the last hour has only forecasts.
    assert [o.intensity for o in data.history[:23]] == half_hour_pairs(past[:46], "actual")
    assert (
        data.history[23].intensity
        == (past[46]["intensity"]["forecast"] + past[47]["intensity"]["forecast"]) / 2
    )
    assert [o.estimated for o in data.history] == [False] * 23 + [True]
    assert data.warnings == []


@pytest.mark.parametrize("form", ["object", "list"])
def test_regional_forecast_in_both_forms(server: FakeServer, tmp_path: Path, form: str) -> None:
    server.route(LONDON_FW, Reply(200, fixture(f"ukgrid/regional_fw48h_13_{form}.json")))
    server.route(LONDON_PT, Reply(200, fixture("ukgrid/regional_range_13.json")))
    data = provider(server, tmp_path).fetch(LONDON, NOW, 6)
    slots = fixture("ukgrid/regional_fw48h_13_object.json")["data"]["data"]
    assert data.forecast is not None
    assert [o.intensity for o in data.forecast] == [s["intensity"]["forecast"] for s in slots[:12]]
    assert "region 13 (London)" in data.source.detail
    # Regional history comes from forecast values only: every hour is estimated.
    assert len(data.history) == 24
    assert all(o.estimated for o in data.history)
    assert [o.intensity for o in data.history[:4]] == [125.0, 145.0, 125.0, 145.0]


def test_list_form_picks_the_requested_region(server: FakeServer, tmp_path: Path) -> None:
    body = fixture("ukgrid/regional_fw48h_13_list.json")
    other = {
        "regionid": 1,
        "shortname": "North Scotland",
        "data": [
            {**slot, "intensity": {"forecast": 5, "index": "very low"}}
            for slot in body["data"][0]["data"]
        ],
    }
    body["data"].insert(0, other)
    server.route(LONDON_FW, Reply(200, body))
    server.route(LONDON_PT, Reply(200, fixture("ukgrid/regional_range_13.json")))
    data = provider(server, tmp_path).fetch(LONDON, NOW, 2)
    assert data.forecast is not None
    assert [o.intensity for o in data.forecast] == [150, 145, 140, 135]


def test_error_body_becomes_provider_error(server: FakeServer, tmp_path: Path) -> None:
    server.route(NATIONAL_FW, Reply(400, fixture("ukgrid/error_400.json")))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(GB, NOW, 6)
    assert str(caught.value) == (
        "ukgrid: Please enter a valid ISO 8601 date in the format YYYY-MM-DDThh:mmZ"
    )
    assert caught.value.permanent


def test_error_body_with_http_200(server: FakeServer, tmp_path: Path) -> None:
    server.route(NATIONAL_FW, Reply(200, fixture("ukgrid/error_400.json")))
    client = provider(server, tmp_path)
    for _ in range(2):
        with pytest.raises(ProviderError, match="valid ISO 8601 date"):
            client.fetch(GB, NOW, 6)
    # An error is never cached: the second fetch asked again.
    assert len(server.hits(NATIONAL_FW)) == 2


def test_history_failure_is_a_warning(server: FakeServer, tmp_path: Path) -> None:
    server.route(NATIONAL_FW, Reply(200, fixture("ukgrid/national_fw48h.json")))
    server.route(NATIONAL_PT, Reply(503, {"error": {"code": "503", "message": "maintenance"}}))
    data = provider(server, tmp_path, http__retries=1).fetch(GB, NOW, 6)
    assert data.forecast
    assert data.history == []
    assert data.warnings == ["ukgrid: maintenance; continuing without UK grid history"]
    assert len(server.hits(NATIONAL_PT)) == 2


def test_history_slot_follows_now(server: FakeServer, tmp_path: Path) -> None:
    server.route(r"/intensity/.*/fw48h", Reply(200, fixture("ukgrid/national_fw48h.json")))
    server.route(r"/intensity/.*/pt24h", Reply(200, fixture("ukgrid/national_pt24h.json")))
    provider(server, tmp_path).fetch(GB, HOUR10 + timedelta(minutes=40), 6)
    assert [r.path for r in server.hits()] == [
        "/intensity/2026-05-03T10:00Z/fw48h",
        "/intensity/2026-05-03T10:30Z/pt24h",
    ]


def test_cache_hit_and_disabled(server: FakeServer, tmp_path: Path) -> None:
    server.route(NATIONAL_FW, Reply(200, fixture("ukgrid/national_fw48h.json")))
    server.route(NATIONAL_PT, Reply(200, fixture("ukgrid/national_pt24h.json")))
    cached = provider(server, tmp_path)
    cached.fetch(GB, NOW, 6)
    again = cached.fetch(GB, NOW + timedelta(minutes=5), 6)
    assert len(server.hits()) == 2
    assert "(cached)" in again.source.detail
    uncached = provider(server, tmp_path, cache__enabled=False)
    uncached.fetch(GB, NOW, 6)
    assert len(server.hits()) == 4


def test_covers_and_configured(server: FakeServer, tmp_path: Path) -> None:
    client = provider(server, tmp_path)
    assert client.configured()
    assert client.covers(GB)
    assert client.covers(LONDON)
    assert not client.covers(Region("de", "DE", "Germany", "zone", ("electricitymaps",)))
    with pytest.raises(ProviderError, match="not in Great Britain"):
        client.fetch(Region("fr", "FR", "France", "zone", ()), NOW, 6)


def test_api_time_format() -> None:
    assert api_time(datetime(2026, 1, 2, 3, 4, 59, tzinfo=UTC)) == "2026-01-02T03:04Z"
