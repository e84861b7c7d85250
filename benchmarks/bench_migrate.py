"""Migration overhead: harchos's checkpoint copy between two hubs against a bare rsync of the same
checkpoint between the same hubs.

    python benchmarks/bench_migrate.py [--mb 256] [--runs 3] [--write docs/benchmarks.md]

Two real sshd "hubs" on loopback (as in the tests). A run's checkpoint folder of `--mb` MB of
random bytes (several files, as accelerate writes) sits on h1. The baseline, in the same run, is
what any copy through this machine must do: `rsync` h1 → a local folder → h2 with the same ssh
options. harchos's copy (`harchos_cli.jobs.migration.copy_run_checkpoints`) does the same two
rsyncs plus a sha256 of every file on both hubs. Each measurement starts from an empty target and
an empty staging folder. Target: overhead under 10 % + 5 s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import machine, record

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd import Sshd, keygen  # noqa: E402

from harchos_cli.hubs.ssh import SshTransport  # noqa: E402
from harchos_cli.jobs import migration  # noqa: E402
from harchos_cli.jobs.spec import load_project  # noqa: E402

RUN = "bench-run"


def bare_rsync(source: SshTransport, target: SshTransport, src: str, dst: str, stage: Path) -> None:
    """rsync h1 → stage → h2 with the transports' own ssh options (one mkdir on h2 first)."""
    target.run(["mkdir", "-p", "--", dst], timeout=60)
    for transport, frm, to in ((source, f"127.0.0.1:{src}/", f"{stage}/"),
                               (target, f"{stage}/", f"127.0.0.1:{dst}/")):  # fmt: skip
        rsh = shlex.join([transport.ssh, *transport.options()])
        subprocess.run(["rsync", "--archive", "--rsh", rsh, frm, to], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["HARCHOS_HOME"] = str(base / "home")
        key = keygen(base / "client_key")
        hubs = [Sshd(base / f"sshd-{name}", key, name).start() for name in ("h1", "h2")]
        try:
            project_dir = base / "project"
            project_dir.mkdir()
            (project_dir / "harchos.toml").write_text('[job]\nkind = "train"\n')
            project = load_project(project_dir)
            h1, h2 = (server.hub() for server in hubs)
            t1, t2 = SshTransport(h1), SshTransport(h2)
            src = migration.run_checkpoint_dir(h1, project, RUN)
            dst = migration.run_checkpoint_dir(h2, project, RUN)
            local_src = Path(t1.expand(src))
            (local_src / "step_000000100").mkdir(parents=True)
            sizes = [0.6, 0.3, 0.1]  # model, optimizer, the rest, roughly as accelerate writes
            for i, share in enumerate(sizes):
                target = local_src / "step_000000100" / f"part{i}.bin"
                target.write_bytes(os.urandom(int(args.mb * share * 1e6)))
            for rank in range(2):
                (local_src / "step_000000100" / f"random_states_{rank}.pkl").write_bytes(b"x" * 16)
            timings: dict[str, list[float]] = {"bare rsync": [], "harchos copy": []}
            for _ in range(args.runs):
                for name in ("bare rsync", "harchos copy"):
                    shutil.rmtree(t2.expand(dst), ignore_errors=True)
                    stage = base / "stage"
                    shutil.rmtree(stage, ignore_errors=True)
                    stage.mkdir()
                    started = time.perf_counter()
                    if name == "bare rsync":
                        bare_rsync(t1, t2, t1.expand(src), t2.expand(dst), stage)
                    else:
                        migration.copy_run_checkpoints(project, RUN, h1, h2, staging=stage)
                    timings[name].append(time.perf_counter() - started)
        finally:
            for server in hubs:
                server.stop()
    bare = statistics.median(timings["bare rsync"])
    ours = statistics.median(timings["harchos copy"])
    report = "\n".join([
        f"Measured {machine()}: a {args.mb} MB checkpoint from hub h1 to hub h2 (two sshd on "
        f"loopback), through this machine; median of {args.runs} runs.",
        "",
        "| copy | median (s) |",
        "|---|---|",
        f"| bare `rsync` h1 → here → h2 (baseline) | {bare:.2f} |",
        f"| `harchos` copy, verified by sha256 on both hubs | {ours:.2f} |",
        f"| **overhead** | **{ours - bare:+.2f} s ({ours / bare - 1:+.0%})**; target < 10 % + 5 s: "
        f"{'met' if ours <= bare * 1.1 + 5 else 'missed'} |",
        "",
        "The whole move adds the pause (the workers' checkpoint save) and the restart on the "
        "target (start-up and checkpoint load), which depend on the model, not on harchos.",
        "",
    ])  # fmt: skip
    print(report)
    if args.write:
        record(args.write, "bench_migrate", report)


if __name__ == "__main__":
    main()
