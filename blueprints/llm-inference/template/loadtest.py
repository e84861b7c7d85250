"""A small load test of streamed chat requests: latency and first-token percentiles, tokens/s.

    python loadtest.py --requests 64 --concurrency 8     # closed loop: 8 in flight at all times
    python loadtest.py --requests 200 --rate 5 --seed 1  # open loop: 5 requests/s, Poisson
    python loadtest.py --json > result.json

A closed loop sends the next request when one finishes, so a slow server slows the load down and
hides its queue; an open loop sends requests at random (Poisson) arrival times whatever the server
does, as independent users do, so queueing shows in the latencies. The arrival times come from
`--seed`: the same seed, the same schedule. There is no cap on open connections (httpx's default
pool stops at 100).

Every prompt starts with a part no other prompt has (this run's id and the request's number), so
vLLM's prefix cache cannot serve one request's prompt from another's; only the chat template in
front of it is shared, as in real traffic. Each request is streamed, so the time to its first token
is measured as well as its total latency; the server reports the completion tokens in its final
usage chunk. Tokens/s is all completion tokens divided by the wall time of the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from client import auth_headers, base_url
from serve import ConfigError, load_settings

PROMPT = "Explain in one paragraph why the carbon intensity of electricity varies."


@dataclass(frozen=True)
class Sample:
    """One request: seconds to the first token and to the end, completion tokens, error if any."""

    ttft_s: float
    latency_s: float
    tokens: int
    error: str | None = None


@dataclass(frozen=True)
class Report:
    """What a load test measured. Latencies in seconds; failed requests are left out of them.

    `mode` is "closed" (`concurrency` requests in flight) or "open" (`request_rate` requests/s
    offered, Poisson arrivals drawn from `seed`); `max_in_flight` is the most requests that were
    in flight at once.
    """

    mode: str
    requests: int
    failures: int
    concurrency: int | None
    request_rate: float | None
    seed: int | None
    max_in_flight: int
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


def arrival_offsets(rate: float, count: int, seed: int) -> list[float]:
    """Seconds from the start at which `count` requests arrive: a Poisson process of `rate` per
    second (independent exponential gaps), the same for the same seed."""
    if rate <= 0:
        raise ValueError("the request rate must be more than 0")
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(count):
        t += rng.expovariate(rate)
        offsets.append(t)
    return offsets


def prompts(count: int, base: str = PROMPT, run_id: str | None = None) -> list[str]:
    """`count` prompts that share no prefix: each starts with the run's id and its own number,
    so neither another request of this run nor one of an earlier run is a cache hit."""
    run = run_id or secrets.token_hex(4)
    return [f"{run}-{i}: {base}" for i in range(count)]


class _InFlight:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *_: object) -> None:
        self.now -= 1


async def one_request(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> Sample:
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
        async with client.stream("POST", "chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Sample(math.nan, math.nan, 0, f"HTTP {response.status_code}")
            done = False
            async for line in response.aiter_lines():
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


async def _closed_loop(send: _Send, texts: Sequence[str], concurrency: int) -> list[Sample]:
    samples: list[Sample | None] = [None] * len(texts)
    queue = iter(range(len(texts)))

    async def worker() -> None:
        for i in queue:  # the workers share one iterator: each index is taken once
            samples[i] = await send(texts[i])

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(texts))):
            group.create_task(worker())
    return [s for s in samples if s is not None]


async def _open_loop(send: _Send, texts: Sequence[str], offsets: Sequence[float]) -> list[Sample]:
    start = time.perf_counter()
    tasks = []
    async with asyncio.TaskGroup() as group:
        for text, offset in zip(texts, offsets, strict=True):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            tasks.append(group.create_task(send(text)))
    return [task.result() for task in tasks]


class _Send:
    """Sends one prompt and counts the requests in flight."""

    def __init__(self, client: httpx.AsyncClient, model: str, max_tokens: int) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens
        self.in_flight = _InFlight()

    async def __call__(self, prompt: str) -> Sample:
        with self.in_flight:
            return await one_request(self.client, self.model, prompt, self.max_tokens)


def summarise(
    samples: Sequence[Sample],
    wall_s: float,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    seed: int | None = None,
    max_in_flight: int = 0,
) -> Report:
    """Aggregate samples into a report."""
    ok = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in ok)
    return Report(
        mode="open" if rate is not None else "closed",
        requests=len(samples),
        failures=len(samples) - len(ok),
        concurrency=concurrency if rate is None else None,
        request_rate=rate,
        seed=seed if rate is not None else None,
        max_in_flight=max_in_flight,
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
    rate: float | None = None,
    seed: int = 0,
    max_tokens: int = 64,
    prompt: str = PROMPT,
    timeout: float = 300.0,
) -> Report:
    """Send `requests` requests, in a closed loop of `concurrency` or, given a `rate`, in an open
    loop of Poisson arrivals, and report what was measured."""
    offsets = arrival_offsets(rate, requests, seed) if rate is not None else None
    samples, wall, peak = asyncio.run(
        _send_all(url, model, api_key, prompts(requests, prompt), offsets, concurrency,
                  max_tokens, timeout)
    )  # fmt: skip
    return summarise(
        samples, wall, concurrency=concurrency, rate=rate, seed=seed, max_in_flight=peak
    )


async def _send_all(
    url: str,
    model: str,
    api_key: str | None,
    texts: Sequence[str],
    offsets: Sequence[float] | None,
    concurrency: int,
    max_tokens: int,
    timeout: float,
) -> tuple[list[Sample], float, int]:
    """The samples, the wall time and the most requests in flight at once."""
    # No cap on connections: an open loop must never wait for a free one (httpx's default is 100).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/") + "/", headers=auth_headers(api_key), timeout=timeout,
        limits=limits,
    ) as client:  # fmt: skip
        send = _Send(client, model, max_tokens)
        start = time.perf_counter()
        if offsets is None:
            samples = await _closed_loop(send, texts, concurrency)
        else:
            samples = await _open_loop(send, texts, offsets)
        return samples, time.perf_counter() - start, send.in_flight.peak


def render(report: Report) -> str:
    """The report for people."""
    ms = 1000
    if report.mode == "open":
        load = (f"open loop, {report.request_rate:g} requests/s offered (Poisson, seed "
                f"{report.seed}), up to {report.max_in_flight} in flight")  # fmt: skip
    else:
        load = f"closed loop, {report.concurrency} at a time"
    return "\n".join([
        f"requests     {report.requests} ({report.failures} failed), {load}, "
        f"{report.wall_s:.2f} s",
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
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=4, help="closed loop: requests at once")
    load.add_argument("--rate", type=float, help="open loop: requests/s, Poisson arrivals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the open loop's arrivals")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    if args.rate is not None and not args.rate > 0:
        parser.error("--rate must be more than 0")
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
        rate=args.rate,
        seed=args.seed,
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
