"""The shared provider HTTP plumbing against a real loopback server: retries, timeouts, cache."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from httpfake import FakeServer, Reply, provider_config

from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.providers.http import (
    ERROR_BODY_LIMIT,
    HttpStatusError,
    ProviderHttp,
    RetryPolicy,
    Sample,
    hourly_means,
    parse_retry_after,
    with_spacing,
)
from harchos_cli.errors import ProviderError

NOW = datetime(2026, 5, 3, 10, 5, tzinfo=UTC)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_http(
    server: FakeServer,
    tmp_path: Path,
    *,
    retries: int = 2,
    timeout: float = 2.0,
    cache_enabled: bool = True,
    sleep: Sleeps | None = None,
) -> ProviderHttp:
    config = provider_config(
        tmp_path,
        ukgrid__base_url=server.url,
        http__retries=retries,
        http__timeout=timeout,
        cache__enabled=cache_enabled,
    )
    cache = ResponseCache(tmp_path / "state.db")
    return ProviderHttp.from_config("ukgrid", config, cache, sleep=sleep or Sleeps())


def test_429_then_success_honours_retry_after(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(429, {"message": "slow down"}, {"Retry-After": "3"}), Reply(200, [1]))
    sleeps = Sleeps()
    fetched = make_http(server, tmp_path, sleep=sleeps).get_json("x", zone="GB", now=NOW)
    assert fetched.data == [1]
    assert fetched.cached is False
    assert len(server.hits("/x")) == 2
    assert sleeps.calls == [3.0]


def test_retry_after_is_capped(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(503, None, {"Retry-After": "3600"}), Reply(200, {"ok": True}))
    sleeps = Sleeps()
    make_http(server, tmp_path, sleep=sleeps).get_json("x", zone="GB", now=NOW)
    assert sleeps.calls == [RetryPolicy().retry_after_cap]


def test_500_forever_gives_up_after_retries(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(500, {"error": {"code": "500", "message": "backend down"}}))
    sleeps = Sleeps()
    http = make_http(server, tmp_path, retries=3, sleep=sleeps)
    with pytest.raises(HttpStatusError) as caught:
        http.get_json("x", zone="GB", now=NOW)
    assert len(server.hits("/x")) == 4
    assert sleeps.calls == [0.5, 1.0, 2.0]
    assert caught.value.status == 500
    assert not caught.value.permanent
    assert "backend down" in str(caught.value)
    assert "after 4 tries" in str(caught.value)
    assert str(caught.value).startswith("ukgrid: ")


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_cap=4.0)
    assert [policy.delay(n, None) for n in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_client_error_is_not_retried(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(400, {"error": {"code": "400 Bad Request", "message": "bad date"}}))
    sleeps = Sleeps()
    with pytest.raises(HttpStatusError) as caught:
        make_http(server, tmp_path, sleep=sleeps).get_json("x", zone="GB", now=NOW)
    assert len(server.hits("/x")) == 1
    assert sleeps.calls == []
    assert caught.value.permanent
    assert caught.value.server_message == "bad date"


def test_an_error_keeps_the_start_of_its_body_but_never_shows_it(
    server: FakeServer, tmp_path: Path
) -> None:
    body = b"<Reason>" + b"r" * (2 * ERROR_BODY_LIMIT)
    server.route("/x", Reply(400, body))
    with pytest.raises(HttpStatusError) as caught:
        make_http(server, tmp_path).get_json("x", zone="GB", now=NOW)
    assert caught.value.body == body[:ERROR_BODY_LIMIT]
    assert str(caught.value) == "ukgrid: HTTP 400"
    server.route("/y", Reply(503, b"busy"))
    with pytest.raises(HttpStatusError) as caught:
        make_http(server, tmp_path, retries=1).get_json("y", zone="GB", now=NOW)
    assert caught.value.body == b"busy"


def test_server_that_never_answers_times_out(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(200, {"late": True}, delay=10.0))
    http = make_http(server, tmp_path, retries=1, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        http.get_json("x", zone="GB", now=NOW)
    # The server would answer after 10 s; the client must have given up long before.
    assert time.monotonic() - started < 5.0
    assert "within 0.3 s" in str(caught.value)
    assert len(server.hits("/x")) == 2


def test_connection_refused_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = provider_config(tmp_path, ukgrid__base_url=f"http://127.0.0.1:{port}")
    sleeps = Sleeps()
    http = ProviderHttp.from_config("ukgrid", config, ResponseCache(enabled=False), sleep=sleeps)
    with pytest.raises(ProviderError, match=r"cannot reach 127\.0\.0\.1") as caught:
        http.get_json("x", zone="GB", now=NOW)
    assert not isinstance(caught.value, HttpStatusError)
    # Offline or refused: no retries, so the fallback to the embedded model is immediate.
    assert sleeps.calls == []


def test_non_json_body_is_a_provider_error(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(200, "<html>maintenance</html>"))
    with pytest.raises(ProviderError, match="not JSON"):
        make_http(server, tmp_path).get_json("x", zone="GB", now=NOW)


def test_cache_hit_makes_no_request(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(200, {"v": 1}), Reply(200, {"v": 2}))
    http = make_http(server, tmp_path)
    first = http.get_json("x", {"a": 1}, zone="GB", now=NOW)
    second = http.get_json("x", {"a": 1}, zone="GB", now=NOW + timedelta(minutes=20))
    assert (first.data, first.cached) == ({"v": 1}, False)
    assert (second.data, second.cached) == ({"v": 1}, True)
    assert len(server.hits("/x")) == 1
    # The next half hour is a new slot: a new request.
    third = http.get_json("x", {"a": 1}, zone="GB", now=NOW + timedelta(minutes=30))
    assert third.data == {"v": 2}
    assert len(server.hits("/x")) == 2


def test_cache_key_separates_parameters(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(200, {"v": 1}))
    http = make_http(server, tmp_path)
    http.get_json("x", {"zone": "DE"}, zone="DE", now=NOW)
    http.get_json("x", {"zone": "FR"}, zone="FR", now=NOW)
    assert [r.query["zone"] for r in server.hits("/x")] == ["DE", "FR"]


def test_cache_disabled_requests_every_time(server: FakeServer, tmp_path: Path) -> None:
    server.route("/x", Reply(200, {"v": 1}))
    http = make_http(server, tmp_path, cache_enabled=False)
    http.get_json("x", zone="GB", now=NOW)
    http.get_json("x", zone="GB", now=NOW)
    assert len(server.hits("/x")) == 2


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 5, 3, 10, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Sun, 03 May 2026 10:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sun, 03 May 2026 09:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_hourly_means_weights_by_overlap_and_drops_thin_hours() -> None:
    t0 = datetime(2026, 5, 3, 10, tzinfo=UTC)
    five = timedelta(minutes=5)
    samples = [
        Sample(t0 + i * five, t0 + (i + 1) * five, float(v)) for i, v in enumerate(range(12))
    ]
    # 11:00-11:20 only: a third of the hour, left out.
    samples += [
        Sample(t0 + timedelta(hours=1) + i * five, t0 + timedelta(hours=1) + (i + 1) * five, 9.0)
        for i in range(4)
    ]
    hours = hourly_means(samples)
    assert [(o.start, o.intensity) for o in hours] == [(t0, 5.5)]
    # A 90-minute value straddling 12:30 counts toward 12:00 (30 min) and 13:00 (full hour).
    long = Sample(t0 + timedelta(hours=2, minutes=30), t0 + timedelta(hours=4), 100.0, True)
    short = Sample(t0 + timedelta(hours=2), t0 + timedelta(hours=2, minutes=30), 40.0)
    split = hourly_means([long, short])
    assert [(o.start.hour, o.intensity, o.estimated) for o in split] == [
        (12, 70.0, True),
        (13, 100.0, True),
    ]


def test_with_spacing_uses_the_median_gap() -> None:
    t0 = datetime(2026, 5, 3, 10, tzinfo=UTC)
    points = [(t0 + timedelta(minutes=m), 1.0, False) for m in (0, 15, 30, 45, 120)]
    samples = with_spacing(points)
    assert {s.end - s.start for s in samples} == {timedelta(minutes=15)}
    lone = with_spacing([(t0, 1.0, False)])
    assert lone[0].end - lone[0].start == timedelta(hours=1)
