"""The vLLM serving test double, driven as a real subprocess over loopback HTTP."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harchos_cli.metrics import VLLM_METRICS

MODEL = "acme/tiny-chat"


@dataclass
class Double:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, keyed by `name{labels}` as the exposition writes them."""
        text = httpx.get(f"{self.url}/metrics").text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30, **kw)


Start = Callable[..., Double]


def _wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[subprocess.Popen[bytes]] = []

    def _start(*args: str, port: int = 0, wait: bool = True) -> Double:
        log = tmp_path / f"double-{len(procs)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harchos_cli.testing.vllm_double", "--model", MODEL,
                 "--port", str(port), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip
        procs.append(proc)
        double = Double(proc, log, f"http://127.0.0.1:{port}")
        if wait:

            def bound() -> bool:
                assert proc.poll() is None, log.read_text()
                return bool(re.search(r"serving .* on (http://\S+)", log.read_text()))

            _wait_for(bound, "the double to bind its port")
            match = re.search(r"serving .* on (http://\S+)", log.read_text())
            assert match
            double.url = match.group(1)
        return double

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_refuses_while_starting_then_health_is_200(start: Start) -> None:
    port = _free_port()
    double = start("--startup-delay", "1.5", port=port, wait=False)
    _wait_for(lambda: "loading" in double.log.read_text(), "the loading line")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{double.url}/health")

    def healthy() -> bool:
        try:
            return httpx.get(f"{double.url}/health").status_code == 200
        except httpx.ConnectError:
            return False

    _wait_for(healthy, "/health to answer 200")
    models = httpx.get(f"{double.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 4096
    assert "test double, not vLLM" in double.log.read_text()


def test_completions_are_openai_shaped_and_deterministic(start: Start) -> None:
    double = start("--api-key", "sekret", "--max-model-len", "64")
    auth = {"Authorization": "Bearer sekret"}
    assert double.post("/v1/completions", {"prompt": "hi"}).status_code == 401
    assert httpx.get(f"{double.url}/v1/models").status_code == 401

    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": 7}
    first = double.post("/v1/completions", body, headers=auth).json()
    again = double.post("/v1/completions", body, headers=auth).json()
    other = double.post("/v1/completions", {**body, "prompt": "another"}, headers=auth).json()
    assert first["object"] == "text_completion"
    assert first["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    text = first["choices"][0]["text"]
    assert len(text.split()) == 7
    assert first["choices"][0]["finish_reason"] == "length"
    assert again["choices"][0]["text"] == text
    assert other["choices"][0]["text"] != text

    messages = [{"role": "user", "content": "say something green"}]
    chat = double.post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": messages, "max_tokens": 5},
        headers=auth,
    ).json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert len(chat["choices"][0]["message"]["content"].split()) == 5

    wrong = double.post("/v1/completions", {**body, "model": "gpt-9"}, headers=auth)
    assert wrong.status_code == 404
    assert "gpt-9" in wrong.json()["error"]["message"]
    too_long = double.post("/v1/completions", {**body, "max_tokens": 61}, headers=auth)
    assert too_long.status_code == 400
    assert "maximum context length is 64" in too_long.json()["error"]["message"]


def _events(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def test_streaming_sends_sse_chunks_then_done(start: Start) -> None:
    double = start()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 6}
    whole = double.post("/v1/chat/completions", body).json()["choices"][0]["message"]["content"]

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{double.url}/v1/chat/completions", json=streamed) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == whole
    finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finished[-1] == "length"
    assert set(finished[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6

    plain = {"prompt": "one two", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{double.url}/v1/completions", json=plain) as response:
        events = list(_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    assert [e["object"] for e in events[:-1]] == ["text_completion"] * 4
    assert "".join(e["choices"][0]["text"] for e in events[:-1]).split() == (
        double.post("/v1/completions", {"prompt": "one two", "max_tokens": 3})
        .json()["choices"][0]["text"]
        .split()
    )


def test_metrics_follow_the_load(start: Start) -> None:
    double = start("--max-num-seqs", "1")
    label = f'model_name="{MODEL}"'
    assert double.post("/debug/hold").status_code == 200
    results: list[int] = []

    def one(i: int) -> None:
        body = {"prompt": f"request number {i}", "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{double.url}/v1/completions", json=body, timeout=30) as r:
            results.append(sum(1 for e in _events(r.iter_lines()) if e != "[DONE]"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()

    def queued() -> bool:
        m = double.metrics()
        return (
            m[f"vllm:num_requests_running{{{label}}}"] == 1
            and m[f"vllm:num_requests_waiting{{{label}}}"] == 2
        )

    _wait_for(queued, "one running and two waiting requests")
    busy = double.metrics()
    assert busy[f"vllm:kv_cache_usage_perc{{{label}}}"] == pytest.approx(3 / (1 * 4096))
    assert busy[f"vllm:generation_tokens_total{{{label}}}"] == 0

    assert double.post("/debug/release").status_code == 200
    for t in threads:
        t.join(timeout=30)
    assert results == [6, 6, 6]  # five tokens and the finish chunk each
    idle = double.metrics()
    assert idle[f"vllm:num_requests_running{{{label}}}"] == 0
    assert idle[f"vllm:num_requests_waiting{{{label}}}"] == 0
    assert idle[f"vllm:kv_cache_usage_perc{{{label}}}"] == 0
    assert idle[f"vllm:prompt_tokens_total{{{label}}}"] == 9
    assert idle[f"vllm:generation_tokens_total{{{label}}}"] == 15
    assert idle[f'vllm:request_success_total{{finished_reason="length",{label}}}'] == 3
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert idle[f"vllm:{histogram}_count{{{label}}}"] == 3
        assert idle[f'vllm:{histogram}_bucket{{le="+Inf",{label}}}'] == 3
        assert idle[f"vllm:{histogram}_sum{{{label}}}"] > 0

    # Every catalogued vLLM metric is exported, and promtool parses the page: its only complaint
    # is vLLM's own `:` in the names, which Prometheus reserves for recording rules.
    text = httpx.get(f"{double.url}/metrics").text
    assert {m.name for m in VLLM_METRICS} <= set(re.findall(r"^# TYPE (\S+)", text, re.M))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    problems = [p for p in (check.stdout + check.stderr).splitlines() if p.strip()]
    assert problems
    assert all(p.endswith("metric names should not contain ':'") for p in problems), problems


def test_dead_engine_answers_503_on_health(start: Start) -> None:
    double = start()
    assert httpx.get(f"{double.url}/health").status_code == 200
    double.post("/debug/kill-engine")
    assert httpx.get(f"{double.url}/health").status_code == 503
    failed = double.post("/v1/completions", {"prompt": "hi"})
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "EngineDeadError"


def _held_stream(double: Double, max_tokens: int) -> tuple[Any, Iterator[Any]]:
    """A streaming request admitted (its headers came back) but held before its first token."""
    assert double.post("/debug/hold").status_code == 200
    body = {"prompt": "a long answer please", "max_tokens": max_tokens, "stream": True}
    ctx = httpx.stream("POST", f"{double.url}/v1/completions", json=body, timeout=30)
    response = ctx.__enter__()
    assert response.status_code == 200
    return ctx, _events(response.iter_lines())


def test_sigterm_drains_in_flight_and_refuses_new(start: Start) -> None:
    double = start("--shutdown-timeout", "60")
    ctx, events = _held_stream(double, 8)
    double.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: httpx.get(f"{double.url}/health").status_code == 503, "/health 503")

    refused = double.post("/v1/completions", {"prompt": "too late"})
    assert refused.status_code == 503
    assert "shutting down" in refused.json()["error"]["message"]

    double.post("/debug/release")
    rest = list(events)
    ctx.__exit__(None, None, None)
    assert rest[-1] == "[DONE]"
    assert len(rest) == 10  # eight tokens, the finish chunk, [DONE]
    assert double.proc.wait(timeout=20) == 0
    assert "aborting" not in double.log.read_text()


@pytest.mark.parametrize("timeout", ["0", "0.5"])
def test_sigterm_aborts_what_outlives_the_shutdown_timeout(start: Start, timeout: str) -> None:
    double = start("--shutdown-timeout", timeout)
    ctx, events = _held_stream(double, 8)
    double.proc.send_signal(signal.SIGTERM)
    with pytest.raises(httpx.RemoteProtocolError):
        list(events)
    ctx.__exit__(None, None, None)
    assert double.proc.wait(timeout=20) == 0
    assert "aborting the requests still in flight" in double.log.read_text()
