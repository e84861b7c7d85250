"""The carbon-aware router: the pure ranking, then real HTTP on loopback through vLLM test doubles.

Each router runs on its own asyncio loop in a background thread (as `harchos serve` runs it beside
the replica controller); tests reach its table only through that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from httpfake import FakeServer, Reply
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from vllm_doubles import MODEL, Double, Doubles

from harchos_cli import metrics
from harchos_cli.serve.router import Router, serve_forever, vllm_load
from harchos_cli.serve.routing import (
    Replica,
    ReplicaStateName,
    ReplicaTable,
    RoutingPolicy,
    choice_reason,
    ranked,
)
from harchos_cli.testing.vllm_double import Engine, Options

T = TypeVar("T")
POLICY = RoutingPolicy()


# The ranking, pure.


def _r(rid: str, intensity: float | None = None, **kw: Any) -> Replica:
    kw.setdefault("state", "ready")
    return Replica(id=rid, hub=rid.partition("/")[0], region=None, url="http://x",
                   intensity=intensity, **kw)  # fmt: skip


def _ids(replicas: Iterable[Replica]) -> list[str]:
    return [r.id for r in replicas]


def test_only_ready_replicas_are_ranked() -> None:
    states: list[ReplicaStateName] = ["starting", "ready", "dead", "draining", "stopped"]
    replicas = [_r(f"h/{i}", 10.0 * i) for i in range(5)]
    for replica, state in zip(replicas, states, strict=True):
        replica.state = state
    assert _ids(ranked(replicas, POLICY)) == ["h/1"]
    assert ranked([], POLICY) == []


def test_greenest_first_unknown_intensity_last_ties_by_load_then_id() -> None:
    replicas = [
        _r("d/0", None),
        _r("c/0", 300.0),
        _r("b/1", 100.0, running=2),
        _r("b/0", 100.0, running=1, in_flight=1),
        _r("a/0", 100.0, in_flight=1),
        _r("z/0", 50.0, running=40),
    ]
    assert _ids(ranked(replicas, POLICY)) == ["z/0", "a/0", "b/0", "b/1", "c/0", "d/0"]


def test_saturated_and_over_budget_replicas_come_last_least_loaded_first() -> None:
    policy = RoutingPolicy(latency_budget_s=1.0, max_waiting=2)
    replicas = [
        _r("green/0", 10.0, waiting=3),  # saturated: 3 waiting > 2
        _r("green/1", 20.0, latency_s=1.5),  # over budget
        _r("mid/0", 200.0, waiting=2, latency_s=1.0),  # at both limits: still preferred
        _r("dirty/0", 500.0, running=9),
    ]
    assert _ids(ranked(replicas, policy)) == ["mid/0", "dirty/0", "green/1", "green/0"]
    assert choice_reason(ranked(replicas, policy)) == "latency"


def test_choice_reason() -> None:
    assert choice_reason([_r("a/0", 10.0)]) == "only_ready"
    assert choice_reason([_r("a/0", 10.0), _r("b/0", 10.0)]) == "greenest"
    assert choice_reason([_r("a/0", None), _r("b/0", None)]) == "greenest"
    assert choice_reason([_r("a/0", None), _r("b/0", 5.0)]) == "latency"
    assert choice_reason([_r("a/0", 30.0), _r("b/0", 5.0)]) == "latency"
    with pytest.raises(ValueError, match="no replica"):
        choice_reason([])


_replicas = st.lists(
    st.builds(
        _r,
        st.sampled_from(["a/0", "a/1", "b/0", "c/0", "d/0", "e/0"]),
        st.one_of(st.none(), st.sampled_from([0.0, 50.0, 120.5, 400.0])),
        state=st.sampled_from(["starting", "ready", "dead", "draining", "stopped"]),
        running=st.integers(0, 3),
        waiting=st.integers(0, 3),
        in_flight=st.integers(0, 3),
        latency_s=st.one_of(st.none(), st.sampled_from([0.1, 2.0, 9.0])),
    ),
    max_size=6,
    unique_by=lambda r: r.id,
)


@given(_replicas, st.randoms(use_true_random=False))
def test_ranking_properties(replicas: list[Replica], rnd: Any) -> None:
    policy = RoutingPolicy(latency_budget_s=5.0, max_waiting=1)
    ranking = ranked(replicas, policy)
    shuffled = list(replicas)
    rnd.shuffle(shuffled)
    assert _ids(ranked(shuffled, policy)) == _ids(ranking)  # deterministic, order-free
    assert sorted(_ids(ranking)) == sorted(r.id for r in replicas if r.state == "ready")
    preferred = [r.waiting <= 1 and (r.latency_s or 0) <= 5.0 for r in ranking]
    assert preferred == sorted(preferred, reverse=True)  # every preferred one before the rest
    head = ranking[: preferred.count(True)]
    keys = [(r.intensity is None, r.intensity or 0.0) for r in head]
    assert keys == sorted(keys)
    tail = ranking[len(head) :]
    loads = [r.running + r.waiting + r.in_flight for r in tail]
    assert loads == sorted(loads)


def test_the_table_tells_its_listeners_and_counts_shares() -> None:
    heard: list[tuple[str, str | None, str | None]] = []
    table = ReplicaTable([_r("a/0")])
    table.subscribe(lambda r, old, new: heard.append((r.id, old, new)))
    table.add(Replica("b/0", "b", "north", "http://b"))
    with pytest.raises(ValueError, match="already"):
        table.add(_r("a/0"))
    table.set_state("b/0", "ready")
    table.set_state("b/0", "ready")
    with pytest.raises(KeyError):
        table.set_state("nope/0", "dead")
    assert table.shares() == {"a/0": 0.0, "b/0": 0.0}
    table.get("a/0").requests = 3  # type: ignore[union-attr]
    table.get("b/0").requests = 1  # type: ignore[union-attr]
    assert table.shares() == {"a/0": 0.75, "b/0": 0.25}
    assert table.remove("a/0") is not None
    assert table.remove("a/0") is None
    assert _ids(table.all()) == ["b/0"]
    assert heard == [
        ("b/0", None, "starting"),
        ("b/0", "starting", "ready"),
        ("a/0", "ready", None),
    ]


def test_vllm_load_sums_label_sets_of_a_real_metrics_page() -> None:
    engine = Engine(Options(model=MODEL, port=0))
    engine.running, engine.waiting = 3, 2
    page = engine.metrics_text()
    other = 'vllm:num_requests_running{model_name="other"} 4.0\n'
    assert vllm_load(page) == (3, 2)
    assert vllm_load(page + other) == (7, 2)
    assert vllm_load("") == (0, 0)
    with pytest.raises(ValueError, match="four"):
        vllm_load('vllm:num_requests_running{model_name="m"} four\n')


# Real HTTP on loopback.


class Harness:
    """A Router on its own asyncio loop in a background thread."""

    def __init__(self, replicas: list[Replica], **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.table = ReplicaTable(replicas)
        self.router = Router(self.table, **{"poll_s": 0.05, "refresh_s": 0.05, **options})
        self.url = self.run(self.router.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def on_loop() -> T:
            return fn(*args)

        return self.run(on_loop())

    def replica(self, replica_id: str) -> Replica:
        """A copy of the replica as the router sees it now."""

        def copy() -> Replica:
            replica = self.table.get(replica_id)
            assert replica is not None
            return dataclasses.replace(replica)

        return self.call(copy)

    def wait_ready(self, *replica_ids: str) -> None:
        _wait(lambda: all(self.replica(i).state == "ready" for i in replica_ids), "ready")

    def metrics(self) -> dict[str, float]:
        """The router's /metrics samples, keyed by `name{label="value",...}` in label order."""
        samples = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    def close(self) -> None:
        self.run(self.router.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def doubles(tmp_path: Path) -> Iterator[Doubles]:
    started = Doubles(tmp_path)
    yield started
    started.close()


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(replicas: list[Replica], **options: Any) -> Harness:
        made.append(Harness(replicas, **options))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _replica(rid: str, double: Double | str, region: str | None) -> Replica:
    url = double if isinstance(double, str) else double.url
    return Replica(id=rid, hub=rid.partition("/")[0], region=region, url=url)


def _complete(url: str, max_tokens: int = 2, **kw: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hello green grid", "max_tokens": max_tokens}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30, **kw)


def _served_by(url: str, n: int) -> list[str]:
    answers = [_complete(url) for _ in range(n)]
    assert [a.status_code for a in answers] == [200] * n, answers[0].text
    return [a.headers["x-harchos-replica"] for a in answers]


def _events(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def _successes(double: Double) -> float:
    return double.total("vllm:request_success_total")


def test_requests_go_to_the_greenest_ready_replica_and_follow_the_grid(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    north, south = doubles.start([], [])
    grid = {"north": 300.0, "south": 100.0, "east": 10.0}
    h = harness(
        [_replica("n/0", north, "north"), _replica("s/0", south, "south"),
         _replica("e/0", _closed_url(), "east")],
        intensity=grid.get,
    )  # fmt: skip
    h.wait_ready("n/0", "s/0")
    _wait(lambda: h.replica("n/0").intensity == 300.0, "the intensities")
    assert _served_by(h.url, 4) == ["s/0"] * 4
    assert (_successes(south), _successes(north)) == (4, 0)
    assert h.replica("e/0").state == "starting"  # greenest, but its port is closed

    grid["north"] = 50.0
    _wait(lambda: h.replica("n/0").intensity == 50.0, "the new intensity")
    assert _served_by(h.url, 4) == ["n/0"] * 4
    assert (_successes(south), _successes(north)) == (4, 4)
    assert h.call(h.table.shares) == {"n/0": 0.5, "s/0": 0.5, "e/0": 0.0}
    assert h.metrics()['harchos_router_decisions_total{reason="greenest",replica="n/0"}'] == 4


def test_a_saturated_green_replica_spills_over_to_the_next(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start(["--max-num-seqs", "1"], [])
    h = harness([_replica("g/0", green, "g"), _replica("o/0", other, "o")],
                intensity={"g": 50.0, "o": 400.0}.get)  # fmt: skip
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    assert green.post("/debug/hold").status_code == 200
    streams: dict[int, tuple[str, list[str]]] = {}

    def stream(i: int) -> None:
        body = {"prompt": f"request {i}", "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=30) as r:
            streams[i] = (r.headers["x-harchos-replica"], list(_events(r.iter_lines())))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    threads[0].start()
    _wait(lambda: green.total("vllm:num_requests_running") == 1, "one request running")
    threads[1].start()
    _wait(lambda: green.total("vllm:num_requests_waiting") == 1, "one request waiting")
    _wait(lambda: h.replica("g/0").waiting == 1, "the router to see the queue")

    assert _served_by(h.url, 2) == ["o/0", "o/0"]
    assert h.metrics()['harchos_router_decisions_total{reason="latency",replica="o/0"}'] == 2

    assert green.post("/debug/release").status_code == 200
    for t in threads:
        t.join(timeout=30)
    assert [streams[i][0] for i in range(2)] == ["g/0", "g/0"]
    assert all(events[-1] == "[DONE]" for _, events in streams.values())
    _wait(lambda: h.replica("g/0").waiting == 0, "the queue to clear")
    assert _served_by(h.url, 1) == ["g/0"]


def test_a_killed_replica_fails_over_without_client_errors(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start(["--token-delay", "0.1"], [])
    # One monitor round only: the router itself must notice the dead replica.
    h = harness([_replica("g/0", green, "g"), _replica("o/0", other, "o")],
                intensity={"g": 50.0, "o": 400.0}.get, poll_s=600.0)  # fmt: skip
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    assert _complete(h.url, max_tokens=1).headers["x-harchos-replica"] == "g/0"

    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(_complete(h.url, max_tokens=50)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    _wait(lambda: green.total("vllm:num_requests_running") == 3, "three requests on g/0")
    green.proc.kill()
    green.proc.wait()
    for t in threads:
        t.join(timeout=30)
    assert [a.status_code for a in answers] == [200] * 3
    assert {a.headers["x-harchos-replica"] for a in answers} == {"o/0"}
    assert all(len(a.json()["choices"][0]["text"].split()) == 50 for a in answers)

    assert _served_by(h.url, 1) == ["o/0"]
    assert h.replica("g/0").state == "dead"  # a refused connection, without waiting for a poll
    failures = h.replica("g/0").failures
    assert failures >= 3
    assert _served_by(h.url, 3) == ["o/0"] * 3
    assert h.replica("g/0").failures == failures  # a dead replica is not tried again
    assert h.metrics()['harchos_router_decisions_total{reason="failover",replica="o/0"}'] >= 3


def test_a_slow_replica_is_passed_over_until_its_estimate_recovers(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start(["--token-delay", "0.4"], [])
    options: dict[str, Any] = {
        "policy": RoutingPolicy(latency_budget_s=0.05),
        "intensity": {"g": 50.0, "o": 400.0}.get,
    }

    def replicas() -> list[Replica]:
        return [_replica("g/0", green, "g"), _replica("o/0", other, "o")]

    h = harness(replicas(), poll_s=600.0, **options)  # no poll to pull the estimate back
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    body = {"prompt": "slow", "max_tokens": 1, "stream": True}
    with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["x-harchos-replica"] == "g/0"
        r.read()
    assert h.replica("g/0").latency_s > 0.05  # type: ignore[operator]
    assert _served_by(h.url, 2) == ["o/0", "o/0"]
    assert h.metrics()['harchos_router_decisions_total{reason="latency",replica="o/0"}'] == 2

    h = harness(replicas(), **options)
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    h.call(setattr, h.table.get("g/0"), "latency_s", 10.0)  # a slow spell
    _wait(lambda: h.replica("g/0").latency_s < 0.05, "the idle estimate to follow /health")  # type: ignore[operator]
    assert _complete(h.url, max_tokens=1).headers["x-harchos-replica"] == "g/0"


def _stream_until_killed(h: Harness, kill: Callable[[], None]) -> list[str]:
    """Stream a long answer through the router, call `kill` after three events, read to the end.

    The client's read timeout bounds the wait: a router that hangs fails the test.
    """
    body = {"prompt": "a long answer", "max_tokens": 400, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=10) as r:
        assert r.headers["x-harchos-replica"] == "g/0"
        for event in _events(r.iter_lines()):
            events.append(event)
            if len(events) == 3:
                kill()
    return events


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start(["--token-delay", "0.05"], [])
    h = harness([_replica("g/0", green, "g"), _replica("o/0", other, "o")],
                intensity={"g": 50.0, "o": 400.0}.get)  # fmt: skip
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    events = _stream_until_killed(h, green.proc.kill)
    assert 3 <= len(events) < 400
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "replica_failed"
    assert all("error" not in json.loads(e) for e in events[:-1])
    _wait(lambda: h.replica("g/0").in_flight == 0, "the request to be let go")
    assert _served_by(h.url, 1) == ["o/0"]


def test_a_replica_that_stalls_for_ever_is_cut_by_the_monitor(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start(["--token-delay", "0.05"], [])
    h = harness([_replica("g/0", green, "g"), _replica("o/0", other, "o")],
                intensity={"g": 50.0, "o": 400.0}.get, probe_timeout_s=0.3,
                unhealthy_after=2)  # fmt: skip
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    waiting: list[httpx.Response] = []  # a non-streaming answer: nothing reaches the client early
    thread = threading.Thread(target=lambda: waiting.append(_complete(h.url, max_tokens=400)))
    thread.start()
    _wait(lambda: green.total("vllm:num_requests_running") == 1, "a request on g/0")
    try:
        # SIGSTOP keeps its sockets open and silent, as a hub cut off the network would.
        events = _stream_until_killed(h, lambda: os.kill(green.proc.pid, signal.SIGSTOP))
        thread.join(timeout=10)
        assert h.replica("g/0").state == "dead"
    finally:
        os.kill(green.proc.pid, signal.SIGCONT)
    assert json.loads(events[-1])["error"]["type"] == "replica_failed"
    assert "[DONE]" not in events
    assert waiting[0].status_code == 200
    assert waiting[0].headers["x-harchos-replica"] == "o/0"  # moved when g/0 was found dead


class _Torn(BaseHTTPRequestHandler):
    """A replica that streams whole and split events, then dies halfway through one."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b'data: {"n": 1}\n\ndata: {"n"', b": 2}\r\n\r\n", b'data: {"n": 3'):
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
        self.close_connection = True  # no last chunk: the answer is cut off


def test_a_half_written_event_is_never_passed_on(harness: Callable[..., Harness]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Torn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        h = harness([_replica("t/0", f"http://127.0.0.1:{server.server_address[1]}", None)])
        h.wait_ready("t/0")
        body = {"prompt": "x", "stream": True}
        with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=10) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    events = [e for e in re.split(r"\r?\n\r?\n", text) if e]
    assert events[:2] == ['data: {"n": 1}', 'data: {"n": 2}']
    assert json.loads(events[2].removeprefix("data: "))["error"]["type"] == "replica_failed"
    assert len(events) == 3
    assert h.replica("t/0").failures == 1


def test_streams_pass_through_chunk_by_chunk(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    (double,) = doubles.start(["--token-delay", "0.05"])
    h = harness([_replica("d/0", double, None)])
    h.wait_ready("d/0")
    assert double.post("/debug/hold").status_code == 200
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}
    with httpx.stream("POST", f"{h.url}/v1/chat/completions", json=body, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.iter_lines())
        # vLLM's role chunk comes before the first token: it arrives while no token can be made.
        role = json.loads(next(events))
        assert role["choices"][0]["delta"]["role"] == "assistant"
        assert double.total("vllm:generation_tokens_total") == 0
        assert double.post("/debug/release").status_code == 200
        first = json.loads(next(events))
        assert first["choices"][0]["delta"]["content"]
        assert double.total("vllm:generation_tokens_total") < 20  # before the last is made
        rest = list(events)
    assert len(rest) == 19 + 2  # the other tokens, the finish chunk, [DONE]
    assert rest[-1] == "[DONE]"


def test_a_client_that_leaves_mid_stream_frees_the_replica(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    (double,) = doubles.start(["--token-delay", "0.05"])
    h = harness([_replica("d/0", double, None)])
    h.wait_ready("d/0")
    body = {"prompt": "go on", "max_tokens": 400, "stream": True}
    with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=10) as r:
        assert next(_events(r.iter_lines()))
    _wait(lambda: double.total("vllm:num_requests_running") == 0, "the replica to stop")
    _wait(lambda: h.replica("d/0").in_flight == 0, "the router to let go")
    assert double.total("vllm:generation_tokens_total") < 400


def test_draining_replicas_get_no_new_requests(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    green, other = doubles.start([], [])
    h = harness([_replica("g/0", green, "g"), _replica("o/0", other, "o")],
                intensity={"g": 50.0, "o": 400.0}.get)  # fmt: skip
    h.wait_ready("g/0", "o/0")
    _wait(lambda: h.replica("o/0").intensity == 400.0, "the intensities")
    assert green.post("/debug/hold").status_code == 200
    body = {"prompt": "finish me", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{h.url}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["x-harchos-replica"] == "g/0"
        h.call(h.table.set_state, "g/0", "draining")
        assert _served_by(h.url, 3) == ["o/0"] * 3
        polls = h.router.polls
        _wait(lambda: h.router.polls >= polls + 3, "three monitor rounds")
        assert h.replica("g/0").state == "draining"  # /health still 200: the monitor keeps it
        assert h.replica("g/0").running == 1  # still scraped, for the controller to see
        assert green.post("/debug/release").status_code == 200
        events = list(_events(r.iter_lines()))
    assert events[-1] == "[DONE]"  # draining lets open requests finish
    _wait(lambda: h.replica("g/0").running == 0, "the drained replica to be seen empty")
    assert _served_by(h.url, 1) == ["o/0"]


def test_router_health_metrics_and_no_replica(
    doubles: Doubles, harness: Callable[..., Harness]
) -> None:
    h = harness([_replica("x/0", _closed_url(), "east")], intensity={"north": 120.0}.get)
    health = httpx.get(f"{h.url}/health")
    assert (health.status_code, health.json()["ready_replicas"]) == (503, 0)
    refused = _complete(h.url)
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "no_replica"
    assert httpx.get(f"{h.url}/nothing").status_code == 404

    (double,) = doubles.start([])
    h.call(h.table.add, _replica("d/0", double, "north"))
    _wait(lambda: httpx.get(f"{h.url}/health").status_code == 200, "/health 200")
    assert httpx.get(f"{h.url}/health").json() == {"status": "ok", "ready_replicas": 1}
    _wait(lambda: h.replica("d/0").intensity == 120.0, "the new region's intensity")
    assert _served_by(h.url, 3) == ["d/0"] * 3
    unknown_model = httpx.post(f"{h.url}/v1/completions", json={"model": "no", "prompt": "x"})
    assert unknown_model.status_code == 404  # the replica's answer, passed through
    assert unknown_model.json()["error"]["type"] == "NotFoundError"

    page = httpx.get(f"{h.url}/metrics")
    assert page.status_code == 200
    names = [s.name for family in text_string_to_metric_families(page.text) for s in family.samples]
    assert list(metrics.unknown_series(names)) == []
    m = h.metrics()
    assert m['harchos_router_requests_total{code="200",region="north",replica="d/0"}'] == 3
    assert m['harchos_router_requests_total{code="404",region="north",replica="d/0"}'] == 1
    assert m['harchos_router_requests_total{code="503",region="none",replica="none"}'] == 1
    assert m['harchos_router_decisions_total{reason="only_ready",replica="d/0"}'] == 4
    assert m['harchos_router_request_duration_seconds_count{replica="d/0"}'] == 4
    emitted = m['harchos_router_estimated_emissions_kgco2_total{region="north",replica="d/0"}']
    assert emitted == pytest.approx(3 * 3e-4 * 120.0 / 1000)
    assert m['harchos_router_replica_state{hub="d",region="north",replica="d/0",state="ready"}']
    assert m['harchos_router_replica_state{hub="x",region="east",replica="x/0",state="starting"}']
    assert not m['harchos_router_replica_state{hub="d",region="north",replica="d/0",state="dead"}']
    assert m['harchos_replica_up{hub="d",replica="d/0"}'] == 1
    assert m['harchos_replica_up{hub="x",replica="x/0"}'] == 0
    assert m['harchos_router_carbon_intensity_gco2_per_kwh{region="north"}'] == 120.0


def test_keys_are_forwarded_but_never_logged_or_exported(
    doubles: Doubles, harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeServer() as fake:
        fake.route("/health", Reply(200, {}))
        fake.route("/v1/models", Reply(200, {"object": "list", "data": []}))
        h = harness([_replica("f/0", fake.url, None)])
        h.wait_ready("f/0")
        answer = httpx.get(
            f"{h.url}/v1/models?api-key=SECRET-Q",
            headers={"Authorization": "Bearer SECRET-A", "api-key": "SECRET-K",
                     "X-Trace": "t1", "X-Hop": "1", "Connection": "keep-alive, X-Hop",
                     "TE": "trailers", "Keep-Alive": "timeout=5"},
        )  # fmt: skip
        assert answer.status_code == 200
        seen = fake.hits("/v1/models")[-1]
    assert seen.headers["authorization"] == "Bearer SECRET-A"
    assert seen.headers["api-key"] == "SECRET-K"
    assert seen.query == {"api-key": "SECRET-Q"}
    assert seen.headers["x-trace"] == "t1"
    assert seen.headers["host"] == fake.url.removeprefix("http://")
    assert not {"x-hop", "te", "keep-alive"} & set(seen.headers)

    (locked,) = doubles.start(["--api-key", "SECRET-A"])
    # A greener replica that refuses connections, so that the router has a failover to log.
    h = harness([_replica("l/0", locked, "b"), _replica("z/0", _closed_url(), "a")],
                intensity={"a": 1.0, "b": 2.0}.get, poll_s=600.0)  # fmt: skip
    h.wait_ready("l/0")
    _wait(lambda: h.replica("l/0").intensity == 2.0, "the intensities")
    h.call(h.table.set_state, "z/0", "ready")
    auth = {"Authorization": "Bearer SECRET-A"}
    assert _complete(h.url, headers=auth).status_code == 200
    assert _complete(h.url).status_code == 401  # the key reached the replica only when given
    h.call(h.table.set_state, "l/0", "dead")
    refused = _complete(h.url, headers=auth)
    assert refused.status_code == 503
    exported = httpx.get(f"{h.url}/metrics").text
    assert h.replica("z/0").failures == 1
    # Everything logged in this process but by the test's own client (httpx logs its URLs).
    formatter = logging.Formatter()
    logged = [formatter.format(r) for r in caplog.records if not r.name.startswith("http")]
    assert any("z/0 failed a request" in line for line in logged)
    for text in (*logged, exported, refused.text):
        assert "SECRET" not in text


def test_the_standalone_router_serves_its_replicas_until_cancelled(doubles: Doubles) -> None:
    (double,) = doubles.start([])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    listening: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def start() -> asyncio.Task[None]:
        return asyncio.create_task(
            serve_forever([(_closed_url(), None), (double.url, "north")], "127.0.0.1", 0,
                          RoutingPolicy(), {"north": 80.0}.get, on_ready=listening.set_result,
                          poll_s=0.05)
        )  # fmt: skip

    async def cancel(task: asyncio.Task[None]) -> bool:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return task.cancelled()

    task = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        url = listening.result(timeout=10)
        _wait(lambda: httpx.get(f"{url}/health").status_code == 200, "/health 200")
        assert httpx.get(f"{url}/health").json()["ready_replicas"] == 1
        assert _served_by(url, 2) == ["static/1", "static/1"]
    finally:
        cancelled = asyncio.run_coroutine_threadsafe(cancel(task), loop).result(timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
    assert cancelled
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")
