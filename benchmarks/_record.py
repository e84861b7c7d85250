"""Shared by the benchmark scripts: describe the machine, record a result in a Markdown file."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def machine() -> str:
    """Date and machine, the header of every recorded result."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    python = platform.python_version()
    return f"{stamp} on {platform.machine()}, {os.cpu_count()} cores, Python {python}"


def record(path: Path, name: str, report: str) -> None:
    """Replace what stands between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} … {end} markers")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{report}{end}{tail}")
