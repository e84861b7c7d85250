"""`replay:PATH`: a recorded trace served as if live, with "now" set by `--at`.

History is the trace before now; the forecast is the trace's own future, so the band is exact.
Used for demos and deterministic tests of everything that consumes a forecast.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from harchos_cli.carbon.traces import Trace, read_trace
from harchos_cli.carbon.types import Observation, Point, Source
from harchos_cli.errors import NoCarbonDataError, UsageError
from harchos_cli.timeparse import as_utc, floor_hour, iso

WARM_UP = timedelta(days=14)
HISTORY_HOURS = 14 * 24


class ReplayProvider:
    name = "replay"

    def __init__(self, path: Path, zone: str | None = None) -> None:
        self.path = path
        self.trace: Trace = read_trace(path, zone=zone)

    def default_now(self) -> datetime:
        """Fourteen days into the trace, so there is history to condition on."""
        return self.trace.start + min(WARM_UP, (self.trace.end() - self.trace.start) / 2)

    def window(self, now: datetime, hours: int) -> tuple[list[Observation], list[Point], Source]:
        """History before `now` (up to 14 days, hourly) and `hours` hours from the hour of `now`,
        at the trace's own resolution."""
        now = as_utc(now)
        trace = self.trace
        if now < trace.start or now >= trace.end():
            raise NoCarbonDataError(
                f"--at {iso(now)} is outside the trace {self.path.name} "
                f"({iso(trace.start)} to {iso(trace.end())})",
                hint="pick an --at inside the trace's period",
            )
        first = trace.index_at(floor_hour(now))
        last = min(first + hours, len(trace.values))
        hour = timedelta(hours=1)
        # The forecast keeps the trace's own resolution; history stays hourly (the embedded
        # model conditions on hours).
        step = trace.step
        begin, stop = trace.start + first * hour, trace.start + last * hour
        points = []
        moment = begin
        while moment < stop:
            value = trace.value_at(moment)
            points.append(Point(moment, moment + step, value, value, value))
            moment += step
        history = [
            Observation(
                trace.start + i * hour, trace.start + (i + 1) * hour, float(trace.values[i])
            )
            for i in range(max(0, first - HISTORY_HOURS), first)
        ]
        source = Source(
            provider="replay",
            signal="average",
            method="recorded trace",
            kind="replayed",
            fetched_at=now,
            detail=str(self.path),
        )
        return history, points, source


def parse_replay_spec(spec: str) -> list[Path]:
    """`replay:PATH[,PATH...]` → the paths, each checked to exist (a path that exists as
    written, comma and all, is one trace)."""
    raw = spec.split(":", 1)[1] if ":" in spec else ""
    if not raw.strip(" ,"):
        raise UsageError("replay needs a file: --provider replay:PATH", hint="e.g. replay:de.csv")
    whole = Path(os.path.expanduser(raw))
    parts = (
        [whole] if whole.is_file() else [Path(os.path.expanduser(p)) for p in raw.split(",") if p]
    )
    for path in parts:
        if not path.is_file():
            raise UsageError(
                f"replay trace {str(path)!r} not found",
                hint="give a CSV trace's path (one per zone, with commas: replay:de.csv,fr.csv)",
            )
    return parts
