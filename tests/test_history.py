"""The history store and backfill: real SQLite, real HTTP servers on loopback, the real CLI."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from httpfake import FakeServer, Reply, Request, fixture, provider_config

from harchos_cli import paths
from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.embedded import HISTORY_HOURS
from harchos_cli.carbon.history import (
    RETENTION,
    HistoryStore,
    Series,
    StoredHour,
    lifecycle_series,
    resolve,
)
from harchos_cli.carbon.regions import resolve as resolve_region
from harchos_cli.carbon.service import BACKFILL_HOURS, ForecastService
from harchos_cli.carbon.types import Observation
from harchos_cli.timeparse import floor_hour, iso, utcnow

HOUR = timedelta(hours=1)
AT = datetime(2026, 5, 3, 10, tzinfo=UTC)
HISTORY = "/v3/carbon-intensity/history"
FORECAST = "/v3/carbon-intensity/forecast"
PAST_RANGE = "/v3/carbon-intensity/past-range"
DE = lifecycle_series("DE")


def value(hour: datetime) -> float:
    """A daily cycle around 300 g/kWh, the same whichever request gives the hour."""
    return round(300 + 80 * math.sin(hour.timestamp() / 3600 * 2 * math.pi / 24), 1)


def em_entries(first: datetime, last: datetime) -> list[dict[str, Any]]:
    """Electricity Maps history/past-range entries for the hours in [first, last)."""
    hours = int((last - first) / HOUR)
    return [
        {
            "zone": "DE",
            "carbonIntensity": value(first + i * HOUR),
            "datetime": (first + i * HOUR).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "updatedAt": "2026-05-03T09:52:11.104Z",
            "createdAt": "2026-04-29T10:00:00.000Z",
            "emissionFactorType": "lifecycle",
            "isEstimated": False,
            "estimationMethod": None,
        }
        for i in range(hours)
    ]


def em_history(now: datetime) -> Reply:
    """`carbon-intensity/history` as it answers at `now`: the last 24 hours."""
    return Reply(200, {"zone": "DE", "history": em_entries(now - 24 * HOUR, now)})


def past_range(request: Request) -> Reply:
    """`carbon-intensity/past-range` for the range asked (answered in `data`)."""
    first = datetime.fromisoformat(request.query["start"].replace("Z", "+00:00"))
    last = datetime.fromisoformat(request.query["end"].replace("Z", "+00:00"))
    return Reply(200, {"zone": "DE", "data": em_entries(first, last)})


def forecast_json(
    capsys: pytest.CaptureFixture[str], at: datetime, *extra: str, region: str = "DE"
) -> dict[str, Any]:
    result = harchos(
        capsys, "forecast", "-r", region, "--at", iso(at), "--hours", "6", "--deadline", "6h",
        "--json", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json()
    return data


@pytest.fixture
def em(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Electricity Maps on the loopback server, free plan: no forecast."""
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok")
    monkeypatch.setenv("HARCHOS_ELECTRICITYMAPS_URL", f"{server.url}/v3/")
    monkeypatch.setenv("HARCHOS_UKGRID_URL", server.url)
    monkeypatch.setenv("HARCHOS_WATTTIME_URL", server.url)
    monkeypatch.setenv("HARCHOS_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("HARCHOS_HTTP_RETRIES", "0")
    server.route(FORECAST, Reply(403, fixture("electricitymaps/error_403_forecast.json")))
    return server


# --- the store ------------------------------------------------------------------------------


def hours(first: datetime, count: int, level: float = 300.0, **kw: Any) -> list[Observation]:
    return [
        Observation(first + i * HOUR, first + (i + 1) * HOUR, level + i % 24, **kw)
        for i in range(count)
    ]


def test_measured_beats_estimated_and_a_newer_fetch_replaces(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state.db")
    t0 = AT - 3 * HOUR
    store.record(DE, "electricitymaps", hours(t0, 3, 100, estimated=True), AT)
    store.record(DE, "electricitymaps", hours(t0, 1, 200), AT)  # measured replaces estimated
    later = AT + HOUR
    store.record(DE, "electricitymaps", hours(t0, 2, 300, estimated=True), later)
    rows = {r.start: r for r in store.rows(DE, t0, AT)}
    # The measured 200 stays (an estimate never replaces it, however new); the estimated 101
    # was replaced by the newer estimate 301; the third hour is untouched.
    assert [(rows[t0 + i * HOUR].intensity, rows[t0 + i * HOUR].estimated) for i in range(3)] == [
        (200.0, False),
        (301.0, True),
        (102.0, True),
    ]
    assert rows[t0 + HOUR].fetched_at == later
    # An older fetch of the same kind does not replace a newer one.
    store.record(DE, "electricitymaps", hours(t0 + 2 * HOUR, 1, 999, estimated=True), AT - HOUR)
    assert store.rows(DE, t0 + 2 * HOUR, AT)[0].intensity == 102.0


def test_sources_keep_their_own_rows_and_reads_prefer_the_current_one(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state.db")
    t0 = AT - 2 * HOUR
    store.record(DE, "electricitymaps", hours(t0, 2, 100, estimated=True), AT + HOUR)
    store.record(DE, "entsoe", hours(t0, 2, 500), AT)
    rows = store.rows(DE, t0, AT)
    assert len(rows) == 4
    # With no preference a measured value wins over an estimate, even a newer one; the current
    # provider wins over both.
    assert [r.provider for r in resolve(rows)] == ["entsoe", "entsoe"]
    assert [r.intensity for r in resolve(rows, "electricitymaps")] == [100.0, 101.0]
    same = [
        StoredHour(t0, 1.0, False, "b", AT),
        StoredHour(t0, 2.0, False, "a", AT),
        StoredHour(t0, 3.0, False, "c", AT + HOUR),
    ]
    assert resolve(same)[0].intensity == 3.0  # the latest fetch
    assert resolve(same[:2])[0].provider == "a"  # then the name: stable


def test_only_whole_hours_that_are_over_are_kept(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state.db")
    now = AT + timedelta(minutes=40)
    offered = [
        Observation(AT - HOUR, AT, 100.0),  # kept
        Observation(AT, AT + HOUR, 110.0),  # not over yet
        Observation(AT - 2 * HOUR, AT - 2 * HOUR + timedelta(minutes=30), 90.0),  # half hour
        Observation(AT - 3 * HOUR + timedelta(minutes=5), AT - 2 * HOUR, 80.0),  # off the hour
        Observation(AT - 4 * HOUR, AT - 3 * HOUR, float("nan")),
    ]
    assert store.record(DE, "electricitymaps", offered, now) == 1
    assert [(r.start, r.intensity) for r in store.rows(DE, AT - 5 * HOUR, AT + 2 * HOUR)] == [
        (AT - HOUR, 100.0)
    ]


def test_retention_prunes_rows_older_than_35_days_before_the_newest(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "state.db")
    old = AT - RETENTION - 2 * HOUR
    store.record(DE, "electricitymaps", hours(old, 4), old + 5 * HOUR)
    store.record(lifecycle_series("FR"), "electricitymaps", hours(old, 4), old + 5 * HOUR)
    assert len(store.rows(DE, old, AT)) == 4
    store.record(DE, "electricitymaps", hours(AT - HOUR, 1), AT)
    kept = store.rows(DE, old, AT + HOUR)
    # The hour more than 35 days before the newest (AT - 1 h) is gone; FR is untouched.
    assert [r.start for r in kept] == [old + HOUR, old + 2 * HOUR, old + 3 * HOUR, AT - HOUR]
    assert len(store.rows(lifecycle_series("FR"), old, AT)) == 4


def test_state_stays_private_and_a_read_creates_nothing(isolated_home: Path) -> None:
    store = HistoryStore()
    assert store.rows(DE, AT - HOUR, AT) == []
    assert not paths.state_db().exists()
    assert store.record(DE, "electricitymaps", hours(AT - HOUR, 1), AT) == 1
    assert stat.S_IMODE(paths.state_db().stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.state_db().parent.stat().st_mode) == 0o700
    for suffix in ("-wal", "-shm"):
        side = paths.state_db().with_name(paths.state_db().name + suffix)
        if side.exists():
            assert stat.S_IMODE(side.stat().st_mode) == 0o600


def test_a_damaged_or_locked_store_answers_nothing_and_raises_nothing(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    store = HistoryStore(damaged)
    assert store.record(DE, "electricitymaps", hours(AT - HOUR, 1), AT) == 0
    assert store.rows(DE, AT - HOUR, AT) == []
    assert not store.writable
    assert store.error

    path = tmp_path / "state.db"
    HistoryStore(path).record(DE, "electricitymaps", hours(AT - 2 * HOUR, 1), AT)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        locked = HistoryStore(path, busy_timeout_ms=50)
        assert locked.record(DE, "electricitymaps", hours(AT - HOUR, 1), AT) == 0
        assert not locked.writable
        # Reads still work under WAL while another process writes.
        assert len(locked.rows(DE, AT - 3 * HOUR, AT)) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- forecasts: more history on the second run, backfill where offered ----------------------


def test_a_second_forecast_has_more_history_than_the_first(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    em.route(HISTORY, em_history(AT), em_history(AT + HOUR))
    em.route(PAST_RANGE, Reply(403, {"message": "Your plan does not include this endpoint"}))

    first = forecast_json(capsys, AT)
    assert first["provider"] == "embedded"
    assert first["history"]["hours"] == 24
    assert first["history"]["fetched_hours"] == 24
    assert first["history"]["stored_hours"] == 0
    assert first["history"]["backfill"] == "not offered"
    assert first["history"]["used_by_model"] is True
    assert any("no past-range endpoint (HTTP 403)" in w for w in first["warnings"])

    second = forecast_json(capsys, AT + HOUR, "--explain")
    assert second["history"]["hours"] == 25
    assert second["history"]["fetched_hours"] == 24
    assert second["history"]["stored_hours"] == 1
    assert second["history"]["oldest"] == iso(AT - 24 * HOUR)
    assert second["history"]["newest"] == iso(AT)
    assert "conditioned on 25 h of electricitymaps history" in second["source_detail"]
    assert second["explain"]["history"]["given_hours"] == 25
    # The refusal is remembered: not asked again, not warned about again.
    assert second["history"]["backfill"] == "not offered"
    assert not any("past-range" in w for w in second["warnings"])
    assert len(em.hits(PAST_RANGE)) == 1


def test_backfill_gives_a_week_on_first_use_and_the_full_weights(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    em.route(HISTORY, em_history(AT), em_history(AT + HOUR))
    em.route(PAST_RANGE, past_range)

    first = forecast_json(capsys, AT, "--explain")
    requests = em.hits(PAST_RANGE)
    # A week back (or the model's whole window) to where the last day's history begins, in
    # ranges of at most 10 days: one request for a week.
    start = AT - BACKFILL_HOURS * HOUR
    assert requests[0].query == {
        "zone": "DE",
        "start": iso(start),
        "end": iso(min(start + timedelta(days=10), AT - 24 * HOUR)),
        "emissionFactorType": "lifecycle",
        "temporalGranularity": "hourly",
    }
    assert requests[-1].query["end"] == iso(AT - 24 * HOUR)
    assert len(requests) == math.ceil((BACKFILL_HOURS - 24) / (10 * 24))
    assert {r.headers["auth-token"] for r in requests} == {"tok"}
    history = first["history"]
    assert history["hours"] == HISTORY_HOURS
    assert history["backfilled"] is True
    assert history["backfill"] == "fetched"
    assert history["backfilled_hours"] == HISTORY_HOURS - 24
    assert first["explain"]["history"]["mode"] == "long"  # the model's whole window: 4 weeks
    assert first["explain"]["history"]["given_hours"] == HISTORY_HOURS
    assert "backfilled now" in first["source_detail"]

    # An hour later: nothing left to backfill, no request, and still a full week.
    second = forecast_json(capsys, AT + HOUR)
    assert len(em.hits(PAST_RANGE)) == len(requests)
    assert second["history"]["backfill"] == "not needed"
    assert second["history"]["hours"] == HISTORY_HOURS
    assert second["history"]["stored_hours"] == HISTORY_HOURS - 24
    assert second["history"]["backfilled"] is False


def test_the_backfilled_week_changes_the_forecast(
    em: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    em.route(HISTORY, em_history(AT))
    em.route(PAST_RANGE, Reply(403, {"message": "plan"}))
    day = forecast_json(capsys, AT, "--explain")
    assert day["explain"]["history"]["mode"] == "short"
    harchos(capsys, "forecast", "history", "--clear")
    em.route(PAST_RANGE, past_range)
    week = forecast_json(capsys, AT, "--explain")
    assert week["explain"]["history"]["mode"] == "long"
    assert [p["intensity"] for p in week["points"]] != [p["intensity"] for p in day["points"]]


def test_a_failed_backfill_is_tried_again_hours_later_not_on_every_call(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    em.route(HISTORY, em_history(AT), em_history(AT + HOUR), em_history(AT + 7 * HOUR))
    em.route(PAST_RANGE, Reply(503, {"message": "maintenance"}), past_range)
    first = forecast_json(capsys, AT)
    assert first["history"]["backfill"] == "failed"
    assert any("no backfill of DE history now" in w for w in first["warnings"])
    second = forecast_json(capsys, AT + HOUR)
    assert second["history"]["backfill"] == "failed"
    assert len(em.hits(PAST_RANGE)) == 1
    third = forecast_json(capsys, AT + 7 * HOUR)
    assert len(em.hits(PAST_RANGE)) == 1 + math.ceil((BACKFILL_HOURS - 24) / (10 * 24))
    assert third["history"]["backfill"] == "fetched"
    assert third["history"]["hours"] == HISTORY_HOURS


def test_after_days_away_only_the_gap_is_backfilled(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    later = AT + 72 * HOUR
    em.route(HISTORY, em_history(AT), em_history(later))
    em.route(PAST_RANGE, past_range)
    forecast_json(capsys, AT)
    first = em.hits(PAST_RANGE)
    data = forecast_json(capsys, later)
    second = em.hits(PAST_RANGE)[len(first) :]
    # The first backfill ended where the first fetch began; the second asks only for the hours
    # between the first run's fetch and the second's, not a week back again.
    assert first[-1].query["end"] == iso(AT - 24 * HOUR)
    assert len(second) == 1
    assert (second[0].query["start"], second[0].query["end"]) == (iso(AT), iso(later - 24 * HOUR))
    assert data["history"]["hours"] == HISTORY_HOURS


def test_ukgrid_backfills_a_week_that_the_lifecycle_model_never_uses(
    em: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN")

    def national_range(request: Request) -> Reply:
        _, _, first, last = request.path.split("/")
        start = datetime.fromisoformat(first.replace("Z", "+00:00"))
        end = datetime.fromisoformat(last.replace("Z", "+00:00"))
        slots = int((end - start) / timedelta(minutes=30))
        data = [
            {
                "from": (start + i * timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%MZ"),
                "to": (start + (i + 1) * timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%MZ"),
                "intensity": {"forecast": 150 + i % 7, "actual": 148 + i % 5, "index": "low"},
            }
            for i in range(slots)
        ]
        return Reply(200, {"data": data})

    em.route(r"/intensity/[^/]+/[^/]+", national_range)
    em.route(r"/intensity/[^/]+/fw48h", Reply(200, fixture("ukgrid/national_fw48h.json")))
    em.route(r"/intensity/[^/]+/pt24h", Reply(200, fixture("ukgrid/national_pt24h.json")))
    data = forecast_json(capsys, AT, region="GB")
    assert data["provider"] == "ukgrid"
    ranges = [
        tuple(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in r.path.split("/")[2:])
        for r in em.hits(r"/intensity/[^/]+/\d[^/]+")
    ]
    # From a week (or the model's whole window) back to the last day, in ranges of 14 days at
    # most, one after the other.
    assert ranges[0][0] == AT - BACKFILL_HOURS * HOUR
    assert ranges[-1][1] == AT - 24 * HOUR
    assert all(b - a <= timedelta(days=14) for a, b in ranges)
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    assert len(ranges) == math.ceil((BACKFILL_HOURS - 24) / (14 * 24))
    history = data["history"]
    assert history["hours"] == HISTORY_HOURS
    assert history["backfilled_hours"] == HISTORY_HOURS - 24
    assert (history["method"], history["used_by_model"]) == ("NESO forecast", False)
    assert data["comparison"] is None
    again = forecast_json(capsys, AT + HOUR, region="GB")
    assert len(em.hits(r"/intensity/[^/]+/\d[^/]+")) == len(ranges)
    assert again["history"]["backfill"] == "not needed"
    # NESO's figures are not lifecycle values: the embedded model never conditions on them.
    offline = forecast_json(capsys, AT + HOUR, "--provider", "embedded", region="GB")
    assert offline["history"] is None
    assert offline["source_detail"] == "seasonal profile only (no recent history)"


def test_watttime_without_historical_access_is_remembered_and_marginal_stays_apart(
    em: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN")
    monkeypatch.setenv("WATTTIME_USER", "u")
    monkeypatch.setenv("WATTTIME_PASSWORD", "p")

    def historical(request: Request) -> Reply:
        start = datetime.fromisoformat(request.query["start"].replace("Z", "+00:00"))
        if start < AT - 25 * HOUR:  # beyond the last day: a subscription feature
            return Reply(403, fixture("watttime/error_403_region.json"))
        return Reply(200, fixture("watttime/historical_CAISO_NORTH.json"))

    em.route("/login", Reply(200, fixture("watttime/login.json")))
    em.route("/v3/forecast", Reply(200, fixture("watttime/forecast_CAISO_NORTH.json")))
    em.route("/v3/historical", historical)
    region = "watttime:CAISO_NORTH"
    data = forecast_json(capsys, AT, "--hours", "2", "--deadline", "2h", region=region)
    assert (data["provider"], data["signal"]) == ("watttime", "marginal")
    backfills = [r for r in em.hits("/v3/historical") if r.query["start"] < iso(AT - 25 * HOUR)]
    assert len(backfills) == 2  # once more after a fresh login, then given up
    assert data["history"]["backfill"] == "not offered"
    assert data["history"]["signal"] == "marginal"
    assert data["history"]["used_by_model"] is False
    assert any("no historical data for CAISO_NORTH" in w for w in data["warnings"])
    again = forecast_json(capsys, AT + HOUR, "--hours", "2", "--deadline", "2h", region=region)
    later = [r for r in em.hits("/v3/historical") if r.query["start"] < iso(AT - 24 * HOUR)]
    assert len(later) == 2
    assert again["history"]["backfill"] == "not offered"
    assert again["history"]["stored_hours"] == 0  # the same recorded day came back
    # Marginal values are kept, but never given to the (average, lifecycle) embedded model.
    offline = forecast_json(capsys, AT + HOUR, "--provider", "embedded", region=region)
    assert offline["history"] is None


# --- offline, replay, failures ----------------------------------------------------------------


def test_the_embedded_provider_uses_stored_lifecycle_history_without_a_request(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    store = HistoryStore()
    store.record(DE, "electricitymaps", hours(AT - HISTORY_HOURS * HOUR, HISTORY_HOURS), AT)
    for other in (Series("DE", "marginal", "co2_moer"), Series("DE", "average", "direct")):
        store.record(other, "elsewhere", hours(AT - 200 * HOUR, 200, level=9000.0), AT)
    store.close()
    data = forecast_json(capsys, AT, "--provider", "embedded", "--explain")
    assert server.hits() == []
    history = data["history"]
    assert history["hours"] == history["stored_hours"] == HISTORY_HOURS
    assert history["fetched_hours"] == 0
    assert history["sources"] == ["electricitymaps"]
    assert history["backfill"] is None
    assert data["explain"]["history"]["mode"] == "long"
    assert (
        f"{HISTORY_HOURS} h of electricitymaps history ({HISTORY_HOURS} h from the history store"
        in data["source_detail"]
    )
    # Only the lifecycle rows reached the model: none of the 9000+ marginal or direct values.
    assert max(p["intensity"] for p in data["points"]) < 2000


def test_marginal_or_direct_rows_alone_leave_the_model_on_its_profile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = HistoryStore()
    store.record(Series("DE", "marginal", "co2_moer"), "watttime", hours(AT - 168 * HOUR, 168), AT)
    store.record(Series("DE", "average", "direct"), "electricitymaps", hours(AT - HOUR, 1), AT)
    store.close()
    data = forecast_json(capsys, AT, "--provider", "embedded")
    assert data["history"] is None
    assert data["source_detail"] == "seasonal profile only (no recent history)"


def test_a_replayed_trace_is_not_recorded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    start = datetime(2022, 3, 1, tzinfo=UTC)
    lines = ["datetime,carbon_intensity"] + [
        f"{iso(start + i * HOUR)},{value(start + i * HOUR)}" for i in range(24 * 20)
    ]
    trace = tmp_path / "trace.csv"
    trace.write_text("\n".join(lines) + "\n")
    result = harchos(
        capsys, "forecast", "-r", "DE", "--provider", f"replay:{trace}", "--json", "--hours", "6"
    )
    assert result.code == 0, result.err
    assert result.json()["history"]["provider"] == "replay"
    assert HistoryStore().summary() == []


def test_a_damaged_state_database_does_not_fail_the_forecast(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    paths.state_db().parent.mkdir(parents=True, exist_ok=True)
    paths.state_db().write_bytes(b"not a database" * 100)
    em.route(HISTORY, em_history(AT))
    em.route(PAST_RANGE, past_range)
    data = forecast_json(capsys, AT)
    assert data["history"]["hours"] == 24
    # A backfill that could not be remembered would repeat on every call: none is made.
    assert em.hits(PAST_RANGE) == []
    assert data["history"]["backfill"] is None


def test_a_locked_store_does_not_fail_the_forecast(em: FakeServer, tmp_path: Path) -> None:
    em.route(HISTORY, em_history(AT))
    em.route(PAST_RANGE, past_range)
    path = tmp_path / "state.db"
    HistoryStore(path).record(DE, "electricitymaps", hours(AT - 30 * HOUR, 2), AT - 20 * HOUR)
    config = provider_config(
        tmp_path,
        electricitymaps__token="tok",
        electricitymaps__base_url=f"{em.url}/v3/",
        http__timeout=2.0,
    )
    service = ForecastService(
        config,
        ResponseCache(enabled=False),
        "electricitymaps",
        history=HistoryStore(path, busy_timeout_ms=50),
    )
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        forecast = service.forecast(resolve_region("DE"), AT, 6)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert forecast.source.provider == "embedded"
    # The 24 h just fetched and the 2 h stored before; nothing written, no backfill tried.
    assert len(forecast.history) == 26
    assert em.hits(PAST_RANGE) == []
    assert not service.store.writable


# --- the supervisor's planning ------------------------------------------------------------------


def test_a_jobs_plan_uses_the_stored_history(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = floor_hour(utcnow())
    store = HistoryStore()
    store.record(DE, "electricitymaps", hours(now - HISTORY_HOURS * HOUR, HISTORY_HOURS), now)
    store.close()
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\n[carbon]\nregion = "DE"\n')
    os.chdir(tmp_path)
    result = harchos(
        capsys, "run", "batch", "--dry-run", "--json", "--provider", "embedded",
        "--defer-until-green", "--deadline", "12h", "--", "true",
    )  # fmt: skip
    assert result.code == 0, result.err
    detail = result.json()["source_detail"]
    # (An hour may turn between storing and planning: then one hour fewer is in the window.)
    assert "h of electricitymaps history" in detail
    assert int(detail.split("conditioned on ")[1].split(" h")[0]) >= HISTORY_HOURS - 1


# --- harchos forecast history -----------------------------------------------------------------


def test_history_command_lists_and_clears(
    em: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    em.route(HISTORY, em_history(AT))
    em.route(PAST_RANGE, Reply(403, {"message": "plan"}))
    forecast_json(capsys, AT)
    listed = harchos(capsys, "forecast", "history", "--region", "DE", "--json")
    assert listed.code == 0, listed.err
    (row,) = listed.json()
    assert (row["zone"], row["provider"], row["hours"]) == ("DE", "electricitymaps", 24)
    assert row["backfill"]["status"] == "refused"
    text = harchos(capsys, "forecast", "history")
    assert "electricitymaps: 24 h (0 estimated)" in text.out
    cleared = harchos(capsys, "forecast", "history", "--region", "DE", "--clear")
    assert cleared.code == 0, cleared.err
    assert "24" in cleared.out
    assert harchos(capsys, "forecast", "history", "--json").json() == []


def test_entsoe_backfills_only_what_its_week_does_not_cover(
    server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "entsoe"
    monkeypatch.setenv("ENTSOE_SECURITY_TOKEN", "tkn")
    monkeypatch.setenv("HARCHOS_ENTSOE_URL", server.url)

    def answer(request: Request) -> Reply:
        name = "A75_DE_week_PT60M.xml" if request.query["documentType"] == "A75" else "A69_DE.xml"
        return Reply(200, (fixtures / name).read_bytes())

    server.route("/api", answer)
    data = forecast_json(capsys, AT, "--provider", "entsoe")
    a75 = [r for r in server.hits("/api") if r.query["documentType"] == "A75"]
    if BACKFILL_HOURS <= 168:
        # Every fetch gets the week the model looks at: nothing to backfill, no extra request.
        assert len(a75) == 1
        assert data["history"]["backfill"] is None
    else:
        # A model that looks further back gets the older hours once, in one request.
        assert len(a75) == 2
        assert a75[1].query["periodEnd"] == (AT - 168 * HOUR).strftime("%Y%m%d%H%M")
    assert data["history"]["provider"] == "entsoe"
    assert "h of entsoe history" in data["source_detail"]


def test_a_longer_model_window_backfills_only_the_older_hours(
    em: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    em.route(HISTORY, em_history(AT), em_history(AT + HOUR))
    em.route(PAST_RANGE, past_range)
    monkeypatch.setattr("harchos_cli.carbon.service.BACKFILL_HOURS", 168)
    forecast_json(capsys, AT)
    (week,) = em.hits(PAST_RANGE)
    assert week.query["start"] == iso(AT - 168 * HOUR)
    # A later harchos whose model looks back two weeks asks for the week before, nothing else.
    monkeypatch.setattr("harchos_cli.carbon.service.BACKFILL_HOURS", 336)
    data = forecast_json(capsys, AT + HOUR)
    older = em.hits(PAST_RANGE)[1:]
    assert [(r.query["start"], r.query["end"]) for r in older] == [
        (iso(AT + HOUR - 336 * HOUR), iso(AT - 168 * HOUR))
    ]
    assert data["history"]["backfill"] == "fetched"
    listed = harchos(capsys, "forecast", "history", "--json").json()
    (row,) = [r for r in listed if r["provider"] == "electricitymaps"]
    assert row["backfill"]["since"] == iso(AT + HOUR - 336 * HOUR)
    assert row["backfill"]["through"] == iso(AT + HOUR - 24 * HOUR)
