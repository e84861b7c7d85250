"""Helpers to run train.py the way harchos does: a real process, real signals, real launchers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

# Generous: a run takes seconds; this only stops a hung process from hanging the suite.
WATCHDOG_S = 300


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
    values: dict[str, object] = {"steps": steps, "output_dir": str(out), "checkpoint_every": 100}
    values.update(extra)
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"]
    return [a.replace("'", '"') for a in args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_cmd(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "train.py"]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        "train.py",
    ]  # fmt: skip


def run_train(
    checkpoints: Path, args: list[str], processes: int = 1, env: dict[str, str] | None = None
) -> Run:
    done = subprocess.run(
        launch_cmd(processes) + args,
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
) -> Run:
    """Start a run, and once it has logged `after_step`, send `signum` to one rank only."""
    proc = subprocess.Popen(
        launch_cmd(processes) + args,
        cwd=PROJECT,
        env=base_env(checkpoints, env),
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
            if line.startswith("rank ") and "ready" in line:
                pids[int(words[1])] = int(words[3].rstrip(")"))
            if not sent and words[:1] == ["step"]:
                step = int(words[1].split("/")[0])
                if step >= after_step and rank in pids:
                    os.kill(pids[rank], signum)
                    sent = True
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert sent, "the run ended before it could be signalled:\n" + "".join(lines)
    return Run(code, "".join(lines))


def weights(out: Path) -> dict[str, object]:
    import torch

    return dict(torch.load(out / "model.pt", weights_only=True))


def same_weights(a: Path, b: Path) -> bool:
    import torch

    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(
        torch.equal(first[k], second[k])  # type: ignore[arg-type]
        for k in first
    )


def checkpoints_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step_*") if p.is_dir())
