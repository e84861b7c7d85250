"""`harchos forecast` with live providers on a loopback server: use, label, fall back."""

from __future__ import annotations

from typing import Any

import pytest
from clirunner import harchos
from httpfake import FakeServer, Reply, fixture

AT = "2026-05-03T10:00:00Z"
HISTORY = "/v3/carbon-intensity/history"
FORECAST = "/v3/carbon-intensity/forecast"


@pytest.fixture(autouse=True)
def live_settings(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the providers at the loopback server."""
    monkeypatch.setenv("HARCHOS_ELECTRICITYMAPS_URL", f"{server.url}/v3/")
    monkeypatch.setenv("HARCHOS_UKGRID_URL", server.url)
    monkeypatch.setenv("HARCHOS_HTTP_TIMEOUT", "0.5")


def forecast_de(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    result = harchos(
        capsys, "forecast", "-r", "DE", "--at", AT, "--hours", "24", "--duration", "2h", "--json"
    )
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json()
    return data


def test_auto_uses_electricitymaps_when_a_token_is_set(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(200, fixture("electricitymaps/forecast_DE.json")))
    data = forecast_de(capsys)
    assert data["provider"] == "electricitymaps"
    assert data["kind"] == "forecast"
    points = data["points"]
    assert isinstance(points, list)
    recorded = fixture("electricitymaps/forecast_DE.json")["forecast"]
    assert [p["intensity"] for p in points] == [float(e["carbonIntensity"]) for e in recorded]
    assert all(p["low"] <= p["intensity"] <= p["high"] for p in points)
    assert server.hits(FORECAST)[0].headers["auth-token"] == "tok"
    # The provider's forecast is used and compared with harchos's model on the same history.
    comparison = data["comparison"]
    assert comparison["hours"] == len(points)
    assert comparison["mean_abs_diff"] > 0
    assert comparison["relative_diff"] == pytest.approx(
        comparison["mean_abs_diff"] / (sum(p["intensity"] for p in points) / len(points)), abs=1e-3
    )


def test_no_token_means_embedded_without_any_request(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = forecast_de(capsys)
    assert data["provider"] == "embedded"
    assert server.hits() == []


def test_server_error_falls_back_to_embedded_labelled(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    monkeypatch.setenv("HARCHOS_HTTP_RETRIES", "1")
    server.route(HISTORY, Reply(500, {"error": "boom"}))
    server.route(FORECAST, Reply(500, {"error": "boom"}))
    result = harchos(capsys, "forecast", "-r", "DE", "--at", AT, "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["provider"] == "embedded"
    assert any("electricitymaps" in w and "embedded" in w for w in data["warnings"])
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(set(warnings)) >= 1
    assert "Traceback" not in result.err


def test_timeout_falls_back_to_embedded(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    monkeypatch.setenv("HARCHOS_HTTP_RETRIES", "0")
    slow = Reply(200, fixture("electricitymaps/history_DE.json"), delay=5)
    server.route(HISTORY, slow)
    server.route(FORECAST, slow)
    data = forecast_de(capsys)
    assert data["provider"] == "embedded"
    assert data["warnings"]


def test_plan_without_forecast_uses_live_history(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(403, fixture("electricitymaps/error_403_forecast.json")))
    data = forecast_de(capsys)
    assert data["provider"] == "embedded"
    # The recorded history has 24 hours, two of them null (skipped).
    assert data["history"]["provider"] == "electricitymaps"
    assert data["history"]["hours"] == 22
    assert any("forecast" in w for w in data["warnings"])
    assert "electricitymaps history" in str(data["source_detail"])


def test_uk_region_uses_the_uk_api_without_a_key(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Later routes take precedence: the general one first.
    server.route(r"/regional/intensity/.*", Reply(200, fixture("ukgrid/regional_range_13.json")))
    server.route(
        r"/regional/intensity/.*/fw48h/regionid/13",
        Reply(200, fixture("ukgrid/regional_fw48h_13_object.json")),
    )
    result = harchos(
        capsys,
        "forecast",
        "-r",
        "uk-south",
        "--at",
        AT,
        "--hours",
        "6",
        "--deadline",
        "6h",
        "--json",
    )
    assert result.code == 0, result.err
    data = result.json()
    assert data["provider"] == "ukgrid", data["warnings"]
    assert data["zone"] == "GB"
    # The UK API's own half-hour periods, six hours of them.
    assert len(data["points"]) == 12
    assert {p["end"][14:16] for p in data["points"]} <= {"00", "30"}
    # NESO's intensity is not the embedded model's kind (average lifecycle): the explanation
    # names the provider's own forecast, not what the model would make of its history.
    explained = harchos(capsys, "forecast", "-r", "uk-south", "--at", AT, "--hours", "6",
                        "--deadline", "6h", "--explain", "--json").json()["explain"]  # fmt: skip
    assert explained["used"] == "ukgrid"
    assert "embedded_on_same_history" not in explained


def test_explicit_provider_that_does_not_cover_the_region_is_exit_2(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    result = harchos(capsys, "forecast", "-r", "DE", "--provider", "ukgrid")
    assert result.code == 2
    assert "ukgrid has no data for" in result.err


def test_marginal_watttime_forecast_is_neither_compared_nor_banded(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARCHOS_WATTTIME_URL", server.url)
    monkeypatch.setenv("WATTTIME_USER", "u")
    monkeypatch.setenv("WATTTIME_PASSWORD", "p")
    server.route("/login", Reply(200, fixture("watttime/login.json")))
    server.route("/v3/forecast", Reply(200, fixture("watttime/forecast_CAISO_NORTH.json")))
    server.route("/v3/historical", Reply(200, fixture("watttime/historical_CAISO_NORTH.json")))
    result = harchos(
        capsys, "forecast", "-r", "watttime:CAISO_NORTH", "--at", "2026-05-03T10:00:00Z",
        "--hours", "2", "--deadline", "2h", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert (data["provider"], data["signal"]) == ("watttime", "marginal")
    assert data["comparison"] is None
    assert all(p["low"] == p["intensity"] == p["high"] for p in data["points"])


def test_direct_history_does_not_condition_the_lifecycle_model(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    monkeypatch.setenv("HARCHOS_ELECTRICITYMAPS_EMISSION_FACTOR", "direct")
    server.route(HISTORY, Reply(200, fixture("electricitymaps/history_DE.json")))
    server.route(FORECAST, Reply(403, fixture("electricitymaps/error_403_forecast.json")))
    data = forecast_de(capsys)
    assert (data["provider"], data["method"]) == ("embedded", "lifecycle")
    assert data["history"] is None
    assert any("cannot use" in w for w in data["warnings"])
