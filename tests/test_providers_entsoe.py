"""ENTSO-E Transparency Platform client against recorded XML on a loopback server, and
`harchos forecast` with it."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from clirunner import harchos
from httpfake import FakeServer, Reply, Request, provider_config

from harchos_cli.carbon import regions
from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.entsoe import (
    DIRECT,
    LIFECYCLE,
    PSR_TYPES,
    REASON_MAX,
    Entsoe,
    EntsoeData,
    hourly_mix,
    parse_document,
    parse_resolution,
)
from harchos_cli.carbon.providers.http import ERROR_BODY_LIMIT
from harchos_cli.carbon.providers.live import LIVE_PROVIDERS, make_live_provider, worth_trying
from harchos_cli.carbon.service import AUTO_ORDER
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ProviderError
from harchos_cli.secrets import MASK

FIXTURES = Path(__file__).parent / "fixtures" / "entsoe"
TOKEN = "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
DE_EIC = "10Y1001A1001A83F"
NOW = datetime(2026, 5, 3, 10, 5, tzinfo=UTC)
AT = "2026-05-03T10:00:00Z"
DE = Region("de", "DE", "Germany", "zone", ("embedded", "electricitymaps", "entsoe"))
API = "/api"
GL = "{urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0}"


def recorded(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def by_document(a75: Reply, a69: Reply | None = None) -> Callable[[Request], Reply]:
    """Answer A75 queries with `a75`, A69 ones with `a69` (the recorded forecast by default)."""
    forecast = a69 or Reply(200, recorded("A69_DE.xml"))
    return lambda request: a75 if request.query.get("documentType") == "A75" else forecast


def provider(server: FakeServer, tmp_path: Path, **settings: Any) -> Entsoe:
    values: dict[str, Any] = {
        "entsoe__base_url": server.url,
        "entsoe__token": TOKEN,
        "http__timeout": 2.0,
    }
    values.update(settings)
    config = provider_config(tmp_path, **values)
    return Entsoe(config, ResponseCache(tmp_path / "state.db"), sleep=lambda _: None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENTSOE_SECURITY_TOKEN", raising=False)
    monkeypatch.delenv("HARCHOS_ENTSOE_URL", raising=False)


# --- intensity from the mix -----------------------------------------------------------------------


def test_intensity_of_a_recorded_mix_matches_a_hand_computation(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, by_document(Reply(200, recorded("A75_DE_PT15M.xml"))))
    data = provider(server, tmp_path).fetch(DE, NOW, 24)

    # 08:00-09:00 UTC, the means of the four quarter hours in A75_DE_PT15M.xml, in MW:
    # biomass 4300, lignite 9400, gas 7100, hard coal 2200, pumped storage (generating) 300,
    # run-of-river 1500, solar 19000, wind offshore 3000, wind onshore 12750, other 1300.
    # Lifecycle factors (Electricity Maps, IPCC 2014): biomass 230, coal 820, gas 490,
    # storage discharge 391.33, hydro 24, solar 45, wind 11, unknown 700.
    emitted = (
        4300 * 230
        + 9400 * 820
        + 7100 * 490
        + 2200 * 820
        + 300 * 391.33
        + 1500 * 24
        + 19000 * 45
        + 3000 * 11
        + 12750 * 11
        + 1300 * 700
    )
    generated = 4300 + 9400 + 7100 + 2200 + 300 + 1500 + 19000 + 3000 + 12750 + 1300
    # Direct factors: coal 760, gas 370, storage discharge 324.69, unknown 575, the rest 0.
    direct = (9400 * 760 + 7100 * 370 + 2200 * 760 + 300 * 324.69 + 1300 * 575) / generated

    hour = at("2026-05-03T08:00:00Z")
    lifecycle = {o.start: o.intensity for o in data.history}
    assert lifecycle[hour] == pytest.approx(emitted / generated, rel=1e-12)
    assert lifecycle[hour] == pytest.approx(264.119, abs=1e-3)
    assert {o.start: o.intensity for o in data.direct}[hour] == pytest.approx(direct, rel=1e-12)
    assert data.forecast is None
    assert (data.source.provider, data.source.signal, data.source.method) == (
        "entsoe",
        "average",
        "lifecycle",
    )
    assert data.source.kind == "measured"


def test_quarter_hours_become_hourly_means_and_pumping_is_not_generation(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, by_document(Reply(200, recorded("A75_DE_PT15M.xml"))))
    data = provider(server, tmp_path).fetch(DE, NOW, 24)
    assert [(h.start, h.end - h.start) for h in data.mix] == [
        (at(f"2026-05-03T0{h}:00:00Z"), timedelta(hours=1)) for h in (7, 8, 9)
    ]
    assert [o.start for o in data.history] == [h.start for h in data.mix]
    eight = data.mix[1].mw
    assert eight == {
        "B01": 4300.0,
        "B02": 9400.0,  # (9200 + 9200 + 9600 + 9600) / 4
        "B04": 7100.0,  # (6800 + 7000 + 7200 + 7400) / 4
        "B05": 2200.0,
        "B10": 300.0,  # (0 + 0 + 400 + 800) / 4; the pumping series (outBiddingZone) is left out
        "B11": 1500.0,
        "B16": 19000.0,
        "B18": 3000.0,
        "B19": 12750.0,
        "B20": 1300.0,  # curve type A03: 1200 until position 7, then 1400
    }
    assert [h.mw["B20"] for h in data.mix] == [1200.0, 1300.0, 1400.0]
    assert [h.mw["B10"] for h in data.mix] == [0.0, 300.0, 1200.0]


def test_hourly_values_are_resolution_independent() -> None:
    # The same constant mix at PT15M and PT60M gives the same hours and intensity.
    def document(resolution: str, points: int) -> bytes:
        series = "".join(
            f"<TimeSeries><inBiddingZone_Domain.mRID codingScheme='A01'>{DE_EIC}"
            f"</inBiddingZone_Domain.mRID><quantity_Measure_Unit.name>MAW"
            f"</quantity_Measure_Unit.name><curveType>A01</curveType><MktPSRType><psrType>{psr}"
            f"</psrType></MktPSRType><Period><timeInterval><start>2026-05-03T06:00Z</start>"
            f"<end>2026-05-03T08:00Z</end></timeInterval><resolution>{resolution}</resolution>"
            + "".join(
                f"<Point><position>{p}</position><quantity>{mw}</quantity></Point>"
                for p in range(1, points + 1)
            )
            + "</Period></TimeSeries>"
            for psr, mw in (("B04", 1000), ("B14", 3000))
        )
        return (
            f'<GL_MarketDocument xmlns="{GL[1:-1]}"><type>A75</type>{series}</GL_MarketDocument>'
        ).encode()

    quarter, _ = hourly_mix(parse_document(document("PT15M", 8)))
    hourly, _ = hourly_mix(parse_document(document("PT60M", 2)))
    assert [(h.start, h.mw) for h in quarter] == [(h.start, h.mw) for h in hourly]
    assert len(hourly) == 2
    assert hourly[0].mw == {"B04": 1000.0, "B14": 3000.0}


def test_factor_table_covers_every_production_type() -> None:
    modes = {mode for _, mode in PSR_TYPES.values()}
    assert modes == set(LIFECYCLE) == set(DIRECT)
    assert set(PSR_TYPES) == {f"B{n:02d}" for n in range(1, 21)} | {"B25"}
    # Direct factors count combustion only: never above the lifecycle ones.
    assert all(DIRECT[m] <= LIFECYCLE[m] for m in modes)


@pytest.mark.parametrize(
    ("text", "minutes"), [("PT15M", 15), ("PT30M", 30), ("PT60M", 60), ("PT1H", 60), ("P1D", 1440)]
)
def test_resolutions(text: str, minutes: int) -> None:
    assert parse_resolution(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "15M", "PT", "PT0M", "P1Y2", None])
def test_bad_resolution_is_a_provider_error(text: str | None) -> None:
    with pytest.raises(ProviderError, match="resolution"):
        parse_resolution(text)


# --- a week of history and the wind/solar forecast ------------------------------------------------


def test_a_week_of_history_with_gaps_and_late_types_left_out(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, by_document(Reply(200, recorded("A75_DE_week_PT60M.xml"))))
    data = provider(server, tmp_path).fetch(DE, NOW, 24)

    first, last = at("2026-04-26T10:00:00Z"), at("2026-05-03T09:00:00Z")
    gap = first + timedelta(hours=49)  # position 50: no biomass value recorded
    # "Other" is published an hour late: its last hour is 08:00, so 09:00 is incomplete.
    expected = [first + timedelta(hours=h) for h in range(168)]
    expected = [h for h in expected if h not in (gap, last)]
    assert [o.start for o in data.history] == expected
    assert len(data.history) == len(data.direct) == len(data.mix) == 166
    assert "166 h (2 h with an incomplete mix left out)" in data.source.detail
    assert "imports ignored" in data.source.detail
    assert data.warnings == [
        "entsoe: DE's own generation only (production-based): imports and exports are ignored"
    ]
    assert all(
        o.intensity > d.intensity > 0 for o, d in zip(data.history, data.direct, strict=True)
    )

    (history_request,) = server.hits(API)[:1]
    assert history_request.query == {
        "documentType": "A75",
        "processType": "A16",
        "in_Domain": DE_EIC,
        "periodStart": "202604261000",
        "periodEnd": "202605031000",
        "securityToken": TOKEN,
    }


def test_the_day_ahead_wind_and_solar_forecast_is_kept_beside_the_history(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, by_document(Reply(200, recorded("A75_DE_PT15M.xml"))))
    data = provider(server, tmp_path).fetch(DE, NOW, 12)
    assert isinstance(data, EntsoeData)
    assert data.eic == DE_EIC

    forecast_request = next(r for r in server.hits(API) if r.query["documentType"] == "A69")
    assert forecast_request.query == {
        "documentType": "A69",
        "processType": "A01",
        "in_Domain": DE_EIC,
        "periodStart": "202605031000",
        "periodEnd": "202605041000",  # at least a day ahead
        "securityToken": TOKEN,
    }
    # The recorded document runs to 2026-05-04T22:00Z; kept from the current hour on.
    hours = data.wind_solar_forecast
    assert hours[0].start == at("2026-05-03T10:00:00Z")
    assert hours[-1].start == at("2026-05-04T21:00:00Z")
    assert len(hours) == 36
    assert all(set(h.mw) == {"B16", "B18", "B19"} for h in hours)
    assert data.wind_solar_note == ""

    # Solar at 12:00 UTC: the mean of quarters 57-60 of the first B16 series (day from 22:00).
    root = ElementTree.fromstring(recorded("A69_DE.xml"))
    solar = next(
        ts
        for ts in root.iter(f"{GL}TimeSeries")
        if ts.findtext(f"{GL}MktPSRType/{GL}psrType") == "B16"
    )
    quarters = {
        int(p.findtext(f"{GL}position") or 0): float(p.findtext(f"{GL}quantity") or "nan")
        for p in solar.iter(f"{GL}Point")
    }
    noon = next(h for h in hours if h.start == at("2026-05-03T12:00:00Z"))
    assert noon.mw["B16"] == pytest.approx(sum(quarters[q] for q in range(57, 61)) / 4)
    assert noon.mw["B16"] > 0


def test_a_missing_wind_solar_forecast_only_leaves_it_empty(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(
        API,
        by_document(
            Reply(200, recorded("A75_DE_PT15M.xml")), Reply(200, recorded("ack_999_A75_DE.xml"))
        ),
    )
    data = provider(server, tmp_path).fetch(DE, NOW, 24)
    assert len(data.history) == 3
    assert data.wind_solar_forecast == []
    assert "No matching data found" in data.wind_solar_note
    assert "wind/solar forecast: 0 h" in data.source.detail
    assert data.warnings == [w for w in data.warnings if "imports" in w]


# --- errors ---------------------------------------------------------------------------------------


def test_no_matching_data_is_a_clear_error_naming_the_zone(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, by_document(Reply(200, recorded("ack_999_A75_DE.xml"))))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    message = str(caught.value)
    assert message.startswith("entsoe: no data for zone DE (10Y1001A1001A83F)")
    assert "No matching data found" in message
    assert "\n" not in message
    assert not caught.value.permanent
    # The acknowledgement is not cached: the next call asks again.
    server.route(API, by_document(Reply(200, recorded("A75_DE_PT15M.xml"))))
    data = provider(server, tmp_path).fetch(DE, NOW, 24)
    assert len(data.history) == 3


def test_missing_token_is_one_line_with_the_hint_and_no_request(
    server: FakeServer, tmp_path: Path
) -> None:
    client = provider(server, tmp_path, entsoe__token=None)
    assert not client.configured()
    with pytest.raises(ProviderError) as caught:
        client.fetch(DE, NOW, 24)
    message = str(caught.value)
    assert caught.value.permanent
    assert "no security token" in message
    assert "ENTSOE_SECURITY_TOKEN" in message
    assert "entsoe.token" in message
    assert "\n" not in message
    assert server.hits() == []


def test_a_rejected_token_is_one_permanent_error_without_the_token(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, Reply(401, recorded("unauthorized_401.html").decode()))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    message = str(caught.value)
    assert caught.value.permanent
    assert "security token was rejected (HTTP 401)" in message
    assert "ENTSOE_SECURITY_TOKEN" in message
    assert TOKEN not in message
    assert "<html" not in message
    assert len(server.hits(API)) == 1


def test_server_errors_are_retried_and_never_show_the_token(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, Reply(503, f"overloaded: {TOKEN}"))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path, http__retries=1).fetch(DE, NOW, 24)
    assert "HTTP 503" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert not caught.value.permanent
    assert len(server.hits(API)) == 2


REFUSED = (
    "entsoe: the Transparency Platform refused the query for DE (10Y1001A1001A83F, A75) (HTTP 400)"
)


def test_a_refused_query_says_why_the_platform_refused_it(
    server: FakeServer, tmp_path: Path
) -> None:
    server.route(API, Reply(400, recorded("ack_400_A75_DE_limit.xml")))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    assert str(caught.value) == (
        f"{REFUSED}: The amount of requested data exceeds allowed limit. Requested 9 documents, "
        "but only allowed to request 1 document per request."
    )
    assert caught.value.permanent
    assert len(server.hits(API)) == 1


def test_a_refused_querys_reason_is_one_short_line_without_the_token(
    server: FakeServer, tmp_path: Path
) -> None:
    # The token straddles the point where the reason is cut: no part of it may survive the cut.
    reason = "Bad\r\n  request\t" + "x" * (REASON_MAX - 20) + f" {TOKEN} " + "y" * 1000
    body = re.sub(
        rb"<text>.*</text>",
        f"<text>{reason}</text>".encode(),
        recorded("ack_400_A75_DE_limit.xml"),
        flags=re.S,
    )
    assert len(body) < ERROR_BODY_LIMIT
    server.route(API, Reply(400, body))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    message = str(caught.value)
    assert message.startswith(f"{REFUSED}: Bad request x")
    assert message.endswith("…")
    assert len(message) == len(REFUSED) + 2 + REASON_MAX
    assert not {"\n", "\r", "\t"} & set(message)
    assert TOKEN[:6] not in message
    assert MASK[:4] in message


@pytest.mark.parametrize("code", ["999", "998"])
def test_an_acknowledgement_with_http_200_is_quoted_short_and_without_the_token(
    server: FakeServer, tmp_path: Path, code: str
) -> None:
    reason = "No\r\n  matching\t" + "x" * (REASON_MAX - 20) + f" {TOKEN} " + "y" * 1000
    body = re.sub(
        rb"<text>.*</text>", f"<text>{reason}</text>".encode(), recorded("ack_999_A75_DE.xml"),
        flags=re.S,
    )  # fmt: skip
    body = re.sub(rb"<code>999</code>", f"<code>{code}</code>".encode(), body)
    server.route(API, by_document(Reply(200, body)))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    message = str(caught.value)
    assert f"No matching x{'x' * 10}" in message
    assert ("no data for zone DE" in message) == (code == "999")
    assert "…" in message
    assert len(message) < REASON_MAX + 120
    assert not {"\n", "\r", "\t"} & set(message)
    assert TOKEN[:6] not in message
    assert MASK[:4] in message


@pytest.mark.parametrize(
    "body",
    [
        b"Bad Request",
        b"<html><body><h1>400 Bad Request</h1></body></html>",
        recorded("ack_400_A75_DE_limit.xml").replace(b"<Reason>", b"<!DOCTYPE x><Reason>"),
        # An acknowledgement longer than what is kept of an error's body is cut short: no reason.
        recorded("ack_400_A75_DE_limit.xml").replace(b"allowed limit.", b"z" * ERROR_BODY_LIMIT),
        b"",
    ],
)
def test_a_refused_query_without_an_acknowledgement_keeps_the_plain_message(
    server: FakeServer, tmp_path: Path, body: bytes
) -> None:
    server.route(API, Reply(400, body))
    with pytest.raises(ProviderError) as caught:
        provider(server, tmp_path).fetch(DE, NOW, 24)
    assert str(caught.value) == REFUSED
    assert caught.value.permanent


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html><body>maintenance</body></html>", "unexpected document"),
        (b"not xml at all", "not valid XML"),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><GL_MarketDocument/>',
            "not a Transparency Platform document",
        ),
    ],
)
def test_an_answer_that_is_no_document_is_a_provider_error(
    server: FakeServer, tmp_path: Path, body: bytes, match: str
) -> None:
    server.route(API, Reply(200, body))
    with pytest.raises(ProviderError, match=match):
        provider(server, tmp_path).fetch(DE, NOW, 24)


def test_a_unit_other_than_megawatts_is_refused(server: FakeServer, tmp_path: Path) -> None:
    body = recorded("A75_DE_PT15M.xml").replace(b">MAW<", b">KWH<", 1)
    server.route(API, by_document(Reply(200, body)))
    with pytest.raises(ProviderError, match="unit 'KWH'"):
        provider(server, tmp_path).fetch(DE, NOW, 24)


def test_a_zone_without_an_eic_code_is_not_covered(server: FakeServer, tmp_path: Path) -> None:
    client = provider(server, tmp_path)
    assert client.covers(DE)
    gb = Region("gb", "GB", "Great Britain", "zone", ())
    us = Region("pjm", "US-MIDA-PJM", "PJM", "zone", ())
    assert not client.covers(gb)
    assert not client.covers(us)
    with pytest.raises(ProviderError, match="not an ENTSO-E area"):
        client.fetch(us, NOW, 24)
    assert server.hits() == []


# --- cache and secrets ----------------------------------------------------------------------------


def test_cache_hit_makes_no_request_and_stores_no_token(server: FakeServer, tmp_path: Path) -> None:
    server.route(API, by_document(Reply(200, recorded("A75_DE_PT15M.xml"))))
    client = provider(server, tmp_path)
    first = client.fetch(DE, NOW, 24)
    second = client.fetch(DE, NOW + timedelta(minutes=10), 24)
    assert len(server.hits(API)) == 2  # A75 and A69 once each
    assert second.history == first.history
    assert second.wind_solar_forecast == first.wind_solar_forecast
    assert "cached" in second.source.detail

    import sqlite3

    db = sqlite3.connect(tmp_path / "state.db")
    keys = sorted(row[0] for row in db.execute("SELECT endpoint FROM response_cache"))
    db.close()
    assert keys == [
        f"api?documentType=A69&in_Domain={DE_EIC}&processType=A01&securityToken=********",
        f"api?documentType=A75&in_Domain={DE_EIC}&processType=A16&securityToken=********",
    ]
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_relative_to(FIXTURES):
            assert TOKEN.encode() not in path.read_bytes(), path


# --- registration, regions, the service -----------------------------------------------------------


def test_registered_as_a_live_provider_after_the_forecasters(tmp_path: Path) -> None:
    assert "entsoe" in LIVE_PROVIDERS
    assert AUTO_ORDER[:3] == ("electricitymaps", "ukgrid", "watttime")
    assert AUTO_ORDER[-1] == "entsoe"
    client = make_live_provider("entsoe", provider_config(tmp_path), ResponseCache(enabled=False))
    assert client.name == "entsoe"
    assert not client.configured()


@pytest.mark.parametrize(
    ("zone", "eic"),
    [
        ("DE", "10Y1001A1001A83F"),
        ("FR", "10YFR-RTE------C"),
        ("NL", "10YNL----------L"),
        ("SE-SE3", "10Y1001A1001A46L"),
        ("IT-NO", "10Y1001A1001A73I"),
        ("NO-NO5", "10Y1001A1001A48H"),
        ("DK-DK1", "10YDK-1--------W"),
        ("IE", "10YIE-1001A00010"),
        ("PL", "10YPL-AREA-----S"),
    ],
)
def test_european_zones_map_to_their_eic_codes(zone: str, eic: str) -> None:
    assert regions.entsoe_eic(zone) == eic
    assert regions.entsoe_eic(zone.lower()) == eic
    assert "entsoe" in regions.resolve(zone).providers


def test_regions_list_entsoe_only_where_an_eic_is_known() -> None:
    for region in regions.all_regions():
        assert ("entsoe" in region.providers) == (regions.entsoe_eic(region.zone) is not None)
        assert region.providers[:2] == ("embedded", "electricitymaps")
    for zone in ("GB", "US-MIDA-PJM", "SG", "DK-BHM"):
        assert regions.entsoe_eic(zone) is None
    # Cloud names reach the codes through their zones.
    assert "entsoe" in regions.resolve("aws:eu-central-1").providers
    assert "entsoe" in regions.resolve("eu-north").providers
    assert "entsoe" not in regions.resolve("uk-south").providers
    codes = [regions.entsoe_eic(z) for z in regions.zone_ids() if regions.entsoe_eic(z)]
    assert len(codes) == len(set(codes)) >= 40
    assert all(len(code or "") == 16 for code in codes)


@pytest.mark.parametrize(
    ("settings", "zone", "expected"),
    [
        ({}, "DE", False),
        ({"entsoe__token": "t"}, "DE", True),
        ({"entsoe__token": "t"}, "GB", False),
    ],
)
def test_worth_trying_agrees_with_the_client(
    tmp_path: Path, settings: dict[str, str], zone: str, expected: bool
) -> None:
    config = provider_config(tmp_path, **settings)
    region = Region(zone.lower(), zone, zone, "zone", ())
    client = make_live_provider("entsoe", config, ResponseCache(enabled=False))
    assert worth_trying("entsoe", region, config) is expected
    assert (client.covers(region) and client.configured()) is expected


# --- harchos forecast -----------------------------------------------------------------------------


@pytest.fixture
def entsoe_url(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARCHOS_ENTSOE_URL", server.url)
    monkeypatch.setenv("HARCHOS_ELECTRICITYMAPS_URL", f"{server.url}/v3/")
    monkeypatch.setenv("HARCHOS_HTTP_TIMEOUT", "2")


def forecast(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[dict[str, Any], str]:
    result = harchos(
        capsys, "forecast", "--region", "de", "--at", AT, "--hours", "24", "--json", *extra
    )
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json()
    return data, result.out + result.err


@pytest.mark.usefixtures("entsoe_url")
def test_forecast_with_entsoe_forecasts_from_a_week_of_history(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", TOKEN)
    server.route(API, by_document(Reply(200, recorded("A75_DE_week_PT60M.xml"))))
    data, shown = forecast(capsys, "--provider", "entsoe")
    assert data["provider"] == "embedded"
    assert data["history"]["provider"] == "entsoe"
    assert data["history"]["hours"] == 166
    assert "conditioned on 166 h of entsoe history" in str(data["source_detail"])
    assert any("imports and exports are ignored" in w for w in data["warnings"])
    assert len(data["points"]) == 24
    assert TOKEN not in shown


@pytest.mark.usefixtures("entsoe_url")
def test_auto_uses_entsoe_when_only_its_token_is_set(
    server: FakeServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
) -> None:
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", TOKEN)
    server.route(API, by_document(Reply(200, recorded("A75_DE_week_PT60M.xml"))))
    data, shown = forecast(capsys)
    assert data["history"]["provider"] == "entsoe"
    assert data["history"]["hours"] == 166
    assert {r.query["documentType"] for r in server.hits(API)} == {"A75", "A69"}
    # The token went to the platform, and nowhere else: not the output, not the state files.
    assert {r.query["securityToken"] for r in server.hits(API)} == {TOKEN}
    assert TOKEN not in shown
    stored = [p for p in isolated_home.rglob("*") if p.is_file()]
    assert stored, "the response cache should have written the state database"
    for path in stored:
        assert TOKEN.encode() not in path.read_bytes(), path
    shown_config = harchos(capsys, "config", "show")
    assert TOKEN not in shown_config.out + shown_config.err
    assert "ENTSOE_SECURITY_TOKEN" in shown_config.out


@pytest.mark.usefixtures("entsoe_url")
def test_auto_keeps_electricitymaps_first(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", TOKEN)
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "em-token")
    history = {
        "zone": "DE",
        "history": [
            {"datetime": f"2026-05-03T0{h}:00:00.000Z", "carbonIntensity": 300 + h}
            for h in range(10)
        ],
    }
    server.route("/v3/carbon-intensity/history", Reply(200, history))
    server.route("/v3/carbon-intensity/forecast", Reply(403, {"error": "plan"}))
    server.route(API, by_document(Reply(200, recorded("A75_DE_week_PT60M.xml"))))
    data, _ = forecast(capsys)
    assert data["history"]["provider"] == "electricitymaps"
    assert data["history"]["hours"] == 10
    assert server.hits(API) == []


@pytest.mark.usefixtures("entsoe_url")
def test_no_data_falls_back_to_the_embedded_model_with_a_warning(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", TOKEN)
    server.route(API, by_document(Reply(200, recorded("ack_999_A75_DE.xml"))))
    data, shown = forecast(capsys, "--provider", "entsoe")
    assert data["provider"] == "embedded"
    assert data["history"] is None
    warning = next(w for w in data["warnings"] if w.startswith("entsoe: no data for zone DE"))
    assert warning.endswith("using the embedded model instead")
    assert TOKEN not in shown


@pytest.mark.usefixtures("entsoe_url")
def test_a_rejected_token_falls_back_with_the_hint(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", TOKEN)
    server.route(API, Reply(401, recorded("unauthorized_401.html").decode()))
    data, shown = forecast(capsys, "--provider", "entsoe")
    assert data["provider"] == "embedded"
    assert any(
        "rejected (HTTP 401)" in w and "ENTSOE_SECURITY_TOKEN" in w for w in data["warnings"]
    )
    assert TOKEN not in shown


@pytest.mark.usefixtures("entsoe_url")
def test_no_token_means_no_request(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = forecast(capsys)
    assert data["provider"] == "embedded"
    assert server.hits() == []
    explicit, _ = forecast(capsys, "--provider", "entsoe")
    assert explicit["provider"] == "embedded"
    assert any("entsoe has no credentials" in w for w in explicit["warnings"])
    assert server.hits() == []
