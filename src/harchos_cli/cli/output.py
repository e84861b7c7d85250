"""Output that programs read (JSON) and diagnostics, without loading rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

_warned: set[str] = set()


def print_json(data: Any) -> None:
    # NaN and Infinity are not JSON; a value that cannot be had is null.
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def warn(message: str) -> None:
    """A diagnostic on stderr, each distinct message once per run."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def reset() -> None:
    """Forget the warnings given: each run of the CLI (also in one process) warns afresh."""
    _warned.clear()


def warn_all(messages: Iterable[str]) -> None:
    for message in messages:
        warn(message)
