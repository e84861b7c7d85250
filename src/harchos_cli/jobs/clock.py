"""Clocks for waiting: the real one, and a simulated one that runs N times faster.

A simulated clock is anchored to the wall clock (`origin` in simulated time at `anchor` in real
time), so a supervisor restarted after a crash reads the same simulated time as the one that died.
Only waiting is simulated; the workload always runs in real time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from harchos_cli.timeparse import parse_instant


class Clock(Protocol):
    """What the planner and the supervisor need from time."""

    speedup: float

    def now(self) -> datetime:
        """The current (possibly simulated) time, aware UTC."""
        ...

    def real_seconds(self, simulated: float) -> float:
        """How many real seconds pass while `simulated` seconds pass on this clock."""
        ...

    def as_json(self) -> dict[str, Any] | None:
        """Enough to rebuild this clock in another process (None for the real clock)."""
        ...


class RealClock:
    """The wall clock."""

    speedup = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def real_seconds(self, simulated: float) -> float:
        return simulated

    def as_json(self) -> dict[str, Any] | None:
        return None


@dataclass
class SimulatedClock:
    """Simulated time `origin + (wall − anchor) × speedup`."""

    origin: datetime
    speedup: float = 1.0
    anchor: float | None = None  # wall-clock seconds (time.time()) at `origin`

    def __post_init__(self) -> None:
        if self.speedup <= 0:
            raise ValueError("speedup must be positive")
        if self.anchor is None:
            self.anchor = time.time()

    def now(self) -> datetime:
        assert self.anchor is not None
        elapsed = (time.time() - self.anchor) * self.speedup
        return self.origin + timedelta(seconds=elapsed)

    def real_seconds(self, simulated: float) -> float:
        return simulated / self.speedup

    def as_json(self) -> dict[str, Any] | None:
        return {"origin": self.origin.isoformat(), "speedup": self.speedup, "anchor": self.anchor}


def from_json(data: dict[str, Any] | None) -> Clock:
    """Rebuild the clock a job was planned with (see `as_json`)."""
    if not data:
        return RealClock()
    return SimulatedClock(
        parse_instant(str(data["origin"])), float(data["speedup"]), float(data["anchor"])
    )


def make_clock(at: datetime | None, speedup: float | None) -> Clock:
    """The clock for `--at` and `--speedup`: real unless either is given."""
    if at is None and speedup is None:
        return RealClock()
    return SimulatedClock(at or datetime.now(UTC), speedup or 1.0)
