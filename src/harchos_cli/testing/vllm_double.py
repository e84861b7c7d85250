"""A TEST DOUBLE for `vllm serve`. It is not vLLM and runs no model.

vLLM cannot run on CPU-only test machines, so serving tests (harchos's own and the serving
blueprints') talk to this stand-in instead. It copies the parts of vLLM's behaviour that harchos
and its users depend on (reference/launching.md, DESIGN.md "Serving contract"):

- the port refuses connections while the "engine" starts (`--startup-delay`), then `/health`
  answers 200; after `POST /debug/kill-engine` it answers 503 and generation fails;
- the OpenAI-compatible `/v1/models`, `/v1/completions` and `/v1/chat/completions`, with SSE
  streaming (`"stream": true`, `data: {...}` chunks, `data: [DONE]`) and
  `stream_options.include_usage`;
- `/metrics` in Prometheus text format with vLLM's `vllm:` gauges, counters and histograms;
- at most `--max-num-seqs` requests run at once, the rest wait (`vllm:num_requests_waiting`);
- SIGTERM with `--shutdown-timeout N`: `/health` turns 503, new requests get 503, running and
  waiting ones get up to N seconds to finish and are then aborted; N=0 (vLLM's default) aborts
  them at once.

Text is fake and deterministic: a prompt is as many tokens as it has words, and the k-th generated
token is a word picked by a hash of the prompt and k, one every `--token-delay` seconds, always
`max_tokens` of them (default 16, finish reason "length"). For tests there are two more endpoints:
`POST /debug/hold` stops every request before its next token, `POST /debug/release` lets them go.

    python -m harchos_cli.testing.vllm_double --port 8000 --model Qwen/Qwen2.5-0.5B-Instruct
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from harchos_cli.metrics import VLLM_METRICS

__all__ = ["Engine", "Options", "fake_tokens", "main", "prompt_tokens"]

# vLLM's own bucket boundaries for these two histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

_TEXT = (
    "the grid is green when wind and sun are plenty so the job runs now and the model answers "
    "every request with care while carbon falls over hours in cool northern regions at night"
)
_VOCABULARY = tuple(_TEXT.split())


@dataclass(frozen=True)
class Options:
    """The command-line options, with vLLM's names where vLLM has the option."""

    model: str
    port: int
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    api_key: str | None = None
    max_model_len: int = 4096
    max_num_seqs: int = 256
    startup_delay: float = 0.0
    shutdown_timeout: float = 0.0
    token_delay: float = 0.0

    @property
    def name(self) -> str:
        """The model name clients must use (vLLM's `--served-model-name`, else the model)."""
        return self.served_model_name or self.model


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


@dataclass
class _Sequence:
    prompt_tokens: int
    arrival: float
    generated: int = 0


class Aborted(Exception):
    """The request was aborted: the engine died, or shutdown ran out of time."""


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
        self._success: dict[str, int] = {"stop": 0, "length": 0}
        self._ttft = _Histogram(TTFT_BUCKETS)
        self._e2e = _Histogram(E2E_BUCKETS)

    def admit(self, prompt_len: int) -> _Sequence:
        """Queue a request and wait for a free slot (at most `max_num_seqs` run at once)."""
        seq = _Sequence(prompt_len, time.monotonic())
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
            self._kv_tokens += prompt_len
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
                self._success[reason] = self._success.get(reason, 0) + 1
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

    def metrics_text(self) -> str:
        """The `/metrics` page in Prometheus text format (version 0.0.4)."""
        label = f'model_name="{_escape(self.options.name)}"'
        capacity = self.options.max_num_seqs * self.options.max_model_len
        with self._cond:
            values: dict[str, Any] = {
                "vllm:num_requests_running": self.running,
                "vllm:num_requests_waiting": self.waiting,
                "vllm:kv_cache_usage_perc": self._kv_tokens / capacity,
                "vllm:prompt_tokens_total": self._prompt_total,
                "vllm:generation_tokens_total": self._generation_total,
                "vllm:request_success_total": dict(self._success),
                "vllm:time_to_first_token_seconds": _copy(self._ttft),
                "vllm:e2e_request_latency_seconds": _copy(self._e2e),
            }
        lines: list[str] = []
        for metric in VLLM_METRICS:
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.type}"]
            value = values[metric.name]
            if isinstance(value, _Histogram):
                lines += _histogram_lines(metric.name, label, value)
            elif isinstance(value, dict):
                lines += [
                    f'{metric.name}{{finished_reason="{reason}",{label}}} {_num(count)}'
                    for reason, count in sorted(value.items())
                ]
            else:
                lines.append(f"{metric.name}{{{label}}} {_num(value)}")
        return "\n".join(lines) + "\n"


def _copy(h: _Histogram) -> _Histogram:
    return _Histogram(h.bounds, list(h.counts), h.total, h.n)


def _histogram_lines(name: str, label: str, h: _Histogram) -> Iterator[str]:
    for bound, count in zip(h.bounds, h.counts, strict=True):
        yield f'{name}_bucket{{le="{_num(bound)}",{label}}} {_num(count)}'
    yield f'{name}_bucket{{le="+Inf",{label}}} {_num(h.n)}'
    yield f"{name}_sum{{{label}}} {_num(h.total)}"
    yield f"{name}_count{{{label}}} {_num(h.n)}"


def _num(value: float) -> str:
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
    if model is not None and model != options.name:
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
        if self.path == "/health":
            healthy = not (engine.dead or engine.draining)
            self._send_json(200 if healthy else 503, {} if healthy else {"status": "unhealthy"})
        elif self.path == "/metrics":
            body = engine.metrics_text().encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/version":
            self._send_json(200, {"version": "test-double"})
        elif self.path == "/v1/models":
            if self._authorised():
                card = {
                    "id": options.name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": options.model,
                    "parent": None,
                    "max_model_len": options.max_model_len,
                }
                self._send_json(200, {"object": "list", "data": [card]})
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        engine = self.engine
        if self.path.startswith("/debug/"):
            if self.path == "/debug/kill-engine":
                engine.kill()
            elif self.path in ("/debug/hold", "/debug/release"):
                engine.hold(self.path == "/debug/hold")
            else:
                self._send_json(404, {"detail": "Not Found"})
                return
            self._send_json(200, {"ok": True})
            return
        chat = {"/v1/completions": False, "/v1/chat/completions": True}.get(self.path)
        if chat is None:
            self._send_json(404, {"detail": "Not Found"})
            return
        if not self._authorised():
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
            seq = engine.admit(gen.prompt_tokens)
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

    def _authorised(self) -> bool:
        key = self.engine.options.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_json(401, {"error": "Unauthorized"})
        return False

    def _send_error(self, error: _BadRequest) -> None:
        detail = {"message": error.message, "type": error.kind, "param": None, "code": error.status}
        self._send_json(error.status, {"error": detail})

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
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
         f"up to {options.shutdown_timeout:g} s to finish")  # fmt: skip
    if not engine.wait_idle(options.shutdown_timeout):
        _log("shutdown timeout reached: aborting the requests still in flight")
        engine.abort_all()
        engine.wait_idle(5.0)
    server.shutdown()
    server.server_close()
    _log("stopped")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harchos_cli.testing.vllm_double",
        description="A test double for `vllm serve` (not vLLM): OpenAI-compatible API, /health, "
        "/metrics and SIGTERM drain, with fake deterministic text.",
    )
    parser.add_argument("--model", required=True, help="model name to report and accept")
    parser.add_argument("--port", type=int, required=True, help="port to bind (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--served-model-name", help="name clients use (default: --model)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 (default: $VLLM_API_KEY, as vLLM)",
    )
    parser.add_argument("--max-model-len", type=int, default=4096, help="context length (tokens)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="requests run at once")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before binding")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=0.0,
        help="seconds SIGTERM waits for running requests (0, the default, aborts them)",
    )
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; the process exit code."""
    args = _parser().parse_args(argv)
    options = Options(
        model=args.model,
        port=args.port,
        host=args.host,
        served_model_name=args.served_model_name,
        api_key=args.api_key or None,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        startup_delay=args.startup_delay,
        shutdown_timeout=args.shutdown_timeout,
        token_delay=args.token_delay,
    )
    return serve(options)


if __name__ == "__main__":
    sys.exit(main())
