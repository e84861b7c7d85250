"""The load test against harchos's vLLM test double."""

from __future__ import annotations

import json
import math

import pytest
from conftest import API_KEY

import loadtest
from serve import ServeSettings


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(10, 0, -1)]
    assert loadtest.percentile(values, 50) == 5
    assert loadtest.percentile(values, 95) == 10
    assert loadtest.percentile(values, 10) == 1
    assert loadtest.percentile([3.0], 95) == 3
    assert math.isnan(loadtest.percentile([], 50))


def test_concurrent_requests_are_measured(server: str, settings: ServeSettings) -> None:
    report = loadtest.run(
        server, settings.served_model_name, api_key=API_KEY, requests=12, concurrency=4,
        max_tokens=8,
    )  # fmt: skip
    assert report.requests == 12
    assert report.failures == 0
    assert report.completion_tokens == 12 * 8
    assert 0 < report.ttft_p50_s <= report.latency_p50_s <= report.latency_p95_s
    assert report.ttft_p50_s <= report.ttft_p95_s
    assert report.tokens_per_s == pytest.approx(report.completion_tokens / report.wall_s)


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
    assert report["requests"] == 4
    assert report["completion_tokens"] == 12
    assert loadtest.main(["--url", server, "--requests", "2", "--max-tokens", "3"]) == 0
    assert "p95" in capsys.readouterr().out
