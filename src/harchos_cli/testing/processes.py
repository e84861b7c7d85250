"""What the scale tests and benchmarks check of harchos's own processes and jobs (Linux /proc)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harchos_cli.timeparse import parse_instant


def live_processes(matches: Callable[[list[bytes], list[bytes]], bool]) -> list[int]:
    """The pids of the live processes (zombies left out) whose argv and environment `matches`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and matches(argv, environ):
            found.append(int(entry.name))
    return found


def home_processes(module: str, home: str) -> list[int]:
    """The live `python -m MODULE` processes whose HARCHOS_HOME is `home`."""
    marker = f"HARCHOS_HOME={home}".encode()
    return live_processes(lambda argv, environ: module.encode() in argv and marker in environ)


def most_at_once(jobs: Iterable[Any]) -> int:
    """The most of `jobs` (with `started_at` and `finished_at`) that ran at the same time."""
    events: list[tuple[Any, int]] = []
    for job in jobs:
        events += [
            (parse_instant(str(job.started_at)), 1),
            (parse_instant(str(job.finished_at)), -1),
        ]
    events.sort()  # an end sorts before a start at the same instant
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most
