"""Router overhead: requests through `harchos serve router` against the same requests sent to the
replica directly, on loopback.

    python benchmarks/bench_router.py [--seconds 4] [--runs 3] [--write docs/benchmarks.md]

One vLLM test double (the replica, `--token-delay` paced like a real model) and the standalone
router (`serve_forever`, one replica) run as their own processes; the client is aiohttp in this
process. Each case runs `--seconds` with a fixed number of concurrent clients, each sending its
next request as soon as the last one ends, first to the replica directly (the baseline), then
through the router, `--runs` times interleaved. Reported: p50 time to the first byte of the body
(the first event of a stream), p50 time to the last byte, requests per second, and the router
process's CPU time per request. Targets: added p50 under 1 ms, throughput at least 90 % of direct.
Never pass/fail: it measures and records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _record import machine, record

MODEL = "bench/model"
ROUTER = """
import asyncio, sys
from harchos_cli.serve.router import serve_forever
from harchos_cli.serve.routing import RoutingPolicy
asyncio.run(serve_forever([(sys.argv[1], None)], "127.0.0.1", 0, RoutingPolicy(), None,
                          on_ready=lambda url: print(url, flush=True)))
"""


@dataclass(frozen=True)
class Case:
    name: str
    clients: int
    stream: bool
    max_tokens: int
    token_delay: float


@dataclass
class Sample:
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.last) / self.seconds


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    case: Case,
    stop: float,
    sample: Sample,
    *,
    delay: float = 0.0,
) -> None:
    body = {"model": MODEL, "prompt": "benchmark the router", "max_tokens": case.max_tokens,
            "stream": case.stream}  # fmt: skip
    await asyncio.sleep(delay)
    while time.perf_counter() < stop:
        started = time.perf_counter()
        first = None
        async with session.post(f"{url}/v1/completions", json=body) as response:
            async for chunk in response.content.iter_any():
                if first is None and chunk:
                    first = time.perf_counter()
        ended = time.perf_counter()
        if response.status != 200 or first is None:
            sample.errors += 1
            continue
        sample.first.append(first - started)
        sample.last.append(ended - started)


async def _measure(url: str, case: Case, seconds: float, router_pid: int | None) -> Sample:
    sample = Sample()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: open every client's connection before the clock starts.
        warm = Case(case.name, case.clients, case.stream, 1, case.token_delay)
        until = time.perf_counter() + 0.5
        await asyncio.gather(*(_client(session, url, warm, until, Sample())
                               for _ in range(case.clients)))  # fmt: skip
        cpu = _cpu_seconds(router_pid) if router_pid else 0.0
        started = time.perf_counter()
        stop = started + seconds
        # Clients start spread over one answer's duration: started together, they would stay
        # in lockstep and every answer would reach the router in the same instant.
        spread = random.Random(0)
        answer_s = case.max_tokens * case.token_delay
        await asyncio.gather(*(_client(session, url, case, stop, sample,
                                       delay=spread.uniform(0, answer_s))
                               for _ in range(case.clients)))  # fmt: skip
        sample.seconds = time.perf_counter() - started
        sample.cpu_s = (_cpu_seconds(router_pid) - cpu) if router_pid else 0.0
    return sample


def _start_double(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harchos_cli.testing.vllm_double", "--model", MODEL,
             "--port", "0", "--max-num-seqs", "1024", *args],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (match := re.search(r"serving .* on (http://\S+)", log.read_text())):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the double did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc, match.group(1)


def _start_router(replica: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ROUTER, replica], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url:
        raise SystemExit("the router did not start")

    async def ready() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
                await asyncio.sleep(0.05)
        raise SystemExit("the router never saw its replica ready")

    asyncio.run(ready())
    return proc, url


def _p50(samples: list[Sample], pick: Callable[[Sample], list[float]]) -> float:
    """The median over runs of each run's median."""
    return statistics.median(statistics.median(pick(s)) for s in samples)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


Row = tuple[Case, list[Sample], list[Sample]]


def _run_case(case: Case, runs: int, seconds: float, folder: Path) -> Row:
    """Direct and routed samples of one case, `runs` of each, interleaved."""
    double, replica = _start_double(["--token-delay", str(case.token_delay)], folder / "double.log")
    router, routed = _start_router(replica)
    try:
        direct: list[Sample] = []
        through: list[Sample] = []
        for _ in range(runs):
            direct.append(asyncio.run(_measure(replica, case, seconds, None)))
            through.append(asyncio.run(_measure(routed, case, seconds, router.pid)))
    finally:
        for proc in (router, double):
            proc.kill()
            proc.wait()
    return case, direct, through


def _report(rows: list[Row], token_delay: float, runs: int, seconds: float) -> str:
    lines = [
        f"Measured {machine()}. One vLLM test double (`--token-delay {token_delay:g}` s per "
        "token unless said otherwise, 16 tokens a request), the router (`serve_forever`, one "
        "replica) and the aiohttp client each in their own process, all on the same cores; "
        f"{runs} interleaved runs of {seconds:g} s per case, medians of the per-run p50s.",
        "",
        "| case | p50 first byte direct / router (ms) | added | p50 last byte direct / router "
        "(ms) | added | requests/s direct / router | ratio | router CPU per request (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for case, direct, through in rows:
        first_d, first_r = _p50(direct, lambda s: s.first), _p50(through, lambda s: s.first)
        last_d, last_r = _p50(direct, lambda s: s.last), _p50(through, lambda s: s.last)
        rate_d = statistics.median(s.rate for s in direct)
        rate_r = statistics.median(s.rate for s in through)
        cpu = sum(s.cpu_s for s in through) / sum(len(s.last) for s in through)
        errors = sum(s.errors for s in direct + through)
        # One client waits for each answer: its rate is 1 / latency, not a throughput.
        ratio = f"{rate_r / rate_d:.0%}" if case.clients > 1 else "n/a"
        lines.append(
            f"| {case.name} | {_ms(first_d)} / {_ms(first_r)} | {_ms(first_r - first_d)} | "
            f"{_ms(last_d)} / {_ms(last_r)} | {_ms(last_r - last_d)} | {rate_d:.0f} / "
            f"{rate_r:.0f} | {ratio} | {cpu * 1000:.2f} |"
            + (f" ({errors} errors)" if errors else "")
        )
        added = first_r - first_d
        verdict = f"{case.name}: added p50 {_ms(added)} ms ({'met' if added < 0.001 else 'missed'})"
        if case.clients > 1:
            met = "met" if rate_r >= 0.9 * rate_d else "missed"
            verdict += f", throughput {ratio} ({met})"
        verdicts.append(verdict)
    lines += ["", "Targets (added p50 first byte < 1 ms; throughput >= 90 % of direct): "
              + "; ".join(verdicts) + ".", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--write", type=Path, help="record the result in this Markdown file")
    args = parser.parse_args()
    delay = args.token_delay
    cases = [
        Case("1 client, not streaming, no token delay", 1, False, 4, 0.0),
        Case("64 streams", 64, True, 16, delay),
        Case("256 streams", 256, True, 16, delay),
        Case("64 clients, not streaming", 64, False, 16, delay),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows.append(_run_case(case, args.runs, args.seconds, Path(tmp)))
            print(case.name, "done", file=sys.stderr)
    report = _report(rows, delay, args.runs, args.seconds)
    print(report)
    if args.write:
        record(args.write, "bench_router", report)


if __name__ == "__main__":
    main()
