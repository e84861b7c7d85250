"""The load test against harchos's vLLM test double."""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
import threading
from collections.abc import Callable

import httpx
import pytest
from conftest import API_KEY, wait_until

import client
import loadtest
from serve import ServeSettings

# Long enough for several of vLLM's 16-token blocks, so a shared prefix would be cached.
LONG_PROMPT = " ".join(["Explain why the carbon intensity of electricity varies by hour."] * 5)


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on the server behind API base URL `url`."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def in_flight(url: str) -> float:
    return metric(url, "vllm:num_requests_running") + metric(url, "vllm:num_requests_waiting")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(10, 0, -1)]
    assert loadtest.percentile(values, 50) == 5
    assert loadtest.percentile(values, 95) == 10
    assert loadtest.percentile(values, 10) == 1
    assert loadtest.percentile([3.0], 95) == 3
    assert math.isnan(loadtest.percentile([], 50))


def test_arrivals_are_a_seeded_poisson_process() -> None:
    offsets = loadtest.arrival_offsets(4.0, 4000, seed=7)
    assert offsets == loadtest.arrival_offsets(4.0, 4000, seed=7)
    assert offsets != loadtest.arrival_offsets(4.0, 4000, seed=8)
    gaps = [offsets[0], *(b - a for a, b in itertools.pairwise(offsets))]
    assert min(gaps) > 0
    # Exponential gaps: mean and standard deviation both 1/rate (fixed by the seed, no flakes).
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError, match="rate"):
        loadtest.arrival_offsets(0, 1, seed=0)


def test_prompts_differ_in_their_first_word() -> None:
    run = loadtest.prompts(3, "same question")
    later = loadtest.prompts(3, "same question")
    assert len({p.split()[0] for p in run + later}) == 6
    assert all(p.endswith("same question") for p in run)


def test_concurrent_requests_are_measured(server: str, settings: ServeSettings) -> None:
    report = loadtest.run(
        server, settings.served_model_name, api_key=API_KEY, requests=12, concurrency=4,
        max_tokens=8,
    )  # fmt: skip
    assert (report.mode, report.requests, report.failures) == ("closed", 12, 0)
    assert report.completion_tokens == 12 * 8
    assert 0 < report.ttft_p50_s <= report.latency_p50_s <= report.latency_p95_s
    assert report.ttft_p50_s <= report.ttft_p95_s
    assert report.tokens_per_s == pytest.approx(report.completion_tokens / report.wall_s)


def _held(url: str, expect: int, run: Callable[[], loadtest.Report]) -> loadtest.Report:
    """`run` the load test in a thread while the double holds every request before its first
    token, so what is in flight can be counted; release them once `expect` are."""
    assert httpx.post(url.removesuffix("/v1") + "/debug/hold").status_code == 200
    reports: list[loadtest.Report] = []
    thread = threading.Thread(target=lambda: reports.append(run()))
    thread.start()
    try:
        wait_until(lambda: in_flight(url) == expect, f"{expect} requests in flight")
    finally:
        httpx.post(url.removesuffix("/v1") + "/debug/release")
        thread.join(timeout=120)
    return reports[0]


def test_a_closed_loop_keeps_its_concurrency_in_flight(
    start_server: Callable[..., str], settings: ServeSettings
) -> None:
    url, model = start_server(), settings.served_model_name
    report = _held(url, 3, lambda: loadtest.run(
        url, model, api_key=API_KEY, requests=9, concurrency=3, max_tokens=2
    ))  # fmt: skip
    assert (report.requests, report.failures, report.max_in_flight) == (9, 0, 3)


def test_an_open_loop_sends_on_schedule_past_100_connections(
    start_server: Callable[..., str], settings: ServeSettings
) -> None:
    # Nothing is answered while held, so a closed loop would stop at its concurrency and httpx's
    # default pool at 100 connections; the open loop sends all 120 at their arrival times.
    url, model = start_server(), settings.served_model_name
    report = _held(url, 120, lambda: loadtest.run(
        url, model, api_key=API_KEY, requests=120, rate=2000.0, seed=1, max_tokens=2
    ))  # fmt: skip
    assert (report.mode, report.request_rate, report.seed) == ("open", 2000.0, 1)
    assert (report.requests, report.failures, report.max_in_flight) == (120, 0, 120)
    assert report.completion_tokens == 240


def test_its_prompts_defeat_the_prefix_cache(server: str, settings: ServeSettings) -> None:
    model = settings.served_model_name
    queries, hits = (
        metric(server, "vllm:prefix_cache_queries_total"),
        metric(server, "vllm:prefix_cache_hits_total"),
    )
    for _ in range(2):  # a second run with the same prompts does not hit the first's either
        loadtest.run(server, model, api_key=API_KEY, requests=6, max_tokens=2, prompt=LONG_PROMPT)
    assert metric(server, "vllm:prefix_cache_queries_total") - queries >= 12 * 50
    assert metric(server, "vllm:prefix_cache_hits_total") == hits
    # A number at the end instead, as the load test once did: every request after the first hits.
    with client.make_client(server, API_KEY) as http:
        for i in range(2):
            client.chat(http, model, [{"role": "user", "content": f"{LONG_PROMPT} (#{i})"}], 2)
    assert metric(server, "vllm:prefix_cache_hits_total") - hits >= 48


def test_failures_are_counted_not_timed(server: str) -> None:
    report = loadtest.run(server, "no-such-model", api_key=API_KEY, requests=3, concurrency=3)
    assert report.failures == 3
    assert report.completion_tokens == 0
    assert math.isnan(report.latency_p50_s)


def test_command_line_json(
    server: str, settings: ServeSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(settings.api_key_env, API_KEY)
    code = loadtest.main(["--url", server, "--requests", "4", "--concurrency", "2",
                          "--max-tokens", "3", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["mode"], report["requests"], report["concurrency"]) == ("closed", 4, 2)
    assert report["completion_tokens"] == 12
    code = loadtest.main(["--url", server, "--requests", "4", "--rate", "50", "--seed", "3",
                          "--max-tokens", "3", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["mode"], report["request_rate"], report["seed"]) == ("open", 50.0, 3)
    assert report["concurrency"] is None
    assert report["completion_tokens"] == 12
    assert loadtest.main(["--url", server, "--requests", "2", "--max-tokens", "3"]) == 0
    assert "closed loop" in capsys.readouterr().out
    assert loadtest.main(["--url", server, "--requests", "2", "--rate", "40"]) == 0
    assert "open loop, 40 requests/s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        loadtest.main(["--url", server, "--rate", "5", "--concurrency", "2"])
