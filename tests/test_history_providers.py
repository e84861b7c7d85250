"""Each provider's `backfill` (past ranges) against recorded shapes on a loopback server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpfake import FakeServer, Reply, Request, fixture, provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.base import HistoryBackfill, PlanRefused
from harchos_cli.carbon.providers.electricitymaps import ElectricityMaps
from harchos_cli.carbon.providers.entsoe import Entsoe
from harchos_cli.carbon.providers.ukgrid import UkGrid
from harchos_cli.carbon.providers.watttime import WattTime
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ProviderError

HOUR = timedelta(hours=1)
NOW = datetime(2026, 5, 3, 10, 5, tzinfo=UTC)
AT = datetime(2026, 5, 3, 10, tzinfo=UTC)
DE = Region("de", "DE", "Germany", "zone", ("electricitymaps", "entsoe"))
GB = Region("gb", "GB", "Great Britain", "zone", ("ukgrid",))
LONDON = Region("london", "GB", "London", "ukgrid", ("ukgrid",), ukgrid_region=13)
NORTH = Region("caiso-north", "US-CAL-CISO", "California", "watttime", ("watttime",), "CAISO_NORTH")
ENTSOE = Path(__file__).parent / "fixtures" / "entsoe"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def config(tmp_path: Path, **settings: Any) -> Any:
    return provider_config(tmp_path, http__timeout=2.0, http__retries=0, **settings)


def cache(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "state.db")


def test_every_provider_with_past_ranges_says_so(tmp_path: Path) -> None:
    settings = config(tmp_path)
    offered = {
        cls.__name__: isinstance(cls(settings, cache(tmp_path)), HistoryBackfill)
        for cls in (ElectricityMaps, UkGrid, WattTime, Entsoe)
    }
    assert offered == dict.fromkeys(("ElectricityMaps", "UkGrid", "WattTime", "Entsoe"), True)
    assert ElectricityMaps.backfill_chunk == timedelta(days=10)
    assert UkGrid.backfill_chunk == timedelta(days=14)
    assert WattTime.backfill_chunk == timedelta(days=30)
    assert (ElectricityMaps.recent_hours, UkGrid.recent_hours, WattTime.recent_hours) == (24,) * 3
    assert Entsoe.recent_hours == 168


# --- Electricity Maps: carbon-intensity/past-range --------------------------------------------


def electricitymaps(server: FakeServer, tmp_path: Path) -> ElectricityMaps:
    settings = config(
        tmp_path, electricitymaps__base_url=f"{server.url}/v3/", electricitymaps__token="tok"
    )
    return ElectricityMaps(settings, cache(tmp_path), sleep=lambda _: None)


def test_electricitymaps_past_range_in_pieces_of_ten_days(
    server: FakeServer, tmp_path: Path
) -> None:
    def answer(request: Request) -> Reply:
        start, end = when(request.query["start"]), when(request.query["end"])
        entries = [
            {
                "zone": "DE",
                "datetime": (start + i * HOUR).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "carbonIntensity": None if i == 3 else 200 + i,
                "isEstimated": i == 5,
                "emissionFactorType": "lifecycle",
            }
            for i in range(int((end - start) / HOUR))
        ]
        return Reply(200, {"zone": "DE", "data": entries})

    server.route("/v3/carbon-intensity/past-range", answer)
    start, end = AT - timedelta(days=15), AT - 24 * HOUR
    found = electricitymaps(server, tmp_path).backfill(DE, start, end, NOW)
    asked = [(when(r.query["start"]), when(r.query["end"])) for r in server.hits()]
    assert asked == [(start, start + timedelta(days=10)), (start + timedelta(days=10), end)]
    assert {r.query["emissionFactorType"] for r in server.hits()} == {"lifecycle"}
    assert {r.headers["auth-token"] for r in server.hits()} == {"tok"}
    # Every hour of the range but the null one of each piece; estimates marked.
    assert len(found) == int((end - start) / HOUR) - 2
    assert found[0].start == start
    assert found[3].start == start + 4 * HOUR  # the null hour 3 is skipped
    assert [o.estimated for o in found[:5]] == [False, False, False, False, True]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_electricitymaps_without_past_range_is_plan_refused(
    server: FakeServer, tmp_path: Path, status: int
) -> None:
    server.route(
        "/v3/carbon-intensity/past-range",
        Reply(status, {"message": "Your plan does not include this endpoint"}),
    )
    with pytest.raises(PlanRefused) as caught:
        electricitymaps(server, tmp_path).backfill(DE, AT - 168 * HOUR, AT - 24 * HOUR, NOW)
    assert caught.value.permanent
    assert caught.value.status == status
    assert f"no past-range endpoint (HTTP {status})" in str(caught.value)
    assert len(server.hits()) == 1


def test_electricitymaps_past_range_server_error_is_not_a_refusal(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route("/v3/carbon-intensity/past-range", Reply(502, {"message": "bad gateway"}))
    with pytest.raises(ProviderError) as caught:
        electricitymaps(server, tmp_path).backfill(DE, AT - 168 * HOUR, AT - 24 * HOUR, NOW)
    assert not isinstance(caught.value, PlanRefused)


# --- UK Carbon Intensity: /intensity/{from}/{to}, /regional/intensity/{from}/{to}/regionid/{id} --


def test_ukgrid_regional_range_is_every_hour_estimated(server: FakeServer, tmp_path: Path) -> None:
    server.route(r"/regional/intensity/.*", Reply(200, fixture("ukgrid/regional_range_13.json")))
    client = UkGrid(config(tmp_path, ukgrid__base_url=server.url), cache(tmp_path))
    start, end = AT - 24 * HOUR, AT
    found = client.backfill(LONDON, start, end, NOW)
    (request,) = server.hits()
    assert request.path == "/regional/intensity/2026-05-02T10:00Z/2026-05-03T10:00Z/regionid/13"
    assert len(found) == 24
    assert all(o.estimated for o in found)
    assert all(start <= o.start < end for o in found)


def test_ukgrid_national_range_pieces_and_actuals(server: FakeServer, tmp_path: Path) -> None:
    server.route(r"/intensity/[^/]+/[^/]+", Reply(200, fixture("ukgrid/national_pt24h.json")))
    client = UkGrid(config(tmp_path, ukgrid__base_url=server.url), cache(tmp_path))
    start = AT - timedelta(days=20)
    found = client.backfill(GB, start, AT, NOW)
    assert [r.path for r in server.hits()] == [
        "/intensity/2026-04-13T10:00Z/2026-04-27T10:00Z",
        "/intensity/2026-04-27T10:00Z/2026-05-03T10:00Z",
    ]
    # The recorded day falls in the second piece: measured where `actual` is published.
    assert len(found) == 24
    assert [o.estimated for o in found] == [False] * 23 + [True]


def test_ukgrid_error_body_fails_the_backfill(server: FakeServer, tmp_path: Path) -> None:
    server.route(r"/intensity/[^/]+/[^/]+", Reply(400, fixture("ukgrid/error_400.json")))
    client = UkGrid(config(tmp_path, ukgrid__base_url=server.url), cache(tmp_path))
    with pytest.raises(ProviderError, match="valid ISO 8601 date"):
        client.backfill(GB, AT - 168 * HOUR, AT - 24 * HOUR, NOW)


# --- WattTime: /v3/historical -------------------------------------------------------------------


def watttime(server: FakeServer, tmp_path: Path) -> WattTime:
    settings = config(
        tmp_path,
        watttime__base_url=server.url,
        watttime__username="ada",
        watttime__password="hunter2",
    )
    return WattTime(settings, cache(tmp_path), sleep=lambda _: None)


def test_watttime_historical_in_pieces_of_thirty_days(server: FakeServer, tmp_path: Path) -> None:
    server.route("/login", Reply(200, fixture("watttime/login.json")))
    server.route("/v3/historical", Reply(200, fixture("watttime/historical_CAISO_NORTH.json")))
    start, end = AT - timedelta(days=40), AT
    found = watttime(server, tmp_path).backfill(NORTH, start, end, NOW)
    asked = [(when(r.query["start"]), when(r.query["end"])) for r in server.hits("/v3/historical")]
    assert asked == [(start, start + timedelta(days=30)), (start + timedelta(days=30), end)]
    assert {r.query["signal_type"] for r in server.hits("/v3/historical")} == {"co2_moer"}
    # The recorded day (5-minute points in lbs/MWh) lands in the second piece, as hourly g/kWh.
    assert len(found) == 24
    assert found[0].start == AT - 24 * HOUR
    assert found[0].intensity == pytest.approx(
        sum(p["value"] for p in fixture("watttime/historical_CAISO_NORTH.json")["data"][:12])
        / 12
        * 0.453592
    )


def test_watttime_historical_outside_the_subscription_is_plan_refused(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route("/login", Reply(200, fixture("watttime/login.json")))
    server.route("/v3/historical", Reply(403, fixture("watttime/error_403_region.json")))
    with pytest.raises(PlanRefused, match="no historical data for CAISO_NORTH"):
        watttime(server, tmp_path).backfill(NORTH, AT - 168 * HOUR, AT - 24 * HOUR, NOW)
    # One more try after a fresh login, as for every data call; then it is given up.
    assert len(server.hits("/v3/historical")) == 2
    assert len(server.hits("/login")) == 2


# --- ENTSO-E: A75 beyond the week every fetch gets ----------------------------------------------


def entsoe(server: FakeServer, tmp_path: Path) -> Entsoe:
    settings = config(tmp_path, entsoe__base_url=server.url, entsoe__token="tkn")
    return Entsoe(settings, cache(tmp_path), sleep=lambda _: None)


def test_entsoe_backfill_keeps_the_hours_asked_for(server: FakeServer, tmp_path: Path) -> None:
    server.route("/api", Reply(200, (ENTSOE / "A75_DE_week_PT60M.xml").read_bytes()))
    start, end = AT - 168 * HOUR, AT - 100 * HOUR
    found = entsoe(server, tmp_path).backfill(DE, start, end, NOW)
    (request,) = server.hits()
    assert (request.query["documentType"], request.query["periodStart"]) == ("A75", "202604261000")
    assert request.query["periodEnd"] == "202604290600"
    assert found
    assert all(start <= o.start < end for o in found)
    assert len(found) <= 68


def test_entsoe_no_matching_data_is_an_empty_backfill(server: FakeServer, tmp_path: Path) -> None:
    server.route("/api", Reply(200, (ENTSOE / "ack_999_A75_DE.xml").read_bytes()))
    assert entsoe(server, tmp_path).backfill(DE, AT - 400 * HOUR, AT - 168 * HOUR, NOW) == []
