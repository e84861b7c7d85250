"""CPU cost of the hub's energy meter (`_runner._Meter`), per sample and as a share of one core.

    python benchmarks/bench_meter.py [--samples 2000] [--write docs/benchmarks.md]

Takes `--samples` samples in this process against this machine's /proc, for a job tree of a
launcher and four workers (sleeping child processes), and times them with `time.process_time`;
the baseline is the same loop without sampling. Cases: the job tree through psutil and through
the /proc walk the runner falls back on, and RAPL (a sysfs-like powercap tree in a temporary
folder, since this machine has none). GPU reads (NVML, nvidia-smi) are not in it: no GPU here.
Never pass/fail: it measures and records (target: under 1 % of one core at the 10 s default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _record import machine, record

from harchos_cli.hubs import _runner

# A launcher that starts four workers, all asleep: a job tree of five processes.
TREE = (
    "import subprocess, sys, time\n"
    "workers = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    " for _ in range(4)]\n"
    "time.sleep(600)\n"
)


@contextmanager
def job_tree() -> Iterator[None]:
    launcher = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        deadline = time.monotonic() + 30
        while len(_runner._descendants(os.getpid())) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        for pid in _runner._descendants(launcher.pid):
            os.kill(pid, 9)
        launcher.kill()
        launcher.wait()


@contextmanager
def powercap(rapl: bool) -> Iterator[None]:
    with tempfile.TemporaryDirectory() as tmp:
        if rapl:
            zone = Path(tmp, "intel-rapl:0")
            zone.mkdir()
            (zone / "name").write_text("package-0\n")
            (zone / "energy_uj").write_text("123456789\n")
            (zone / "max_energy_range_uj").write_text("262143328850\n")
        saved = os.environ.get("HARCHOS_POWERCAP_ROOT")
        os.environ["HARCHOS_POWERCAP_ROOT"] = tmp if rapl else str(Path(tmp, "none"))
        try:
            yield
        finally:
            if saved is None:
                del os.environ["HARCHOS_POWERCAP_ROOT"]
            else:
                os.environ["HARCHOS_POWERCAP_ROOT"] = saved


def cpu_seconds(step: Callable[[], Any], samples: int) -> float:
    started = time.process_time()
    for _ in range(samples):
        step()
    return time.process_time() - started


def per_sample_ms(samples: int, *, use_psutil: bool, rapl: bool) -> float:
    with powercap(rapl):
        meter = _runner._Meter({"interval_s": 10.0}, {})
        if not use_psutil:
            meter.psutil = None
        meter.line()  # warm: the first walk of /proc fills caches
        sampling = cpu_seconds(meter.line, samples)
    baseline = cpu_seconds(lambda: None, samples)
    return max(sampling - baseline, 0.0) / samples * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--write", type=Path, help="record the result in this Markdown file")
    args = parser.parse_args()
    has_psutil = _runner._optional("psutil") is not None
    cases = [
        ("job tree via /proc, TDP estimate", False, False),
        ("job tree via /proc, RAPL", False, True),
    ]
    if has_psutil:
        cases[:0] = [
            ("job tree via psutil, TDP estimate", True, False),
            ("job tree via psutil, RAPL", True, True),
        ]
    rows = []
    with job_tree():
        processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
        for label, use_psutil, rapl in cases:
            ms = per_sample_ms(args.samples, use_psutil=use_psutil, rapl=rapl)
            rows.append(
                f"| {label} | {ms:.3f} | {ms / 10.0 / 1e3 * 100:.4f} % | {ms / 1e3 * 100:.3f} % |"
            )
    report = (
        f"Measured {machine()}: {args.samples} samples per case, a job tree of 5 processes, "
        f"{processes} processes on the machine, no GPU.\n\n"
        "| case | CPU per sample (ms) | share of one core at 10 s | at 1 s |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Target: under 1 % of one core at the default 10 s interval. A sample walks every "
        "process's /proc/PID/stat to find the job's tree, so its cost grows with the number "
        "of processes on the hub; NVML reads (a few per GPU) and, without pynvml, one "
        "`nvidia-smi` run per sample come on top on a GPU hub.\n"
    )
    print(report)
    if args.write:
        record(args.write, "bench_meter", report)


if __name__ == "__main__":
    main()
