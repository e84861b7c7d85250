"""The vLLM serving test double, driven as a real subprocess over loopback HTTP."""

from __future__ import annotations

import json
import os
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
from harchos_cli.testing.vllm_double import Options, parse_args

MODEL = "acme/tiny-chat"
LABELS = f'engine="0",model_name="{MODEL}"'  # prometheus_client writes labels sorted

# vLLM's own boundaries, written out as vLLM's snapshot test does (vllm/v1/metrics/buckets.py):
# a change to the double's lists has to show up here.
VLLM_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                     5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
VLLM_E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip


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


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "harchos_cli.testing.vllm_double", *args]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[subprocess.Popen[bytes]] = []

    def _start(
        *args: str, port: int = 0, wait: bool = True, env: dict[str, str] | None = None
    ) -> Double:
        log = tmp_path / f"double-{len(procs)}.log"
        environ = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"} | (env or {})
        with log.open("wb") as err:
            proc = subprocess.Popen(
                _command("serve", MODEL, "--port", str(port), *args),
                stdout=subprocess.DEVNULL, stderr=err, env=environ,
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


def _parse_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, environ={})
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_it_takes_vllm_serve_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    # The command line harchos gives vLLM, word for word, plus flags users put in extra_args.
    options = parse_args(
        ["serve", MODEL, "--served-model-name", "tiny", "--dtype", "bfloat16",
         "--max-model-len", "8192", "--gpu-memory-utilization", "0.85",
         "--tensor-parallel-size", "2", "--host", "127.0.0.1", "--port", "8100",
         "--shutdown-timeout", "45", "--enable-chunked-prefill", "--max-num-seqs", "8",
         "--max_num_batched_tokens=2k", "-tp", "2", "--no-enable-prefix-caching"],
        environ={"VLLM_API_KEY": "from-env"},
    )  # fmt: skip
    assert options == Options(
        model=MODEL, port=8100, host="127.0.0.1", served_model_names=("tiny",),
        api_keys=("from-env",), max_model_len=8192, max_num_seqs=8,
        enable_prefix_caching=False, shutdown_timeout=45,
    )  # fmt: skip
    # The older form, vLLM's `--model`, vLLM's human-readable numbers; --api-key beats the env.
    older = parse_args(
        ["--model", MODEL, "--max-model-len", "4K", "--api-key", "a", "b"], {"VLLM_API_KEY": "x"}
    )
    assert (older.model, older.port, older.max_model_len) == (MODEL, 8000, 4096)
    assert older.api_keys == ("a", "b")
    assert parse_args(["serve", MODEL, "--max-model-len", "auto"], {}).max_model_len == 4096
    assert parse_args(["serve", MODEL], {"VLLM_API_KEY": ""}).api_keys == ()

    assert "unrecognized arguments: --no-such-flag" in _parse_error(
        capsys, "serve", MODEL, "--no-such-flag"
    )
    assert "invalid int value: '0.5'" in _parse_error(
        capsys, "serve", MODEL, "--shutdown-timeout", "0.5"
    )
    assert "invalid choice: 'int4'" in _parse_error(capsys, "serve", MODEL, "--dtype", "int4")
    assert "must be positive" in _parse_error(capsys, "serve", MODEL, "--max-model-len", "0")
    assert "a model is required" in _parse_error(capsys, "serve", "--port", "1")
    assert "give the model once" in _parse_error(capsys, "serve", MODEL, "--model", MODEL)


def test_an_unknown_flag_exits_2_before_binding(tmp_path: Path) -> None:
    done = subprocess.run(
        _command("serve", MODEL, "--port", str(_free_port()), "--speculative-magic"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unrecognized arguments: --speculative-magic" in done.stderr
    assert "serving" not in done.stderr


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


def test_the_api_key_guards_v1_only(start: Start) -> None:
    # The key from the environment, as harchos hands it over; /health and /metrics stay open.
    double = start("--served-model-name", "tiny", "tiny-alias", env={"VLLM_API_KEY": "sekret"})
    assert httpx.get(f"{double.url}/v1/models").status_code == 401
    assert double.post("/v1/completions", {"prompt": "hi"}).json() == {"error": "Unauthorized"}
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{double.url}/v1/models", headers=wrong).status_code == 401
    for path in ("/health", "/ping", "/metrics", "/version"):
        assert httpx.get(f"{double.url}{path}").status_code == 200, path
    models = httpx.get(f"{double.url}/v1/models", headers={"Authorization": "bearer sekret"})
    assert [m["id"] for m in models.json()["data"]] == ["tiny", "tiny-alias"]
    auth = {"Authorization": "Bearer sekret"}
    for name in ("tiny", "tiny-alias"):
        answer = double.post("/v1/completions", {"model": name, "prompt": "hi"}, headers=auth)
        assert answer.status_code == 200
        assert answer.json()["model"] == "tiny"
    unserved = double.post("/v1/completions", {"model": MODEL, "prompt": "hi"}, headers=auth)
    assert unserved.status_code == 404
    assert 'model_name="tiny"' in httpx.get(f"{double.url}/metrics").text


def test_completions_are_openai_shaped_and_deterministic(start: Start) -> None:
    double = start("--api-key", "sekret", "--max-model-len", "64")
    auth = {"Authorization": "Bearer sekret"}
    assert double.post("/v1/completions", {"prompt": "hi"}).status_code == 401

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
            m[f"vllm:num_requests_running{{{LABELS}}}"] == 1
            and m[f"vllm:num_requests_waiting{{{LABELS}}}"] == 2
        )

    _wait_for(queued, "one running and two waiting requests")
    busy = double.metrics()
    assert busy[f"vllm:kv_cache_usage_perc{{{LABELS}}}"] == pytest.approx(3 / (1 * 4096))
    assert busy[f"vllm:generation_tokens_total{{{LABELS}}}"] == 0

    assert double.post("/debug/release").status_code == 200
    for t in threads:
        t.join(timeout=30)
    assert results == [6, 6, 6]  # five tokens and the finish chunk each
    idle = double.metrics()
    assert idle[f"vllm:num_requests_running{{{LABELS}}}"] == 0
    assert idle[f"vllm:num_requests_waiting{{{LABELS}}}"] == 0
    assert idle[f"vllm:kv_cache_usage_perc{{{LABELS}}}"] == 0
    assert idle[f"vllm:prompt_tokens_total{{{LABELS}}}"] == 9
    assert idle[f"vllm:generation_tokens_total{{{LABELS}}}"] == 15
    success = {
        reason: idle[f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
                     f'model_name="{MODEL}"}}']
        for reason in ("stop", "length", "abort", "error", "repetition")
    }  # fmt: skip
    assert success == {"stop": 0, "length": 3, "abort": 0, "error": 0, "repetition": 0}
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert idle[f"vllm:{histogram}_count{{{LABELS}}}"] == 3
        assert idle[f'vllm:{histogram}_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}}'] == 3
        assert idle[f"vllm:{histogram}_sum{{{LABELS}}}"] > 0

    # Every catalogued vLLM metric is exported with the catalogue's labels, and promtool parses
    # the page: its only complaint is vLLM's own `:` in the names, which Prometheus reserves for
    # recording rules.
    text = httpx.get(f"{double.url}/metrics").text
    assert {m.name for m in VLLM_METRICS} <= set(re.findall(r"^# TYPE (\S+)", text, re.M))
    for metric in VLLM_METRICS:
        for sample in re.findall(rf"^{re.escape(metric.name)}\w*\{{([^}}]*)\}}", text, re.M):
            names = set(re.findall(r'(\w+)="', sample)) - {"le"}
            assert names == set(metric.labels), (metric.name, sample)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    problems = [p for p in (check.stdout + check.stderr).splitlines() if p.strip()]
    assert problems
    assert all(p.endswith("metric names should not contain ':'") for p in problems), problems


def _bounds(text: str, histogram: str) -> list[float]:
    found = re.findall(rf'^vllm:{histogram}_bucket\{{[^}}]*le="([^"]+)"', text, re.M)
    return [float(le) for le in found if le != "+Inf"]


def test_histograms_have_vllms_buckets(start: Start) -> None:
    text = httpx.get(f"{start().url}/metrics").text
    assert _bounds(text, "time_to_first_token_seconds") == VLLM_TTFT_BUCKETS
    assert _bounds(text, "e2e_request_latency_seconds") == VLLM_E2E_BUCKETS


def test_a_shared_prompt_prefix_hits_the_prefix_cache(start: Start) -> None:
    double = start("--block-size", "4")

    def key(kind: str) -> str:
        return f"vllm:prefix_cache_{kind}_total{{{LABELS}}}"

    # Ten words: two full blocks of four, and the prompt's last token is never a hit.
    text = "one two three four five six seven eight nine ten"
    double.post("/v1/completions", {"prompt": text, "max_tokens": 1})
    assert double.metrics()[key("hits")] == 0
    double.post("/v1/completions", {"prompt": text, "max_tokens": 1})
    assert double.metrics()[key("hits")] == 8
    # The same words with a different first one share no prefix: no hit.
    double.post("/v1/completions", {"prompt": "zero " + text, "max_tokens": 1})
    double.post("/v1/completions", {"prompt": "0 " + text.replace("one ", ""), "max_tokens": 1})
    m = double.metrics()
    assert m[key("hits")] == 8
    assert m[key("queries")] == 10 + 10 + 11 + 10

    off = start("--block-size", "4", "--no-enable-prefix-caching")
    for _ in range(2):
        off.post("/v1/completions", {"prompt": text, "max_tokens": 1})
    assert off.metrics()[key("hits")] == off.metrics()[key("queries")] == 0


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


@pytest.mark.parametrize("timeout", ["0", "1"])
def test_sigterm_aborts_what_outlives_the_shutdown_timeout(start: Start, timeout: str) -> None:
    double = start("--shutdown-timeout", timeout)
    ctx, events = _held_stream(double, 8)
    double.proc.send_signal(signal.SIGTERM)
    with pytest.raises(httpx.RemoteProtocolError):
        list(events)
    ctx.__exit__(None, None, None)
    assert double.proc.wait(timeout=20) == 0
    assert "aborting the requests still in flight" in double.log.read_text()
