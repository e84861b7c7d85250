"""vLLM test doubles run as real subprocesses on loopback, for the serving tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODEL = "acme/tiny-chat"
_BOUND = re.compile(r"serving .* on (http://\S+)")


@dataclass
class Double:
    """One `python -m harchos_cli.testing.vllm_double` process."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def wait_bound(self, timeout: float = 20.0) -> Double:
        """Wait until the double listens, and learn its URL from its log."""
        deadline = time.monotonic() + timeout
        while not (match := _BOUND.search(self.log.read_text())):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the double did not bind its port"
            time.sleep(0.02)
        self.url = match.group(1)
        return self

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, keyed by `name{labels}` as the exposition writes them."""
        samples = {}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def total(self, name: str) -> float:
        """A metric summed over its label sets."""
        return sum(v for k, v in self.metrics().items() if k.partition("{")[0] == name)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)


class Doubles:
    """Starts doubles and kills whatever is left of them in `close`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Double] = []

    def spawn(self, *args: str, port: int = 0) -> Double:
        """Start a double without waiting for it to listen."""
        log = self.folder / f"double-{len(self.started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harchos_cli.testing.vllm_double", "--model", MODEL,
                 "--port", str(port), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip
        double = Double(proc, log, f"http://127.0.0.1:{port}")
        self.started.append(double)
        return double

    def start(self, *arg_lists: list[str]) -> list[Double]:
        """Start one double per argument list, all at once, and wait until each listens."""
        doubles = [self.spawn(*args) for args in arg_lists]
        return [double.wait_bound() for double in doubles]

    def close(self) -> None:
        for double in self.started:
            if double.proc.poll() is None:
                double.proc.kill()
                double.proc.wait()
