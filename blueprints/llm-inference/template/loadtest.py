"""Load-test the served model: streamed requests, TTFT, ITL, TPOT and latency percentiles.

    python loadtest.py                                   # prompts.jsonl, a closed loop of 4 users
    python loadtest.py --concurrency 16                  # closed loop: 16 users
    python loadtest.py --rate 5 --seed 1                 # open loop: 5 requests/s, Poisson
    python loadtest.py --rate inf --max-concurrency 32   # open loop: all at once, 32 in flight
    python loadtest.py --synthetic --input-len 512 --output-len 128 --num-prompts 200
    python loadtest.py --result-file result.json --percentiles 50,90,95,99

This is a small, dependency-light version of vLLM's own serving benchmark, for trying a deployment
from a laptop or CI. For the real measurement of a model on a GPU, use `vllm bench serve` (vLLM's
`benchmarks/benchmark_serving.py` before 0.10): it counts tokens with the model's tokenizer, has
more datasets (ShareGPT, random, sonnet, Hugging Face) and more options. It reads the prompts of
this project's file (the output length is its `--custom-output-len`; the key goes in
`OPENAI_API_KEY`):

    vllm bench serve --backend openai-chat --endpoint /v1/chat/completions \\
        --base-url http://HOST:PORT --model MODEL --served-model-name NAME \\
        --dataset-name custom --dataset-path prompts.jsonl --custom-skip-chat-template \\
        --custom-output-len 128 --request-rate 5 --max-concurrency 32

The load. A closed loop (`--concurrency N`) is N users, each sending its next request when its last
one ends: a slow server slows the load down and hides its queue. An open loop (`--rate R`) sends
requests at Poisson arrival times, R a second on average, whatever the server does, as independent
users do, so queueing shows in the latencies; `--rate inf` sends them all at once, and
`--max-concurrency M` caps what is in flight (a request due while M are waits for one to end;
its latencies are counted from when it is sent, its wait is `queued_s` in the result file).
`--burstiness B` draws gamma-distributed gaps instead (B < 1 burstier, B > 1 more regular; 1 is
Poisson), as vLLM does. The same `--seed`, the same schedule. There is no cap on connections.

The prompts. `prompts.jsonl` holds one JSON object a line: `{"prompt": "...", "output_tokens": 128}`
(`output_tokens`, the length to ask for, is optional; other keys are ignored, so vLLM's `custom`
files work too). `--synthetic` makes prompts of `--input-len` random words instead. Requests take
the prompts in order (cycling if `--num-prompts` asks for more); each asks for `--output-len`
tokens, else the prompt's own `output_tokens`, else 128. Each prompt starts with a part no other has
(this run's id and the request's number), so vLLM's prefix cache cannot serve one request's prompt
from another's (`--no-unique-prefix` sends them as they are).

The figures, as `vllm bench serve` defines them, over the successful requests only:
- TTFT, time to first token: from sending the request to the first chunk that carries text;
- ITL, inter-token latency: the gaps between successive text chunks (all requests pooled);
- TPOT, time per output token: (latency - TTFT) / (output tokens - 1), per request;
- E2EL, end-to-end latency: from sending the request to the end of its stream (`data: [DONE]`);
- throughput: completed requests, output tokens and all tokens per second of the whole run.
Token counts are the server's (the `usage` of the last chunk). A request fails on an HTTP error, a
broken connection, an error event or a stream that ends without `[DONE]`; failures are counted
and their errors listed, never timed. `--goodput ttft:500 e2el:5000` (milliseconds) also counts
the requests per second that met every one of those objectives. The exit code is 1 if any request
failed, 2 for bad options or a bad prompt file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from client import ServerError, auth_headers, base_url, wait_ready
from serve import ConfigError, load_settings

HERE = Path(__file__).resolve().parent
DEFAULT_DATASET = HERE / "prompts.jsonl"
DEFAULT_OUTPUT_LEN = 128
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
ENDPOINTS = {"chat": "chat/completions", "completions": "completions"}
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
# Words for synthetic prompts: common English, so a tokenizer makes about one token of each.
_TEXT = (
    "the of and to in is for on that with as by at from it an be this which or are was power "
    "grid wind solar energy carbon model data time hour region night day price load demand supply "
    "green low high peak storage battery network cloud server request token answer question"
)
_WORDS = tuple(_TEXT.split())


class DatasetError(ValueError):
    """The prompt file is missing, empty or holds a bad line."""


@dataclass(frozen=True)
class Prompt:
    """One entry of the prompt file: the text, and the output length to ask for if it says."""

    text: str
    output_tokens: int | None = None


@dataclass(frozen=True)
class Request:
    """One request to send: the prompt as sent, and `max_tokens`."""

    prompt: str
    max_tokens: int


@dataclass
class Outcome:
    """What happened to one request. Offsets in seconds from the start of the run; `ttft_s`,
    `e2el_s` and the token counts mean nothing when `error` is set."""

    index: int
    scheduled_s: float | None = None  # open loop: when it was due
    sent_s: float = math.nan
    ttft_s: float = math.nan
    itl_s: list[float] = field(default_factory=list)
    e2el_s: float = math.nan
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first; NaN with one token or none."""
        if not self.ok or self.output_tokens < 2:
            return math.nan
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def queued_s(self) -> float:
        """Open loop: how long it waited for `--max-concurrency` after it was due."""
        return 0.0 if self.scheduled_s is None else max(0.0, self.sent_s - self.scheduled_s)


@dataclass(frozen=True)
class Stats:
    """One latency over the successful requests, in milliseconds: mean, standard deviation (of
    the population, as numpy's) and the chosen percentiles, keyed "p50", "p99", "p99.9"."""

    mean_ms: float
    std_ms: float
    percentiles_ms: dict[str, float]
    count: int


@dataclass(frozen=True)
class Report:
    """What a load test measured (the result file holds the same, plus each request)."""

    mode: str  # "closed" or "open"
    endpoint: str
    model: str
    dataset: str
    num_prompts: int
    concurrency: int | None  # closed loop: users
    request_rate: float | None  # open loop: requests/s offered, inf for all at once
    burstiness: float | None
    max_concurrency: int | None
    seed: int
    warmups: int
    completed: int
    failed: int
    errors: dict[str, int]
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_in_flight: int
    goodput_slos_ms: dict[str, float]
    request_goodput: float | None
    ttft: Stats
    tpot: Stats
    itl: Stats
    e2el: Stats
    outcomes: list[Outcome] = field(repr=False)


# --- prompts -------------------------------------------------------------------------------------


def load_dataset(path: Path) -> list[Prompt]:
    """The prompts of a JSONL file: one object a line with a non-empty `prompt` and an optional
    positive integer `output_tokens`; blank lines are skipped, other keys ignored.

    Raises:
        DatasetError: the file cannot be read, holds no prompt, or a line is bad (with its number).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: {exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{where}: not JSON ({exc})") from None
        if not isinstance(entry, dict):
            raise DatasetError(f'{where}: expected an object such as {{"prompt": "..."}}')
        text = entry.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f'{where}: "prompt" must be a non-empty string')
        tokens = entry.get("output_tokens")
        if tokens is not None and (
            not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1
        ):
            raise DatasetError(f'{where}: "output_tokens" must be a positive integer')
        prompts.append(Prompt(text, tokens))
    if not prompts:
        raise DatasetError(f"{path}: no prompts")
    return prompts


def synthetic_prompts(count: int, input_len: int, seed: int = 0) -> list[Prompt]:
    """`count` prompts of `input_len` random words each, the same for the same seed."""
    if count < 1 or input_len < 1:
        raise ValueError("count and input_len must be at least 1")
    rng = random.Random(seed)
    return [Prompt(" ".join(rng.choices(_WORDS, k=input_len))) for _ in range(count)]


def make_requests(
    prompts: Sequence[Prompt],
    count: int,
    *,
    output_len: int | None = None,
    unique_prefix: bool = True,
    run_id: str | None = None,
) -> list[Request]:
    """`count` requests over `prompts` in order, cycling. Each asks for `output_len` tokens, else
    its prompt's `output_tokens`, else DEFAULT_OUTPUT_LEN. With `unique_prefix`, each prompt
    starts with the run's id and its own number, so neither another request of this run nor one
    of an earlier run shares its prefix."""
    if not prompts or count < 1:
        raise ValueError("need at least one prompt and one request")
    run = run_id or secrets.token_hex(4)
    requests = []
    for i in range(count):
        prompt = prompts[i % len(prompts)]
        text = f"{run}-{i}: {prompt.text}" if unique_prefix else prompt.text
        requests.append(Request(text, output_len or prompt.output_tokens or DEFAULT_OUTPUT_LEN))
    return requests


# --- arrivals and statistics ---------------------------------------------------------------------


def arrival_offsets(rate: float, count: int, seed: int, burstiness: float = 1.0) -> list[float]:
    """Seconds from the start at which `count` requests arrive, the same for the same seed.

    Gaps are exponential with mean 1/rate (a Poisson process) when `burstiness` is 1, else gamma
    with shape `burstiness` and the same mean, as `vllm bench serve --burstiness`. A rate of inf
    sends everything at 0.
    """
    if not rate > 0:
        raise ValueError("the request rate must be more than 0")
    if not burstiness > 0:
        raise ValueError("the burstiness must be more than 0")
    if math.isinf(rate):
        return [0.0] * count
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(count):
        if burstiness == 1.0:
            t += rng.expovariate(rate)
        else:
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        offsets.append(t)
    return offsets


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100), interpolated linearly between the nearest ranks as numpy's
    default (and so `vllm bench serve`) does; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("a percentile is between 0 and 100")
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentile_key(q: float) -> str:
    """ "p50" for 50, "p99.9" for 99.9."""
    return f"p{q:g}"


def stats(values_s: Sequence[float], percentiles: Sequence[float]) -> Stats:
    """Mean, population standard deviation and percentiles of `values_s`, in milliseconds."""
    values = [v * 1000 for v in values_s if not math.isnan(v)]
    return Stats(
        mean_ms=statistics.fmean(values) if values else math.nan,
        std_ms=statistics.pstdev(values) if values else math.nan,
        percentiles_ms={percentile_key(q): percentile(values, q) for q in percentiles},
        count=len(values),
    )


# --- sending -------------------------------------------------------------------------------------


def _error_text(response: httpx.Response) -> str:
    """`HTTP 404: the server's message`, from an OpenAI-style or plain error body."""
    message = response.text.strip()
    try:
        body = json.loads(message)
        if isinstance(body, dict):
            detail = body.get("error", body.get("detail", body))
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
            message = str(detail)
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {message[:200]}".rstrip(": ")


def _text_of(choice: Mapping[str, Any], chat: bool) -> str:
    if not chat:
        return str(choice.get("text") or "")
    delta = choice.get("delta") or {}
    # Reasoning models stream their thinking first, in a field of its own; it is output too.
    return str(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
               or "")  # fmt: skip


async def send_one(
    client: httpx.AsyncClient, model: str, request: Request, outcome: Outcome, endpoint: str,
    clock_zero: float,
) -> None:  # fmt: skip
    """Send one streamed request and record its timings in `outcome`."""
    chat = endpoint == "chat"
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    start = time.perf_counter()
    outcome.sent_s = start - clock_zero
    last_token = start
    chunks = 0
    usage: Mapping[str, Any] = {}
    try:
        async with client.stream("POST", ENDPOINTS[endpoint], json=body) as response:
            if response.status_code != 200:
                await response.aread()
                outcome.error = _error_text(response)
                return
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and ": ping" comments
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    outcome.error = f"not an OpenAI stream chunk: {data[:100]}"
                    return
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    outcome.error = f"error event: {message}"[:200]
                    return
                if any(_text_of(c, chat) for c in chunk.get("choices") or ()):
                    if chunks == 0:
                        outcome.ttft_s = now - start
                    else:
                        outcome.itl_s.append(now - last_token)
                    chunks += 1
                    last_token = now
                usage = chunk.get("usage") or usage
            end = time.perf_counter()
    except (httpx.HTTPError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        return
    if not done:
        outcome.error = "the stream ended before data: [DONE]"
    elif chunks == 0:
        outcome.error = "the stream held no text"
    else:
        outcome.e2el_s = end - start
        # The server's counts; without a usage chunk, one token a text chunk and no prompt count.
        outcome.output_tokens = _count(usage.get("completion_tokens")) or chunks
        outcome.prompt_tokens = _count(usage.get("prompt_tokens"))


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class _Sender:
    """Sends requests on one client and counts those in flight."""

    def __init__(self, client: httpx.AsyncClient, model: str, endpoint: str) -> None:
        self.client, self.model, self.endpoint = client, model, endpoint
        self.clock_zero = time.perf_counter()
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, request: Request, outcome: Outcome) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await send_one(self.client, self.model, request, outcome, self.endpoint,
                           self.clock_zero)  # fmt: skip
        finally:
            self.in_flight -= 1


async def _closed_loop(send: _Sender, requests: Sequence[Request], users: int) -> list[Outcome]:
    outcomes = [Outcome(i) for i in range(len(requests))]
    queue = iter(range(len(requests)))

    async def user() -> None:
        for i in queue:  # the users share one iterator: each request is taken once
            await send(requests[i], outcomes[i])

    async with asyncio.TaskGroup() as group:
        for _ in range(min(users, len(requests))):
            group.create_task(user())
    return outcomes


async def _open_loop(
    send: _Sender, requests: Sequence[Request], offsets: Sequence[float],
    max_concurrency: int | None,
) -> list[Outcome]:  # fmt: skip
    outcomes = [Outcome(i, scheduled_s=offset) for i, offset in enumerate(offsets)]
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def due(i: int) -> None:
        if limit is None:
            await send(requests[i], outcomes[i])
        else:
            async with limit:
                await send(requests[i], outcomes[i])

    async with asyncio.TaskGroup() as group:
        for i, offset in enumerate(offsets):
            # Never early: the event loop may wake a sleeper a clock tick before its time.
            while (delay := send.clock_zero + offset - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            group.create_task(due(i))
    return outcomes


async def _send_all(
    url: str, model: str, api_key: str | None, requests: Sequence[Request],
    warmup: Sequence[Request], *, endpoint: str, users: int | None,
    offsets: Sequence[float] | None, max_concurrency: int | None, timeout: float,
) -> tuple[list[Outcome], float, int]:  # fmt: skip
    """The outcomes, the wall time of the measured run and the most requests in flight at once."""
    # No cap on connections: an open loop must never wait for a free one (httpx's default is 100).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/") + "/", headers=auth_headers(api_key), timeout=timeout,
        limits=limits,
    ) as client:  # fmt: skip
        if warmup:
            warm = _Sender(client, model, endpoint)
            await _closed_loop(warm, warmup, users or max_concurrency or len(warmup))
        send = _Sender(client, model, endpoint)
        if offsets is None:
            outcomes = await _closed_loop(send, requests, users or 1)
        else:
            outcomes = await _open_loop(send, requests, offsets, max_concurrency)
        return outcomes, time.perf_counter() - send.clock_zero, send.peak


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """`["ttft:500", "e2el:3000"]` as {"ttft": 500.0, "e2el": 3000.0} (milliseconds).

    Raises:
        ValueError: an unknown metric, a bad number or one not above 0.
    """
    slos = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in GOODPUT_METRICS:
            raise ValueError(f"goodput takes {', '.join(GOODPUT_METRICS)}, not {name!r}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"goodput {item!r}: expected {name}:MILLISECONDS") from None
        if not slos[name] > 0:
            raise ValueError(f"goodput {item!r}: the objective must be more than 0 ms")
    return slos


def _meets(outcome: Outcome, slos: Mapping[str, float]) -> bool:
    values = {"ttft": outcome.ttft_s, "tpot": outcome.tpot_s, "e2el": outcome.e2el_s}
    # One output token has no TPOT; like vLLM, it meets any TPOT objective.
    return all(math.isnan(values[name]) or values[name] * 1000 <= slo for name, slo in slos.items())


def summarise(
    outcomes: Sequence[Outcome],
    duration_s: float,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput: Mapping[str, float] | None = None,
    **settings: Any,
) -> Report:
    """Aggregate the outcomes into a report; `settings` are the load's (mode, model, ...)."""
    ok = [o for o in outcomes if o.ok]
    inputs = sum(o.prompt_tokens for o in ok)
    outputs = sum(o.output_tokens for o in ok)

    def per_s(count: int) -> float:
        return count / duration_s if duration_s > 0 else math.nan

    slos = dict(goodput or {})
    return Report(
        **settings,
        num_prompts=len(outcomes),
        completed=len(ok),
        failed=len(outcomes) - len(ok),
        errors=dict(Counter(o.error for o in outcomes if o.error is not None).most_common()),
        duration_s=duration_s,
        total_input_tokens=inputs,
        total_output_tokens=outputs,
        request_throughput=per_s(len(ok)),
        output_throughput=per_s(outputs),
        total_token_throughput=per_s(inputs + outputs),
        goodput_slos_ms=slos,
        request_goodput=per_s(sum(_meets(o, slos) for o in ok)) if slos else None,
        ttft=stats([o.ttft_s for o in ok], percentiles),
        tpot=stats([o.tpot_s for o in ok], percentiles),
        itl=stats([gap for o in ok for gap in o.itl_s], percentiles),
        e2el=stats([o.e2el_s for o in ok], percentiles),
        outcomes=list(outcomes),
    )


def run(
    url: str,
    model: str,
    requests: Sequence[Request],
    *,
    api_key: str | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    max_concurrency: int | None = None,
    burstiness: float = 1.0,
    seed: int = 0,
    endpoint: str = "chat",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput: Mapping[str, float] | None = None,
    warmup: int = 0,
    dataset: str = "",
    timeout: float = 300.0,
) -> Report:
    """Send `requests`: in a closed loop of `concurrency` users (default 4) or, given a `rate`
    (requests/s, inf for all at once), in an open loop of seeded Poisson (or gamma) arrivals with
    at most `max_concurrency` in flight. `warmup` requests go first and are not measured."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint is one of {', '.join(ENDPOINTS)}")
    if rate is not None and concurrency is not None:
        raise ValueError("a closed loop (concurrency) or an open loop (rate), not both")
    if rate is None and (max_concurrency is not None or burstiness != 1.0):
        raise ValueError("max_concurrency and burstiness belong to an open loop (a rate)")
    users = None if rate is not None else (concurrency or 4)
    offsets = None if rate is None else arrival_offsets(rate, len(requests), seed, burstiness)
    extra = [Request(f"warmup-{requests[i % len(requests)].prompt}",
                     requests[i % len(requests)].max_tokens) for i in range(warmup)]  # fmt: skip
    outcomes, duration, peak = asyncio.run(_send_all(
        url, model, api_key, requests, extra, endpoint=endpoint, users=users, offsets=offsets,
        max_concurrency=max_concurrency, timeout=timeout,
    ))  # fmt: skip
    return summarise(
        outcomes, duration, percentiles=percentiles, goodput=goodput,
        mode="closed" if rate is None else "open", endpoint=ENDPOINTS[endpoint], model=model,
        dataset=dataset, concurrency=users, request_rate=rate,
        burstiness=None if rate is None else burstiness,
        max_concurrency=max_concurrency, seed=seed, warmups=len(extra), max_in_flight=peak,
    )  # fmt: skip


# --- output --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: a figure with nothing behind it is null, an infinite rate
    is the string "inf" (as `--rate inf`)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf"
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_json(report: Report, **extra: Any) -> dict[str, Any]:
    """The result file's content: the report's fields, each request, and `extra` (url, date)."""
    fields = {k: v for k, v in asdict(report).items() if k != "outcomes"}
    fields["requests"] = [
        {"index": o.index, "scheduled_s": o.scheduled_s, "sent_s": o.sent_s,
         "queued_s": o.queued_s, "ttft_ms": o.ttft_s * 1000, "tpot_ms": o.tpot_s * 1000,
         "e2el_ms": o.e2el_s * 1000, "itl_ms": [g * 1000 for g in o.itl_s],
         "prompt_tokens": o.prompt_tokens, "output_tokens": o.output_tokens, "error": o.error}
        for o in report.outcomes
    ]  # fmt: skip
    result: dict[str, Any] = _plain({"tool": "loadtest.py", **extra, **fields})
    return result


def describe_load(report: Report) -> str:
    """ "closed loop, 4 users" or "open loop, 5 requests/s (Poisson, seed 1), ..."."""
    if report.mode == "closed":
        return f"closed loop, {report.concurrency} users"
    assert report.request_rate is not None
    if math.isinf(report.request_rate):
        load = "open loop, all at once"
    else:
        kind = "Poisson" if report.burstiness == 1.0 else f"gamma, burstiness {report.burstiness:g}"
        load = f"open loop, {report.request_rate:g} requests/s ({kind}, seed {report.seed})"
    if report.max_concurrency:
        load += f", at most {report.max_concurrency} in flight"
    return load


def render(report: Report) -> str:
    """The report as a table for people."""

    def row(name: str, value: str) -> str:
        return f"{name:<34}{value}"

    lines = [
        " Load test ".center(66, "="),
        row("Load", describe_load(report)),
        row("Endpoint", f"/v1/{report.endpoint}, model {report.model}"),
        row("Prompts", report.dataset or "-"),
        row("Successful requests", str(report.completed)),
        row("Failed requests", str(report.failed)),
        row("Duration (s)", f"{report.duration_s:.2f}"),
        row("Total input tokens", str(report.total_input_tokens)),
        row("Total output tokens", str(report.total_output_tokens)),
        row("Request throughput (req/s)", f"{report.request_throughput:.2f}"),
        row("Output token throughput (tok/s)", f"{report.output_throughput:.1f}"),
        row("Total token throughput (tok/s)", f"{report.total_token_throughput:.1f}"),
        row("Peak requests in flight", str(report.max_in_flight)),
    ]
    if report.request_goodput is not None:
        slos = ", ".join(f"{k} <= {v:g} ms" for k, v in report.goodput_slos_ms.items())
        lines.append(row("Goodput (req/s)", f"{report.request_goodput:.2f} ({slos})"))
    keys = list(report.ttft.percentiles_ms)
    lines += ["-" * 66, f"{'(ms)':<6}" + "".join(f"{k:>10}" for k in ["mean", "std", *keys])]
    for name, s in (("TTFT", report.ttft), ("TPOT", report.tpot), ("ITL", report.itl),
                    ("E2EL", report.e2el)):  # fmt: skip
        figures = [s.mean_ms, s.std_ms, *s.percentiles_ms.values()]
        lines.append(f"{name:<6}" + "".join(f"{v:>10.1f}" for v in figures))
    for error, count in list(report.errors.items())[:5]:
        lines.append(f"failed {count}x: {error}")
    lines.append("=" * 66)
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------


def _rate(text: str) -> float:
    value = float(text)  # "inf" parses as infinity
    if not value > 0:
        raise argparse.ArgumentTypeError("the rate must be more than 0, or inf")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated numbers, e.g. 50,90,99") from None
    if not values or not all(0 < v <= 100 for v in values):
        raise argparse.ArgumentTypeError("percentiles between 0 and 100, e.g. 50,90,99")
    return values


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python loadtest.py",
        description="Load-test the served model: streamed requests in a closed or an open loop; "
        "TTFT, ITL, TPOT and end-to-end latency percentiles, throughput, failures.",
        epilog="For the real benchmark of a model on its GPU, use vLLM's own `vllm bench serve` "
        "(it reads the prompts of prompts.jsonl with `--dataset-name custom --dataset-path "
        "prompts.jsonl --custom-skip-chat-template`).",
    )
    p.add_argument("--config", type=Path, default=Path("harchos.toml"))
    p.add_argument("--url", help="API base URL (default: $OPENAI_BASE_URL or harchos.toml)")
    p.add_argument("--model", help="model name to ask for (default: [serve] served_model_name)")
    p.add_argument("--endpoint", choices=list(ENDPOINTS), default="chat",
                   help="/v1/chat/completions (default) or /v1/completions")  # fmt: skip
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for /health first")
    load = p.add_argument_group("load (a closed loop of 4 users unless --rate)")
    loop = load.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=_positive,
                      help="closed loop: N users, each sending its next request when its last "
                      "one ends")  # fmt: skip
    loop.add_argument(
        "--rate",
        type=_rate,
        help="open loop: requests/s with Poisson arrivals, or inf for all at once",
    )
    load.add_argument("--max-concurrency", type=_positive,
                      help="open loop: at most this many requests in flight")  # fmt: skip
    load.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="open loop: gamma-distributed gaps, 1 = Poisson (default)",
    )
    load.add_argument("--seed", type=int, default=0, help="seed of arrivals and synthetic prompts")
    load.add_argument("--warmup", type=int, default=0, help="unmeasured requests sent first")
    data = p.add_argument_group("prompts")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                        help="JSONL file of {\"prompt\": ..., \"output_tokens\": N} "
                        "(default: prompts.jsonl)")  # fmt: skip
    source.add_argument("--synthetic", action="store_true",
                        help="random prompts of --input-len words instead")  # fmt: skip
    data.add_argument("--input-len", type=_positive, default=256, help="synthetic: words a prompt")
    data.add_argument("--output-len", type=_positive,
                      help=f"tokens to ask for (default: the prompt's output_tokens, else "
                      f"{DEFAULT_OUTPUT_LEN})")  # fmt: skip
    data.add_argument(
        "--num-prompts",
        type=_positive,
        help="requests to send (default: the dataset's size; synthetic: 100)",
    )
    data.add_argument("--unique-prefix", action=argparse.BooleanOptionalAction, default=True,
                      help="start each prompt with the run's id and its number, so the prefix "
                      "cache cannot answer it from another (default: on)")  # fmt: skip
    out = p.add_argument_group("results")
    out.add_argument(
        "--percentiles",
        type=_percentiles,
        default=DEFAULT_PERCENTILES,
        help="which percentiles to report (default: 50,90,99)",
    )
    out.add_argument("--goodput", nargs="+", metavar="METRIC:MS", default=[],
                     help="objectives such as ttft:500 tpot:50 e2el:5000: also report the "
                     "requests/s that met them all")  # fmt: skip
    out.add_argument("--result-file", type=Path, help="write the results, each request's too, "
                     "as JSON")  # fmt: skip
    out.add_argument("--json", action="store_true", help="print the JSON results, not the table")
    out.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test against the configured server; exit 1 if any request failed."""
    p = parser()
    args = p.parse_args(argv)
    if args.rate is None and (args.max_concurrency is not None or args.burstiness != 1.0):
        p.error("--max-concurrency and --burstiness go with --rate (an open loop)")
    if not args.burstiness > 0 or args.warmup < 0:
        p.error("--burstiness must be more than 0, --warmup 0 or more")
    try:
        goodput = parse_goodput(args.goodput)
    except ValueError as exc:
        p.error(str(exc))
    try:
        settings = load_settings(args.config)
        if args.synthetic:
            prompts = synthetic_prompts(args.num_prompts or 100, args.input_len, args.seed)
            dataset = f"synthetic, {args.input_len} words a prompt"
        else:
            prompts = load_dataset(args.dataset)
            dataset = str(args.dataset)
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    requests = make_requests(
        prompts, args.num_prompts or len(prompts), output_len=args.output_len,
        unique_prefix=args.unique_prefix,
    )  # fmt: skip
    url = args.url or base_url(settings)
    if args.wait:
        try:
            wait_ready(url, args.wait)
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    report = run(
        url, args.model or settings.served_model_name, requests,
        api_key=os.environ.get(settings.api_key_env), concurrency=args.concurrency,
        rate=args.rate, max_concurrency=args.max_concurrency, burstiness=args.burstiness,
        seed=args.seed, endpoint=args.endpoint, percentiles=args.percentiles, goodput=goodput,
        warmup=args.warmup, dataset=dataset, timeout=args.timeout,
    )  # fmt: skip
    result = to_json(report, url=url, date=datetime.now(UTC).isoformat(timespec="seconds"))
    if args.result_file:
        args.result_file.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, indent=2, allow_nan=False) if args.json else render(report))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
