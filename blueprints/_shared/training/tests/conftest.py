"""Helpers to run train.py the way harchos does: a real process, real signals, real launchers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

# Generous: a run takes seconds; this only stops a hung process from hanging the suite.
WATCHDOG_S = 300
READY = re.compile(r"rank (\d+) \(pid (\d+)\) ready")


@dataclass
class Run:
    code: int
    output: str


def base_env(checkpoints: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env.update(
        HARCHOS_CHECKPOINT_DIR=str(checkpoints),
        PYTHONUNBUFFERED="1",
        # Tiny models run fastest on one thread, and two processes share the cores.
        OMP_NUM_THREADS="1",
        ACCELERATE_USE_CPU="true",
        GLOO_SOCKET_IFNAME="lo",
    )
    return env


def settings(out: Path, steps: int, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "steps": steps, "output_dir": str(out), "checkpoint_every": 100,
        # Only the JSONL tracker, which starts in no time; test_trackers.py covers the others.
        "logging_dir": str(out / "runs"), "trackers": ["jsonl"],
    }  # fmt: skip
    values.update(extra)
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"]
    return [a.replace("'", '"') for a in args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_cmd(
    processes: int, machines: int = 1, machine: int = 0, port: int = 0, *, config: str = ""
) -> list[str]:
    """`processes` in all, over `machines` launches (one per machine, all on this host), with the
    project's accelerate config for that shape (`config` picks one for a single process)."""
    if processes == 1 and machines == 1 and not config:
        return [sys.executable, "train.py"]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes == 1 and machines == 1:
        return [*launch, "--config_file", f"accelerate-configs/{config}.yaml", "train.py"]
    config = config or ("multi-node" if machines > 1 else "multi-gpu")
    return [
        *launch, "--config_file", f"accelerate-configs/{config}.yaml",
        "--num_processes", str(processes), "--num_machines", str(machines),
        "--machine_rank", str(machine), "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port()),
        "train.py",
    ]  # fmt: skip


def run_train(
    checkpoints: Path,
    args: list[str],
    processes: int = 1,
    env: dict[str, str] | None = None,
    *,
    config: str = "",
) -> Run:
    done = subprocess.run(
        launch_cmd(processes, config=config) + args,
        cwd=PROJECT,
        env=base_env(checkpoints, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=WATCHDOG_S,
        check=False,
    )
    return Run(done.returncode, done.stdout)


def run_and_signal(
    checkpoints: Path,
    args: list[str],
    *,
    after_step: int,
    signum: signal.Signals,
    processes: int = 1,
    rank: int = 0,
    env: dict[str, str] | None = None,
    control: Path | None = None,
) -> Run:
    """Start a run, and once it has logged `after_step`, send `signum` to one rank only.

    With `control`, run it as harchos does (`HARCHOS_CONTROL_DIR=control`) and signal every
    worker registered there instead, once all `processes` have registered.
    """
    extra = dict(env or {})
    if control is not None:
        extra["HARCHOS_CONTROL_DIR"] = str(control)
    proc = subprocess.Popen(
        launch_cmd(processes) + args,
        cwd=PROJECT,
        env=base_env(checkpoints, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(WATCHDOG_S, proc.kill)
    watchdog.start()
    lines: list[str] = []
    pids: dict[int, int] = {}
    sent = False
    try:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            words = line.split()
            # Two ranks printing at once can share a line: read every announcement in it.
            for found in READY.finditer(line):
                pids[int(found.group(1))] = int(found.group(2))
            if not sent and words[:1] == ["step"]:
                step = int(words[1].split("/")[0])
                if step < after_step:
                    continue
                if control is None and rank in pids:
                    os.kill(pids[rank], signum)
                    sent = True
                elif control is not None and len(registered(control)) == processes:
                    for pid in registered(control):
                        os.kill(pid, signum)
                    sent = True
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert sent, "the run ended before it could be signalled:\n" + "".join(lines)
    return Run(code, "".join(lines))


def registered(control: Path) -> list[int]:
    """The worker pids registered in harchos's control folder, as harchos reads them."""
    workers = control / "workers"
    if not workers.is_dir():
        return []
    return sorted(int(p.name) for p in workers.iterdir() if p.name.isdigit())


def run_two_machines(roots: tuple[Path, Path], args: list[str]) -> tuple[Run, Run]:
    """Two "machines" on this host, one process each, rendezvousing on loopback.

    Each gets its own checkpoint folder (`roots`; the same folder twice for a shared filesystem).
    """
    port = free_port()
    with tempfile.TemporaryFile("w+") as out0, tempfile.TemporaryFile("w+") as out1:
        procs = [
            subprocess.Popen(
                launch_cmd(2, machines=2, machine=machine, port=port) + args,
                cwd=PROJECT,
                env=base_env(root),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for machine, (root, out) in enumerate(zip(roots, (out0, out1), strict=True))
        ]
        try:
            codes = [proc.wait(timeout=WATCHDOG_S) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        outputs = []
        for out in (out0, out1):
            out.seek(0)
            outputs.append(out.read())
    return Run(codes[0], outputs[0]), Run(codes[1], outputs[1])


def weights(out: Path) -> dict[str, object]:
    """The final weights a run saved in `out` (accelerator.save_model: model.safetensors)."""
    from safetensors.torch import load_file

    return dict(load_file(out / "model.safetensors"))


def metrics(logs: Path, run_name: str | None = None) -> list[dict[str, object]]:
    """What a run logged to its JSONL tracker (train.toml's logging_dir and run_name)."""
    import json

    import train

    name = run_name or train.load_config(train.PROJECT_CONFIG, []).run_name
    lines = (logs / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    return max(
        float((first[k] - second[k]).abs().max())  # type: ignore[operator]
        for k in first
    )


def same_weights(a: Path, b: Path) -> bool:
    import torch

    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(
        torch.equal(first[k], second[k])  # type: ignore[arg-type]
        for k in first
    )


def checkpoints_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step_*") if p.is_dir())
