"""Submit-to-running overhead on a Slurm hub: `harchos run batch --hub CLUSTER` against a bare
`sbatch` of the same command, on the same cluster, in the same run.

    python benchmarks/bench_slurm.py [--runs 5] [--write docs/benchmarks.md]

A private single-node Slurm (as in the tests: slurmctld, slurmd and munged started here) and a
project whose job writes the time it started. The baseline submits a batch script running the
same command with `sbatch`; harchos submits through its CLI (`--detach`: plan, store, supervisor,
the hub runner's `sbatch`, the monitor on the node). Measured: from the command's start to the
moment the job's command runs, runs interleaved; and how long `harchos run` took to return.
Never pass/fail: it measures and records.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import machine, record

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from slurm import SlurmCluster  # noqa: E402

MARK = "import os, sys, time; open(sys.argv[1], 'w').write(repr(time.time()))"


def wait_for(path: Path, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return float(path.read_text())
        time.sleep(0.02)
    raise SystemExit(f"the job never wrote {path}")


def bare(cluster: SlurmCluster, folder: Path, index: int) -> float:
    mark = folder / f"bare-{index}.t"
    script = folder / f"bare-{index}.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -c "{MARK}" {mark}\n')
    started = time.time()
    subprocess.run(["sbatch", "--parsable", f"--partition={cluster.partition}",
                    f"--output={folder / 'bare.out'}", f"--chdir={folder}", str(script)],
                   env={**os.environ, **cluster.env}, check=True, capture_output=True)  # fmt: skip
    return wait_for(mark) - started


def through_harchos(project: Path, index: int) -> tuple[float, float]:
    mark = project / f"harchos-{index}.t"
    started = time.time()
    subprocess.run(["harchos", "run", "batch", "--hub", "cluster", "--detach", "--json", "--",
                    sys.executable, "-c", MARK, str(mark)],
                   cwd=project, check=True, capture_output=True)  # fmt: skip
    returned = time.time() - started
    return wait_for(mark) - started, returned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", type=Path, help="record the result in this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cluster = SlurmCluster(base / "slurm").start()
        try:
            os.environ.update(cluster.env)
            os.environ["HARCHOS_HOME"] = str(base / "home")
            os.environ["HARCHOS_METER_INTERVAL"] = "0"
            project = base / "project"
            project.mkdir()
            (project / "harchos.toml").write_text('[job]\ncommand = ["true"]\n')
            subprocess.run(["harchos", "hubs", "add", "cluster", "--slurm", "local",
                            "--partition", cluster.partition, "--python", sys.executable],
                           check=True, capture_output=True)  # fmt: skip
            bare_s, harchos_s, returned_s = [], [], []
            for index in range(args.runs):
                bare_s.append(bare(cluster, base, index))
                to_run, returned = through_harchos(project, index)
                harchos_s.append(to_run)
                returned_s.append(returned)
                print(
                    f"run {index + 1}: sbatch {bare_s[-1]:.2f} s, harchos {to_run:.2f} s",
                    file=sys.stderr,
                )
        finally:
            cluster.stop()
    b, h, r = (statistics.median(v) for v in (bare_s, harchos_s, returned_s))
    report = "\n".join([
        f"Measured {machine()}, Slurm {slurm_version()} (one node, `sched_interval=2`), "
        f"{args.runs} interleaved runs, medians.",
        "",
        "| submit → job running | seconds |",
        "|---|---|",
        f"| bare `sbatch` of the same command | {b:.2f} |",
        f"| `harchos run batch --hub CLUSTER --detach` | {h:.2f} |",
        f"| overhead | {h - b:+.2f} ({h / b:.2f}×) |",
        f"| `harchos run … --detach` returned after | {r:.2f} |",
        "",
    ])  # fmt: skip
    print(report)
    if args.write:
        record(args.write, "bench_slurm", report)


def slurm_version() -> str:
    out = subprocess.run(["slurmd", "-V"], capture_output=True, text=True, check=False)
    return (out.stdout.split() or ["?"])[-1]


if __name__ == "__main__":
    main()
