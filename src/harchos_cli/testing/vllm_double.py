"""A TEST DOUBLE for `vllm serve`. It is not vLLM and runs no model.

vLLM cannot run on CPU-only test machines, so serving tests (harchos's own and the serving
blueprints') talk to this stand-in instead, started by the very command line harchos gives vLLM:

    python -m harchos_cli.testing.vllm_double serve MODEL --served-model-name NAME --port 8000 ...
    python -m harchos_cli.testing.vllm_double --model MODEL --port 8000        # the older form

It copies the parts of vLLM's behaviour that harchos and its users depend on
(reference/launching.md, DESIGN.md "Serving contract"):

- vLLM's command line: `serve MODEL` (or `--model`), vLLM's flag names and types (`--max_model_len`
  spelt with underscores works too), `--api-key` or else `$VLLM_API_KEY`; flags that mean nothing
  here (`--dtype`, `--tensor-parallel-size`, ...) are parsed and ignored, an unknown flag exits 2;
- the port refuses connections while the "engine" starts (`--startup-delay`), then `/health`
  answers 200; after `POST /debug/kill-engine` it answers 503 and generation fails;
- the OpenAI-compatible `/v1/models`, `/v1/completions` and `/v1/chat/completions`, with SSE
  streaming (`"stream": true`, `data: {...}` chunks, `data: [DONE]`) and
  `stream_options.include_usage`; with an API key set, `/v1/*` needs `Authorization: Bearer KEY`
  (else 401) while `/health`, `/ping`, `/version` and `/metrics` stay open, as in vLLM;
- `/metrics` in Prometheus text format (written by prometheus_client, as vLLM's is) with vLLM's
  `vllm:` gauges, counters and histograms, labelled `model_name` and `engine="0"`, and vLLM's
  bucket boundaries;
- at most `--max-num-seqs` requests run at once, the rest wait (`vllm:num_requests_waiting`);
- prefix caching (on by default, as in vLLM's V1 engine): a prompt's leading blocks of
  `--block-size` tokens seen before count as hits in `vllm:prefix_cache_hits_total`;
- SIGTERM with `--shutdown-timeout N`: `/health` turns 503, new requests get 503, running and
  waiting ones get up to N seconds to finish and are then aborted; N=0 (vLLM's default) aborts
  them at once.

Text is fake and deterministic: a prompt is as many tokens as it has words, and the k-th generated
token is a word picked by a hash of the prompt and k, one every `--token-delay` seconds, always
`max_tokens` of them (default 16, finish reason "length"). For tests there are two more endpoints:
`POST /debug/hold` stops every request before its next token, `POST /debug/release` lets them go.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from harchos_cli.metrics import VLLM_METRICS
from harchos_cli.metrics import Metric as CatalogueMetric

__all__ = ["Engine", "Options", "fake_tokens", "main", "parse_args", "prompt_tokens"]

# vLLM's bucket boundaries for these two histograms: `PrometheusStatLogger` in
# vllm/v1/metrics/loggers.py of the V1 engine (the same lists at vLLM commits a6f0308c and
# 005a810b), moved unchanged to vllm/v1/metrics/buckets.py (TIME_TO_FIRST_TOKEN_BUCKETS,
# REQUEST_LATENCY_BUCKETS; commit 139b1c3f), where vLLM's own snapshot test locks them.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
# vLLM's FinishReason strings (vllm/v1/engine/__init__.py, 0.17 and later); vLLM creates a
# `vllm:request_success_total` series for each at start-up.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# The data-parallel engine index vLLM puts in the `engine` label; one engine here.
ENGINE = "0"
# vLLM's `--dtype` choices (vllm/config/model.py ModelDType).
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

# Two more vLLM metrics the double exports for tests of prefix-cache behaviour; harchos itself
# relies only on the catalogue's VLLM_METRICS (help texts from vllm/v1/metrics/loggers.py).
PREFIX_CACHE_METRICS = (
    CatalogueMetric(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        ("model_name", "engine"),
        "vllm",
    ),
    CatalogueMetric(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        ("model_name", "engine"),
        "vllm",
    ),
)

_TEXT = (
    "the grid is green when wind and sun are plenty so the job runs now and the model answers "
    "every request with care while carbon falls over hours in cool northern regions at night"
)
_VOCABULARY = tuple(_TEXT.split())
_DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True)
class Options:
    """The command-line options, with vLLM's names where vLLM has the option."""

    model: str
    port: int = 8000
    host: str = "127.0.0.1"
    served_model_names: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    max_model_len: int = _DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    block_size: int = 16
    startup_delay: float = 0.0
    shutdown_timeout: int = 0
    token_delay: float = 0.0

    @property
    def names(self) -> tuple[str, ...]:
        """The model names clients may use (vLLM's `--served-model-name`, else the model)."""
        return self.served_model_names or (self.model,)

    @property
    def name(self) -> str:
        """The first name: the one in `/v1/models` first, in responses and in metric labels."""
        return self.names[0]


def prompt_tokens(text: str) -> int:
    """How many tokens the double counts for a prompt: its words, at least one."""
    return max(1, len(text.split()))


def fake_tokens(prompt: str, count: int) -> list[str]:
    """The `count` tokens the double generates for `prompt`, each a word with a leading space."""
    seed = hashlib.sha256(prompt.encode()).digest()
    out = []
    for k in range(count):
        digest = hashlib.sha256(seed + k.to_bytes(4, "big")).digest()
        out.append(" " + _VOCABULARY[int.from_bytes(digest[:4], "big") % len(_VOCABULARY)])
    return out


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def copy(self) -> _Histogram:
        return _Histogram(self.bounds, list(self.counts), self.total, self.n)


class _PrefixCache:
    """vLLM's automatic prefix caching in outline, over words instead of token ids.

    A prompt's full blocks are hashed in a chain (a block's hash covers every token before it), so
    only a shared *prefix* can hit. A new prompt reuses its leading cached blocks, but never its
    last token, which must be computed; its own full blocks are then cached, least recently used
    first out when the cache is full.
    """

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity = max(1, capacity_blocks)
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup_and_insert(self, tokens: Sequence[str]) -> int:
        """The number of `tokens` served from the cache; caches the prompt's full blocks."""
        size = self.block_size
        hits, hitting, parent = 0, True, b""
        for i in range(len(tokens) // size):
            block = hashlib.sha256(parent + "\x00".join(tokens[i * size : (i + 1) * size]).encode())
            parent = block.digest()
            hitting = hitting and parent in self._blocks and (i + 1) * size < len(tokens)
            if hitting:
                hits += size
            self._blocks[parent] = None
            self._blocks.move_to_end(parent)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits


@dataclass
class _Sequence:
    prompt_tokens: int
    arrival: float
    generated: int = 0


class Aborted(Exception):
    """The request was aborted: the engine died, or shutdown ran out of time."""


@dataclass(frozen=True)
class _Snapshot:
    running: int
    waiting: int
    kv_usage: float
    prompt_total: int
    generation_total: int
    success: dict[str, int]
    ttft: _Histogram
    e2e: _Histogram
    prefix_queries: int
    prefix_hits: int


class Engine:
    """The fake engine's state, shared by the request threads and guarded by one condition."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._held = False
        self.dead = False
        self.draining = False
        self.running = 0
        self.waiting = 0
        self._kv_tokens = 0
        self._prompt_total = 0
        self._generation_total = 0
        self._success = dict.fromkeys(FINISH_REASONS, 0)
        self._ttft = _Histogram(TTFT_BUCKETS)
        self._e2e = _Histogram(E2E_BUCKETS)
        capacity = options.max_num_seqs * options.max_model_len
        self._prefix = _PrefixCache(options.block_size, capacity // options.block_size)
        self._prefix_queries = 0
        self._prefix_hits = 0

    def admit(self, prompt: str) -> _Sequence:
        """Queue a request and wait for a free slot (at most `max_num_seqs` run at once)."""
        seq = _Sequence(prompt_tokens(prompt), time.monotonic())
        with self._cond:
            self.waiting += 1
            try:
                while self.running >= self.options.max_num_seqs and not self._abort.is_set():
                    self._cond.wait()
            finally:
                self.waiting -= 1
            if self._abort.is_set():
                self._cond.notify_all()
                raise Aborted
            self.running += 1
            self._kv_tokens += seq.prompt_tokens
            if self.options.enable_prefix_caching:
                self._prefix_queries += seq.prompt_tokens
                self._prefix_hits += self._prefix.lookup_and_insert(prompt.split())
        return seq

    def step(self, seq: _Sequence) -> None:
        """Produce the next token of `seq`: wait while held, then for the token delay."""
        with self._cond:
            while self._held and not self._abort.is_set():
                self._cond.wait()
        if self._abort.is_set() or self._abort.wait(self.options.token_delay):
            raise Aborted
        with self._cond:
            if seq.generated == 0:
                self._prompt_total += seq.prompt_tokens
                self._ttft.observe(time.monotonic() - seq.arrival)
            seq.generated += 1
            self._generation_total += 1
            self._kv_tokens += 1

    def finish(self, seq: _Sequence, reason: str | None) -> None:
        """Free `seq`'s slot; `reason` is its finish reason, None when it was aborted."""
        with self._cond:
            self.running -= 1
            self._kv_tokens -= seq.prompt_tokens + seq.generated
            if reason is not None:
                self._success[reason] += 1
                self._e2e.observe(time.monotonic() - seq.arrival)
            self._cond.notify_all()

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) token generation for every request."""
        with self._cond:
            self._held = held
            self._cond.notify_all()

    def abort_all(self) -> None:
        """Abort every running and waiting request."""
        with self._cond:
            self._abort.set()
            self._cond.notify_all()

    def kill(self) -> None:
        """Simulate a dead engine: `/health` answers 503 and in-flight requests abort."""
        self.dead = True
        self.abort_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for no running or waiting request; True if idle."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.running + self.waiting > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def snapshot(self) -> _Snapshot:
        """Every metric's value at one instant."""
        capacity = self.options.max_num_seqs * self.options.max_model_len
        with self._cond:
            return _Snapshot(
                running=self.running,
                waiting=self.waiting,
                kv_usage=self._kv_tokens / capacity,
                prompt_total=self._prompt_total,
                generation_total=self._generation_total,
                success=dict(self._success),
                ttft=self._ttft.copy(),
                e2e=self._e2e.copy(),
                prefix_queries=self._prefix_queries,
                prefix_hits=self._prefix_hits,
            )

    def metrics_text(self) -> str:
        """The `/metrics` page in Prometheus text format (version 0.0.4)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry).decode()


class _Collector:
    """Turns an engine snapshot into metric families, named and described by the catalogue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        s = self.engine.snapshot()
        values: dict[str, Any] = {
            "vllm:num_requests_running": s.running,
            "vllm:num_requests_waiting": s.waiting,
            "vllm:kv_cache_usage_perc": s.kv_usage,
            "vllm:prompt_tokens_total": s.prompt_total,
            "vllm:generation_tokens_total": s.generation_total,
            "vllm:request_success_total": s.success,
            "vllm:time_to_first_token_seconds": s.ttft,
            "vllm:e2e_request_latency_seconds": s.e2e,
            "vllm:prefix_cache_queries_total": s.prefix_queries,
            "vllm:prefix_cache_hits_total": s.prefix_hits,
        }
        labels = [self.engine.options.name, ENGINE]
        for metric in (*VLLM_METRICS, *PREFIX_CACHE_METRICS):
            yield _family(metric, labels, values[metric.name])


def _family(metric: CatalogueMetric, labels: list[str], value: Any) -> Metric:
    names = list(metric.labels)
    if isinstance(value, _Histogram):
        histogram = HistogramMetricFamily(metric.name, metric.help, labels=names)
        buckets = [(repr(b), float(c)) for b, c in zip(value.bounds, value.counts, strict=True)]
        histogram.add_metric(labels, [*buckets, ("+Inf", float(value.n))], value.total)
        return histogram
    if metric.type == "gauge":
        gauge = GaugeMetricFamily(metric.name, metric.help, labels=names)
        gauge.add_metric(labels, value)
        return gauge
    counter = CounterMetricFamily(metric.name, metric.help, labels=names)
    if isinstance(value, dict):  # by finish reason, the one label past model_name and engine
        for reason, count in value.items():
            counter.add_metric([*labels, reason], count)
    else:
        counter.add_metric(labels, value)
    return counter


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class _Generation:
    chat: bool
    prompt: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def _chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "messages must be a non-empty list", "BadRequestError")
    parts = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(400, "each message needs a role and content", "BadRequestError")
        content = message.get("content", "")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _BadRequest(400, "message content must be text", "BadRequestError")
        parts.append(f"{message['role']}: {content}")
    return "\n".join([*parts, "assistant:"])


def _parse_generation(body: Any, chat: bool, options: Options) -> _Generation:
    if not isinstance(body, dict):
        raise _BadRequest(400, "the request body must be a JSON object", "BadRequestError")
    model = body.get("model")
    if model is not None and model not in options.names:
        raise _BadRequest(404, f"The model `{model}` does not exist.", "NotFoundError")
    if chat:
        prompt = _chat_prompt(body.get("messages"))
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, str):
            raise _BadRequest(400, "prompt must be a string", "BadRequestError")
        prompt = raw
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = 16 if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _BadRequest(400, "max_tokens must be a positive integer", "BadRequestError")
    if body.get("n", 1) != 1:
        raise _BadRequest(400, "the test double supports only n=1", "BadRequestError")
    n_prompt = prompt_tokens(prompt)
    if n_prompt + max_tokens > options.max_model_len:
        raise _BadRequest(
            400,
            f"This model's maximum context length is {options.max_model_len} tokens. However, "
            f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.",
            "BadRequestError",
        )
    stream_options = body.get("stream_options") or {}
    return _Generation(
        chat=chat,
        prompt=prompt,
        prompt_tokens=n_prompt,
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        ),
    )


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog of 5 drops bursts of connections (a 1 s SYN retry).
    request_queue_size = 1024
    engine: Engine

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection is routine, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vllm-test-double"
    # Stream chunks are small writes; without TCP_NODELAY, Nagle and delayed ACKs stall them.
    disable_nagle_algorithm = True

    @property
    def engine(self) -> Engine:
        return cast(_Server, self.server).engine

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ARG002
        # Access logs would fill a stderr pipe nobody reads; lifecycle lines are enough.
        return

    def do_GET(self) -> None:
        engine, options = self.engine, self.engine.options
        path = urlsplit(self.path).path
        if not self._authorised(path):
            return
        if path in ("/health", "/ping"):
            # vLLM answers with an empty body: 200 healthy, 503 dead or draining.
            self._send(503 if engine.dead or engine.draining else 200, b"", None)
        elif path == "/metrics":
            body = engine.metrics_text().encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/version":
            self._send_json(200, {"version": "test-double"})
        elif path == "/v1/models":
            created = int(time.time())
            cards = [
                {"id": name, "object": "model", "created": created, "owned_by": "vllm",
                 "root": options.model, "parent": None, "max_model_len": options.max_model_len}
                for name in options.names
            ]  # fmt: skip
            self._send_json(200, {"object": "list", "data": cards})
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        engine = self.engine
        path = urlsplit(self.path).path
        if path.startswith("/debug/"):  # the double's own, for tests; open like vLLM's /health
            actions: dict[str, Callable[[], None]] = {
                "/debug/kill-engine": engine.kill,
                "/debug/hold": lambda: engine.hold(True),
                "/debug/release": lambda: engine.hold(False),
            }
            action = actions.get(path)
            if action is None:
                self._send_json(404, {"detail": "Not Found"})
                return
            # Answer first: a release can let a draining server finish its last request and
            # exit before a later answer is written.
            self._send_json(200, {"ok": True})
            action()
            return
        if not self._authorised(path):
            return
        chat = {"/v1/completions": False, "/v1/chat/completions": True}.get(path)
        if chat is None:
            self._send_json(404, {"detail": "Not Found"})
            return
        try:
            if engine.draining:
                raise _BadRequest(503, "the server is shutting down", "ServiceUnavailableError")
            if engine.dead:
                raise _BadRequest(500, "the engine is dead", "EngineDeadError")
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise _BadRequest(400, "the request body is not JSON", "BadRequestError") from None
            generation = _parse_generation(body, chat, engine.options)
        except _BadRequest as error:
            self._send_error(error)
            return
        self._generate(generation)

    def _generate(self, gen: _Generation) -> None:
        engine = self.engine
        try:
            seq = engine.admit(gen.prompt)
        except Aborted:
            self.close_connection = True
            return
        reason: str | None = None
        try:
            tokens = fake_tokens(gen.prompt, gen.max_tokens)
            response = _Response(gen, engine.options.name)
            if gen.stream:
                self._stream(seq, tokens, response)
            else:
                for _ in tokens:
                    engine.step(seq)
                self._send_json(200, response.full("".join(tokens)))
            reason = "length"
        except (Aborted, OSError):
            # An abort closes the connection mid-answer, as vLLM does; the client sees no [DONE].
            self.close_connection = True
        finally:
            engine.finish(seq, reason)

    def _stream(self, seq: _Sequence, tokens: Sequence[str], response: _Response) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        first = response.first_chunk()
        if first is not None:
            self._event(first)
        for token in tokens:
            self.engine.step(seq)
            self._event(response.chunk(token, None))
        self._event(response.chunk("", "length"))
        if response.gen.include_usage:
            self._event(response.usage_chunk())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _authorised(self, path: str) -> bool:
        """False, having answered 401, when `path` needs the API key and the request lacks it.

        As vLLM's AuthenticationMiddleware: `/v1` and below are guarded, any key of `--api-key`
        is accepted as `Authorization: Bearer KEY` (the scheme in any case).
        """
        keys = self.engine.options.api_keys
        if not keys or not (path == "/v1" or path.startswith("/v1/")):
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        digest = hashlib.sha256(token.encode()).digest()
        if scheme.lower() == "bearer" and any(
            secrets.compare_digest(digest, hashlib.sha256(key.encode()).digest()) for key in keys
        ):
            return True
        self._send_json(401, {"error": "Unauthorized"})
        return False

    def _send_error(self, error: _BadRequest) -> None:
        detail = {"message": error.message, "type": error.kind, "param": None, "code": error.status}
        self._send_json(error.status, {"error": detail})

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Response:
    """Builds the OpenAI-shaped bodies and stream chunks for one request."""

    def __init__(self, gen: _Generation, model: str) -> None:
        self.gen = gen
        self.model = model
        self.created = int(time.time())
        self.id = ("chatcmpl-" if gen.chat else "cmpl-") + uuid.uuid4().hex
        self.object = "chat.completion" if gen.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self) -> dict[str, int]:
        n, m = self.gen.prompt_tokens, self.gen.max_tokens
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    def full(self, text: str) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        if self.gen.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice |= {"text": text, "logprobs": None}
        return {**self._head(self.object), "choices": [choice], "usage": self.usage()}

    def first_chunk(self) -> dict[str, Any] | None:
        if not self.gen.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def chunk(self, token: str, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.gen.chat:
            choice["delta"] = {"content": token} if token else {}
            obj = "chat.completion.chunk"
        else:
            choice["text"] = token
            obj = "text_completion"
        return {**self._head(obj), "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.gen.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage()}


def _log(message: str) -> None:
    print(f"vllm-test-double: {message}", file=sys.stderr, flush=True)


def serve(options: Options) -> int:
    """Run the double until SIGTERM or SIGINT, then drain as `vllm serve` does; the exit code."""
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _log(f"loading {options.model} (a test double, not vLLM; port closed for "
         f"{options.startup_delay:g} s)")  # fmt: skip
    if stop.wait(options.startup_delay):
        _log("stopped while starting")
        return 0
    engine = Engine(options)
    server = _Server((options.host, options.port), _Handler)
    server.engine = engine
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    _log(f"serving {options.name} on http://{options.host}:{server.server_address[1]}")
    stop.wait()
    engine.draining = True
    _log(f"shutting down: {engine.running} running, {engine.waiting} waiting, "
         f"up to {options.shutdown_timeout} s to finish")  # fmt: skip
    if not engine.wait_idle(options.shutdown_timeout):
        _log("shutdown timeout reached: aborting the requests still in flight")
        engine.abort_all()
        engine.wait_idle(5.0)
    server.shutdown()
    server.server_close()
    _log("stopped")
    return 0


def _human_int(value: str) -> int:
    """vLLM's `human_readable_int` (vllm/utils/argparse_utils.py): 1k = 1000, 1K = 1024,
    25.6k = 25600."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match is None:
        return int(value)
    number, suffix = match.groups()
    power = "kmgt".index(suffix.lower()) + 1
    if suffix.islower():
        return int(float(number) * 10 ** (3 * power))
    if "." in number:
        raise argparse.ArgumentTypeError(f"no decimals with a binary suffix: {value}")
    return int(number) << (10 * power)


def _human_int_or_auto(value: str) -> int:
    """vLLM's `human_readable_int_or_auto`: also -1 or `auto`, for the model's own length."""
    return -1 if value.strip().lower() in ("-1", "auto") else _human_int(value)


_ON_OFF = {"action": argparse.BooleanOptionalAction}
# vLLM flags that mean nothing to a double: parsed with vLLM's names and types (vllm/engine/
# arg_utils.py EngineArgs, vllm/entrypoints/openai/cli_args.py FrontendArgs), then ignored.
_IGNORED: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--dtype",), {"choices": DTYPES}),
    (("--gpu-memory-utilization",), {"type": float}),
    (("--tensor-parallel-size", "-tp"), {"type": int}),
    (("--pipeline-parallel-size", "-pp"), {"type": int}),
    (("--data-parallel-size", "-dp"), {"type": int}),
    (("--max-num-batched-tokens",), {"type": _human_int}),
    (("--enable-chunked-prefill",), _ON_OFF),
    (("--enforce-eager",), _ON_OFF),
    (("--trust-remote-code",), _ON_OFF),
    (("--enable-sleep-mode",), _ON_OFF),
    (("--disable-log-stats",), _ON_OFF),
    (("--enable-log-requests",), _ON_OFF),
    (("--disable-uvicorn-access-log",), _ON_OFF),
    (("--enable-auto-tool-choice",), _ON_OFF),
    (("--seed",), {"type": int}),
    (("--quantization", "-q"), {}),
    (("--kv-cache-dtype",), {}),
    (("--cpu-offload-gb",), {"type": float}),
    (("--tokenizer",), {}),
    (("--revision",), {}),
    (("--download-dir",), {}),
    (("--generation-config",), {}),
    (("--chat-template",), {}),
    (("--tool-call-parser",), {}),
    (("--reasoning-parser",), {}),
    (("--max-logprobs",), {"type": int}),
    (("--uvicorn-log-level",), {"choices": ("critical", "error", "warning", "info", "debug",
                                            "trace")}),
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harchos_cli.testing.vllm_double",
        usage="%(prog)s [serve] MODEL [options]  (or --model MODEL)",
        description="A test double for `vllm serve` (not vLLM): OpenAI-compatible API, /health, "
        "/metrics and SIGTERM drain, with fake deterministic text. It takes vLLM's command line.",
    )
    parser.add_argument("model_tag", nargs="?", help="model to serve, as `vllm serve MODEL`")
    parser.add_argument("--model", help="the model, the older way (not with MODEL)")
    parser.add_argument("--served-model-name", nargs="+", help="names clients use (first: main)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; vLLM: all)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument(
        "--api-key",
        nargs="+",
        help="keys accepted as `Authorization: Bearer KEY` on /v1 (default: $VLLM_API_KEY)",
    )
    parser.add_argument("--max-model-len", type=_human_int_or_auto, help="context length")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="requests run at once")
    parser.add_argument(
        "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument("--block-size", type=int, default=16, help="prefix-cache block (tokens)")
    parser.add_argument(
        "--shutdown-timeout",
        type=int,
        default=0,
        help="seconds SIGTERM waits for running requests (0, the default, aborts them)",
    )
    ignored = parser.add_argument_group("vLLM options a double ignores")
    for flags, kwargs in _IGNORED:
        ignored.add_argument(*flags, **kwargs, help=argparse.SUPPRESS)
    own = parser.add_argument_group("the double's own")
    own.add_argument("--startup-delay", type=float, default=0.0, help="seconds before binding")
    own.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    return parser


def _dashes(arg: str) -> str:
    """`--max_model_len=8` as `--max-model-len=8`: vLLM's FlexibleArgumentParser takes both."""
    if not arg.startswith("--"):
        return arg
    key, eq, value = arg.partition("=")
    return key.replace("_", "-") + eq + value


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Options:
    """The options from a `vllm serve` command line (the leading `serve` optional).

    Raises:
        SystemExit: with code 2 on a bad or unknown flag, or no model, as argparse (and vLLM) do.
    """
    parser = _parser()
    args = list(argv)
    if args[:1] == ["serve"]:
        args = args[1:]
    ns = parser.parse_args([_dashes(arg) for arg in args])
    if ns.model_tag and ns.model:
        parser.error("give the model once: `serve MODEL` or `--model MODEL`")
    model = ns.model_tag or ns.model
    if not model:
        parser.error("a model is required: serve MODEL")
    env = os.environ if environ is None else environ
    # As vLLM 0.18+: `--api-key` wins over $VLLM_API_KEY.
    keys = [key for key in (ns.api_key or [env.get("VLLM_API_KEY", "")]) if key]
    max_model_len = _DEFAULT_MAX_MODEL_LEN if ns.max_model_len in (None, -1) else ns.max_model_len
    if min(ns.block_size, ns.max_num_seqs, max_model_len) < 1 or ns.shutdown_timeout < 0:
        parser.error(
            "--block-size, --max-num-seqs and --max-model-len must be positive, "
            "--shutdown-timeout 0 or more"
        )
    return Options(
        model=model,
        port=ns.port,
        host=ns.host or "127.0.0.1",
        served_model_names=tuple(ns.served_model_name or ()),
        api_keys=tuple(keys),
        max_model_len=max_model_len,
        max_num_seqs=ns.max_num_seqs,
        enable_prefix_caching=ns.enable_prefix_caching,
        block_size=ns.block_size,
        startup_delay=ns.startup_delay,
        shutdown_timeout=ns.shutdown_timeout,
        token_delay=ns.token_delay,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; the process exit code."""
    return serve(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
