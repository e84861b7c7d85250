"""A small load test: N streamed chat requests, C at a time; latency percentiles and tokens/s.

    python loadtest.py --requests 64 --concurrency 8 --max-tokens 128
    python loadtest.py --json > result.json

Each request is streamed, so the time to its first token is measured as well as its total
latency; the server reports the completion tokens in its final usage chunk. Tokens/s is all
completion tokens divided by the wall time of the whole run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from client import base_url, make_client
from serve import ConfigError, load_settings


@dataclass(frozen=True)
class Sample:
    """One request: seconds to the first token and to the end, completion tokens, error if any."""

    ttft_s: float
    latency_s: float
    tokens: int
    error: str | None = None


@dataclass(frozen=True)
class Report:
    """What a load test measured. Latencies in seconds; failed requests are left out of them."""

    requests: int
    failures: int
    concurrency: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    ttft_p50_s: float
    ttft_p95_s: float


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def one_request(client: httpx.Client, model: str, prompt: str, max_tokens: int) -> Sample:
    """Send one streamed chat request and time it."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = math.nan
    tokens = 0
    try:
        with client.stream("POST", "chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                return Sample(math.nan, math.nan, 0, f"HTTP {response.status_code}")
            done = False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if math.isnan(ttft) and any(
                    c.get("delta", {}).get("content") for c in chunk["choices"]
                ):
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
            if not done:
                return Sample(math.nan, math.nan, 0, "stream ended before [DONE]")
    except httpx.HTTPError as exc:
        return Sample(math.nan, math.nan, 0, f"{type(exc).__name__}: {exc}")
    return Sample(ttft, time.perf_counter() - start, tokens)


def summarise(samples: Sequence[Sample], concurrency: int, wall_s: float) -> Report:
    """Aggregate samples into a report."""
    ok = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in ok)
    return Report(
        requests=len(samples),
        failures=len(samples) - len(ok),
        concurrency=concurrency,
        wall_s=wall_s,
        completion_tokens=tokens,
        tokens_per_s=tokens / wall_s if wall_s > 0 else math.nan,
        latency_p50_s=percentile([s.latency_s for s in ok], 50),
        latency_p95_s=percentile([s.latency_s for s in ok], 95),
        ttft_p50_s=percentile([s.ttft_s for s in ok], 50),
        ttft_p95_s=percentile([s.ttft_s for s in ok], 95),
    )


def run(
    url: str,
    model: str,
    *,
    api_key: str | None = None,
    requests: int = 32,
    concurrency: int = 4,
    max_tokens: int = 64,
    prompt: str = "Explain in one paragraph why the carbon intensity of electricity varies.",
) -> Report:
    """Send `requests` requests, `concurrency` at a time, and report what was measured."""
    with make_client(url, api_key) as client, ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        # Distinct prompts, so a prefix cache cannot make every request but the first free.
        futures = [
            pool.submit(one_request, client, model, f"{prompt} (#{i})", max_tokens)
            for i in range(requests)
        ]
        samples = [f.result() for f in futures]
        wall = time.perf_counter() - start
    return summarise(samples, concurrency, wall)


def render(report: Report) -> str:
    """The report for people."""
    ms = 1000
    return "\n".join([
        f"requests     {report.requests} ({report.failures} failed), "
        f"{report.concurrency} at a time, {report.wall_s:.2f} s",
        f"latency      p50 {report.latency_p50_s * ms:.0f} ms   "
        f"p95 {report.latency_p95_s * ms:.0f} ms",
        f"first token  p50 {report.ttft_p50_s * ms:.0f} ms   p95 {report.ttft_p95_s * ms:.0f} ms",
        f"throughput   {report.tokens_per_s:.1f} completion tokens/s "
        f"({report.completion_tokens} tokens)",
    ])  # fmt: skip


def _finite_or_none(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test against the configured server; exit 1 if any request failed."""
    parser = argparse.ArgumentParser(description="Load-test the served model.")
    parser.add_argument("--config", type=Path, default=Path("harchos.toml"))
    parser.add_argument("--url", help="API base URL (default: $OPENAI_BASE_URL or harchos.toml)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run(
        args.url or base_url(settings),
        settings.served_model_name,
        api_key=os.environ.get(settings.api_key_env),
        requests=args.requests,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
    )
    if args.json:
        # JSON has no NaN: a figure with no successful request behind it is null.
        fields = {k: _finite_or_none(v) for k, v in asdict(report).items()}
        print(json.dumps(fields, indent=2))
    else:
        print(render(report))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
