"""The load test: its statistics and schedules, then runs against harchos's vLLM test double.

The double generates one token every `--token-delay` seconds, the first one included, so with a
delay D every request's time to first token is at least D and its latency at least D per token;
its `/metrics` counts what the server itself saw (requests, tokens, requests in flight).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, wait_until

import client
import loadtest
from loadtest import Prompt
from serve import ServeSettings

DELAY = 0.02  # seconds per token on the slow server
# Long enough for several of vLLM's 16-token blocks, so a shared prefix would be cached.
LONG_PROMPT = " ".join(["Explain why the carbon intensity of electricity varies by hour."] * 5)


def _sum(text: str, name: str) -> float:
    """The sum of a metric's samples in a `/metrics` page."""
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def _in_flight_of(text: str) -> float:
    return _sum(text, "vllm:num_requests_running") + _sum(text, "vllm:num_requests_waiting")


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on the server behind API base URL `url`."""
    return _sum(httpx.get(url.removesuffix("/v1") + "/metrics").text, name)


def in_flight(url: str) -> float:
    return _in_flight_of(httpx.get(url.removesuffix("/v1") + "/metrics").text)


class Counters:
    """What the server counted between its creation and `delta` (requests, tokens)."""

    NAMES = ("vllm:request_success_total", "vllm:generation_tokens_total",
             "vllm:prompt_tokens_total")  # fmt: skip

    def __init__(self, url: str) -> None:
        self.url = url
        self.start = {name: metric(url, name) for name in self.NAMES}

    def delta(self, name: str) -> float:
        return metric(self.url, name) - self.start[name]


class Watch:
    """Polls the server's running + waiting requests in a thread; `peak` is the most it saw."""

    def __init__(self, url: str) -> None:
        self.url, self.peak, self.samples = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll)

    def _poll(self) -> None:
        with httpx.Client() as http:
            while not self._stop.wait(0.002):
                text = http.get(self.url.removesuffix("/v1") + "/metrics").text
                self.peak = max(self.peak, _in_flight_of(text))
                self.samples += 1

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def held(
    url: str, expect: int, run: Callable[[], loadtest.Report], hold_for: float = 0.1
) -> tuple[loadtest.Report, Watch]:
    """`run` the load test in a thread while the double holds every request before its first
    token; once `expect` are in flight, keep them held `hold_for` seconds more (a load test that
    sent more would show it), then release them. The server side is watched throughout."""
    assert httpx.post(url.removesuffix("/v1") + "/debug/hold").status_code == 200
    reports: list[loadtest.Report] = []
    thread = threading.Thread(target=lambda: reports.append(run()))
    with Watch(url) as watch:
        thread.start()
        try:
            wait_until(lambda: in_flight(url) == expect, f"{expect} requests in flight")
            wait_until(lambda: watch.peak >= expect, f"the watch to see {expect} in flight")
            time.sleep(hold_for)
        finally:
            httpx.post(url.removesuffix("/v1") + "/debug/release")
            thread.join(timeout=120)
    assert watch.samples > 0
    return reports[0], watch


@pytest.fixture(scope="module")
def slow_server(start_server: Callable[..., str]) -> str:
    return start_server("--token-delay", str(DELAY))


@pytest.fixture
def model(settings: ServeSettings) -> str:
    return settings.served_model_name


# --- statistics, schedules, prompts --------------------------------------------------------------


def test_percentiles_interpolate_as_numpy_does() -> None:
    values = [float(v) for v in random.Random(1).sample(range(1, 11), 10)]
    assert loadtest.percentile(values, 50) == pytest.approx(5.5)
    assert loadtest.percentile(values, 90) == pytest.approx(9.1)
    assert loadtest.percentile(values, 99) == pytest.approx(9.91)
    assert (loadtest.percentile(values, 0), loadtest.percentile(values, 100)) == (1, 10)
    assert loadtest.percentile([3.0], 99) == 3
    assert math.isnan(loadtest.percentile([], 50))
    with pytest.raises(ValueError, match="between 0 and 100"):
        loadtest.percentile(values, 101)
    s = loadtest.stats([0.001, 0.002, 0.003, math.nan], [50, 99.9])
    assert s.count == 3
    assert s.mean_ms == pytest.approx(2)
    assert s.std_ms == pytest.approx(math.sqrt(2 / 3))
    assert s.percentiles_ms == {"p50": pytest.approx(2), "p99.9": pytest.approx(2.998)}


def test_arrivals_are_a_seeded_poisson_process() -> None:
    offsets = loadtest.arrival_offsets(4.0, 4000, seed=7)
    assert offsets == loadtest.arrival_offsets(4.0, 4000, seed=7)
    assert offsets != loadtest.arrival_offsets(4.0, 4000, seed=8)
    gaps = [offsets[0], *(b - a for a, b in itertools.pairwise(offsets))]
    assert min(gaps) > 0
    # Exponential gaps: mean and standard deviation both 1/rate (fixed by the seed, no flakes).
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.1)
    # Gamma gaps of burstiness 4: the same mean, half the spread (1 / sqrt(4)).
    bursty = loadtest.arrival_offsets(4.0, 4000, seed=7, burstiness=4.0)
    gaps = [bursty[0], *(b - a for a, b in itertools.pairwise(bursty))]
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    assert statistics.pstdev(gaps) == pytest.approx(0.125, rel=0.1)
    assert loadtest.arrival_offsets(math.inf, 3, seed=0) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rate"):
        loadtest.arrival_offsets(0, 1, seed=0)


def test_the_sample_dataset_loads() -> None:
    lines = [ln for ln in loadtest.DEFAULT_DATASET.read_text().splitlines() if ln.strip()]
    prompts = loadtest.load_dataset(loadtest.DEFAULT_DATASET)
    assert len(prompts) == len(lines) >= 10
    assert len({p.text for p in prompts}) == len(prompts)
    assert all(p.output_tokens and p.output_tokens >= 1 for p in prompts)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"prompt": "a"}\n\n{"prompt": "b"\n', r"x\.jsonl:3: not JSON"),
        ('{"text": "a"}\n', r":1: \"prompt\" must be a non-empty string"),
        ('["a"]\n', r":1: expected an object"),
        ('{"prompt": "a", "output_tokens": 0}\n', r":1: \"output_tokens\" must be a positive"),
        ('{"prompt": "a", "output_tokens": "9"}\n', r":1: \"output_tokens\" must be a positive"),
        ('{"prompt": "a", "output_tokens": true}\n', r":1: \"output_tokens\" must be a positive"),
        ("\n  \n", r"no prompts"),
    ],
)
def test_a_bad_dataset_line_is_named(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(loadtest.DatasetError, match=error):
        loadtest.load_dataset(path)


def test_a_dataset_may_carry_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "id": 1}\n\n{"prompt": "b", "output_tokens": 9}\n')
    assert loadtest.load_dataset(path) == [Prompt("a"), Prompt("b", 9)]


def test_requests_cycle_through_the_prompts() -> None:
    prompts = [Prompt("first question", 5), Prompt("second question")]
    requests = loadtest.make_requests(prompts, 5, run_id="r1")
    assert [r.prompt for r in requests] == [
        "r1-0: first question", "r1-1: second question", "r1-2: first question",
        "r1-3: second question", "r1-4: first question",
    ]  # fmt: skip
    assert [r.max_tokens for r in requests] == [5, loadtest.DEFAULT_OUTPUT_LEN] * 2 + [5]
    assert {r.max_tokens for r in loadtest.make_requests(prompts, 4, output_len=7)} == {7}
    plain = loadtest.make_requests(prompts, 2, unique_prefix=False)
    assert [r.prompt for r in plain] == ["first question", "second question"]
    # Without a run id each run picks its own: no two requests of two runs share a first word.
    first = loadtest.make_requests(prompts, 3) + loadtest.make_requests(prompts, 3)
    assert len({r.prompt.split()[0] for r in first}) == 6


def test_synthetic_prompts_are_seeded() -> None:
    prompts = loadtest.synthetic_prompts(20, 12, seed=3)
    assert all(len(p.text.split()) == 12 and p.output_tokens is None for p in prompts)
    assert len({p.text for p in prompts}) == 20
    assert prompts == loadtest.synthetic_prompts(20, 12, seed=3)
    assert prompts != loadtest.synthetic_prompts(20, 12, seed=4)


def test_goodput_objectives() -> None:
    assert loadtest.parse_goodput(["ttft:500", "e2el:2500.5"]) == {"ttft": 500, "e2el": 2500.5}
    for bad in (["itl:5"], ["ttft:fast"], ["ttft:0"]):
        with pytest.raises(ValueError, match="goodput"):
            loadtest.parse_goodput(bad)


# --- against the test double ---------------------------------------------------------------------


def test_every_request_is_measured_from_its_stream(slow_server: str, model: str) -> None:
    lengths = [2, 3, 4, 5, 6, 7]
    prompts = [Prompt(f"question number {n}", n) for n in lengths]
    counted = Counters(slow_server)
    report = loadtest.run(slow_server, model, loadtest.make_requests(prompts, len(prompts)),
                          api_key=API_KEY, concurrency=3)  # fmt: skip
    # Every request completed, with the length it asked for, and the server agrees.
    assert (report.mode, report.completed, report.failed, report.errors) == ("closed", 6, 0, {})
    assert [o.output_tokens for o in report.outcomes] == lengths
    assert report.total_output_tokens == sum(lengths)
    assert counted.delta("vllm:request_success_total") == len(prompts)
    assert counted.delta("vllm:generation_tokens_total") == sum(lengths)
    assert counted.delta("vllm:prompt_tokens_total") == report.total_input_tokens > 0
    # The double waits DELAY before each token, the first included.
    for o in report.outcomes:
        assert o.ttft_s >= DELAY
        assert len(o.itl_s) == o.output_tokens - 1  # a gap between each two tokens
        assert o.ttft_s + sum(o.itl_s) <= o.e2el_s
        assert o.e2el_s >= o.output_tokens * DELAY
        assert o.tpot_s == pytest.approx((o.e2el_s - o.ttft_s) / (o.output_tokens - 1))
    assert report.ttft.percentiles_ms["p50"] >= DELAY * 1000
    assert report.ttft.count == report.tpot.count == report.e2el.count == 6
    assert report.itl.count == sum(lengths) - 6
    # Loose lower bounds: loopback delivery jitters each gap, never the sum by half a delay.
    assert report.itl.mean_ms >= DELAY * 1000 / 2
    assert report.tpot.percentiles_ms["p50"] >= DELAY * 1000 / 2
    assert report.e2el.percentiles_ms["p99"] >= 7 * DELAY * 1000
    assert list(report.e2el.percentiles_ms) == ["p50", "p90", "p99"]
    assert report.max_in_flight == 3
    assert report.request_throughput == pytest.approx(6 / report.duration_s)
    assert report.output_throughput == pytest.approx(sum(lengths) / report.duration_s)
    total = report.total_input_tokens + sum(lengths)
    assert report.total_token_throughput == pytest.approx(total / report.duration_s)
    # Goodput: no request can reach its first token in under DELAY; all finish within a minute.
    slos = {"ttft": DELAY * 500, "e2el": 60_000}  # a request must meet both
    strict = loadtest.summarise(report.outcomes, report.duration_s, goodput=slos,
                                **_settings(report))  # fmt: skip
    assert strict.request_goodput == 0
    lax = loadtest.summarise(report.outcomes, report.duration_s, goodput={"e2el": 60_000},
                             **_settings(report))  # fmt: skip
    assert lax.request_goodput == pytest.approx(report.request_throughput)


def _settings(report: loadtest.Report) -> dict[str, Any]:
    names = ("mode", "endpoint", "model", "dataset", "concurrency", "request_rate", "burstiness",
             "max_concurrency", "seed", "warmups", "max_in_flight")  # fmt: skip
    return {name: getattr(report, name) for name in names}


def test_a_closed_loop_never_has_more_than_its_users_in_flight(server: str, model: str) -> None:
    requests = loadtest.make_requests([Prompt("q", 2)], 9)
    report, watch = held(server, 3, lambda: loadtest.run(
        server, model, requests, api_key=API_KEY, concurrency=3
    ))  # fmt: skip
    assert watch.peak == 3  # on the server, from the first request to the last
    assert (report.completed, report.failed, report.max_in_flight) == (9, 0, 3)


def test_an_open_loop_sends_all_at_once_past_100_connections(server: str, model: str) -> None:
    # Nothing is answered while held, so a closed loop would stop at its users and httpx's
    # default pool at 100 connections; the open loop sends all 120 at once.
    requests = loadtest.make_requests([Prompt("q", 2)], 120)
    report, watch = held(server, 120, lambda: loadtest.run(
        server, model, requests, api_key=API_KEY, rate=math.inf
    ))  # fmt: skip
    assert (report.mode, report.request_rate, report.concurrency) == ("open", math.inf, None)
    assert (report.completed, report.failed, report.max_in_flight) == (120, 0, 120)
    assert watch.peak == 120
    assert report.total_output_tokens == 240


def test_max_concurrency_caps_an_open_loop(server: str, model: str) -> None:
    requests = loadtest.make_requests([Prompt("q", 2)], 8)
    report, watch = held(server, 3, lambda: loadtest.run(
        server, model, requests, api_key=API_KEY, rate=math.inf, max_concurrency=3
    ), hold_for=0.2)  # fmt: skip
    assert watch.peak == 3
    assert (report.completed, report.max_in_flight, report.max_concurrency) == (8, 3, 3)
    # Five were due at once but waited for a free slot, through the hold at least.
    queued = sorted(o.queued_s for o in report.outcomes)
    # The first three were in flight before the hold began; the others were sent after it ended.
    assert max(queued[:3]) + 0.2 <= min(queued[3:])


def test_an_open_loop_keeps_its_seeded_schedule(server: str, model: str) -> None:
    prompts = [Prompt(f"{n} words in this prompt", 2) for n in range(15)]
    requests = loadtest.make_requests(prompts, 15, unique_prefix=False)
    counted = Counters(server)
    report = loadtest.run(server, model, requests, api_key=API_KEY, rate=100.0, seed=5,
                          endpoint="completions")  # fmt: skip
    assert (report.mode, report.request_rate, report.seed, report.burstiness) == (
        "open", 100.0, 5, 1.0)  # fmt: skip
    assert report.endpoint == "completions"
    schedule = loadtest.arrival_offsets(100.0, 15, seed=5)
    assert [o.scheduled_s for o in report.outcomes] == schedule
    assert all(o.sent_s >= o.scheduled_s for o in report.outcomes if o.scheduled_s is not None)
    assert report.completed == 15
    # /v1/completions sends the prompt as it is: the server counts its 5 words.
    assert all(o.prompt_tokens == 5 for o in report.outcomes)
    assert counted.delta("vllm:prompt_tokens_total") == 15 * 5


def test_warmup_requests_are_sent_but_not_measured(server: str, model: str) -> None:
    counted = Counters(server)
    requests = loadtest.make_requests([Prompt("q", 3)], 2)
    report = loadtest.run(server, model, requests, api_key=API_KEY, warmup=3)
    assert (report.completed, report.warmups, report.total_output_tokens) == (2, 3, 6)
    assert counted.delta("vllm:request_success_total") == 5


def test_its_prompts_defeat_the_prefix_cache(server: str, model: str) -> None:
    queries, hits = (
        metric(server, "vllm:prefix_cache_queries_total"),
        metric(server, "vllm:prefix_cache_hits_total"),
    )
    for _ in range(2):  # a second run with the same prompts does not hit the first's either
        requests = loadtest.make_requests([Prompt(LONG_PROMPT, 2)], 6)
        loadtest.run(server, model, requests, api_key=API_KEY)
    assert metric(server, "vllm:prefix_cache_queries_total") - queries >= 12 * 50
    assert metric(server, "vllm:prefix_cache_hits_total") == hits
    # A number at the end instead, as the load test once did: every request after the first hits.
    with client.make_client(server, API_KEY) as http:
        for i in range(2):
            client.chat(http, model, [{"role": "user", "content": f"{LONG_PROMPT} (#{i})"}], 2)
    assert metric(server, "vllm:prefix_cache_hits_total") - hits >= 48


def test_failures_are_counted_not_timed(server: str, model: str, settings: ServeSettings) -> None:
    too_long = " ".join(["word"] * (settings.max_model_len + 1))
    prompts = [Prompt("short", 2), Prompt(too_long, 2), Prompt("short", 2), Prompt("short", 2)]
    report = loadtest.run(server, model, loadtest.make_requests(prompts, 4), api_key=API_KEY)
    assert (report.completed, report.failed) == (3, 1)
    [(error, count)] = report.errors.items()
    assert count == 1
    assert error.startswith("HTTP 400: This model's maximum context length")
    assert report.ttft.count == 3
    assert report.total_output_tokens == 6
    assert report.outcomes[1].error == error

    report = loadtest.run(server, "no-such-model", loadtest.make_requests(prompts[:1], 3),
                          api_key=API_KEY)  # fmt: skip
    assert (report.completed, report.failed, report.total_output_tokens) == (0, 3, 0)
    assert report.errors == {"HTTP 404: The model `no-such-model` does not exist.": 3}
    assert math.isnan(report.e2el.percentiles_ms["p50"])
    assert report.request_throughput == 0


def test_a_stream_cut_short_is_a_failure(start_server: Callable[..., str], model: str) -> None:
    url = start_server()  # its engine dies: a server of its own
    requests = loadtest.make_requests([Prompt("q", 4)], 3)

    def kill_mid_stream() -> None:
        try:
            wait_until(lambda: in_flight(url) == 3, "3 requests in flight")
            httpx.post(url.removesuffix("/v1") + "/debug/kill-engine")
        finally:
            httpx.post(url.removesuffix("/v1") + "/debug/release")

    assert httpx.post(url.removesuffix("/v1") + "/debug/hold").status_code == 200
    killer = threading.Thread(target=kill_mid_stream)
    killer.start()
    report = loadtest.run(url, model, requests, api_key=API_KEY, concurrency=3, timeout=60)
    killer.join()
    assert (report.completed, report.failed, report.total_output_tokens) == (0, 3, 0)
    assert math.isnan(report.ttft.mean_ms)


class _BrokenStreams(BaseHTTPRequestHandler):
    """Not the double: a server whose streams go wrong after a good first chunk. The prompt
    says how: "error" sends an error event (as vLLM does when generation fails mid-stream),
    anything else ends the stream cleanly without `data: [DONE]`."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = {"choices": [{"index": 0, "delta": {"content": " one"}}]}
        self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if body["messages"][0]["content"] == "error":
            error = {"error": {"message": "the engine died", "code": 500}}
            self.wfile.write(b"data: " + json.dumps(error).encode() + b"\n\n")

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_stream_that_goes_wrong_is_a_failure() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _BrokenStreams)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        prompts = [Prompt("error"), Prompt("cut")]
        requests = loadtest.make_requests(prompts, 2, unique_prefix=False)
        report = loadtest.run(url, "m", requests, concurrency=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert (report.completed, report.failed) == (0, 2)
    assert [o.error for o in report.outcomes] == [
        "error event: the engine died", "the stream ended before data: [DONE]"
    ]  # fmt: skip


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_command_line(
    server: str, settings: ServeSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(settings.api_key_env, API_KEY)
    # The shipped prompts, a closed loop, a result file and a table.
    result_file = tmp_path / "result.json"
    code = loadtest.main(["--url", server, "--concurrency", "8", "--output-len", "2",
                          "--percentiles", "50,95", "--result-file", str(result_file)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    for words in ("closed loop, 8 users", "Successful requests", "TTFT", "ITL", "E2EL", "p95"):
        assert words in table
    result = _strict_json(result_file.read_text())
    size = len(loadtest.load_dataset(loadtest.DEFAULT_DATASET))
    assert (result["mode"], result["concurrency"], result["completed"]) == ("closed", 8, size)
    assert (result["failed"], result["total_output_tokens"]) == (0, 2 * size)
    assert list(result["ttft"]["percentiles_ms"]) == ["p50", "p95"]
    assert [r["output_tokens"] for r in result["requests"]] == [2] * size
    assert result["url"] == server
    assert result["dataset"].endswith("prompts.jsonl")

    # Synthetic prompts, all at once with a cap, JSON on stdout.
    code = loadtest.main(["--url", server, "--rate", "inf", "--max-concurrency", "2",
                          "--synthetic", "--input-len", "8", "--num-prompts", "4",
                          "--output-len", "3", "--endpoint", "completions",
                          "--no-unique-prefix", "--json"])  # fmt: skip
    assert code == 0
    result = _strict_json(capsys.readouterr().out)
    assert (result["request_rate"], result["max_concurrency"], result["completed"]) == (
        "inf", 2, 4)  # fmt: skip
    assert [r["prompt_tokens"] for r in result["requests"]] == [8] * 4  # the double counts words
    assert result["max_in_flight"] <= 2

    assert loadtest.main(["--url", server, "--rate", "40", "--seed", "3", "--num-prompts",
                          "3", "--output-len", "2", "--goodput", "e2el:60000"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "open loop, 40 requests/s (Poisson, seed 3)" in table
    assert "Goodput (req/s)" in table

    # A failed request is exit 1 and listed; bad input is exit 2.
    assert loadtest.main(["--url", server, "--model", "nope", "--num-prompts", "2"]) == 1
    assert "failed 2x: HTTP 404" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert loadtest.main(["--url", server, "--dataset", str(bad)]) == 2
    assert "bad.jsonl:2:" in capsys.readouterr().err
    for argv in (["--rate", "5", "--concurrency", "2"], ["--max-concurrency", "2"],
                 ["--rate", "0"], ["--percentiles", "50,120"], ["--goodput", "itl:5"],
                 ["--synthetic", "--dataset", str(bad)]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            loadtest.main(["--url", server, *argv])
        assert exit_.value.code == 2, argv


def test_the_help_points_to_vllm_bench_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        loadtest.main(["--help"])
    assert "vllm bench serve" in " ".join(capsys.readouterr().out.split())
    assert "vllm bench serve" in (loadtest.__doc__ or "")
