"""What every live provider client offers the forecast service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from harchos_cli.carbon.types import Observation, Region, Signal, Source


@dataclass
class ProviderData:
    """What a live provider could give for one region.

    `forecast` is None when the provider (or the user's plan) publishes no forecast; the service
    then runs the embedded model conditioned on `history`. `source` describes the forecast when
    there is one, else the history. `warnings` are one-line, user-facing notes (bad token, plan
    lacks the forecast endpoint) — the service shows each once.
    """

    forecast: list[Observation] | None
    history: list[Observation]
    source: Source
    warnings: list[str] = field(default_factory=list)


class LiveProvider(Protocol):
    name: str
    signal: Signal

    def covers(self, region: Region) -> bool:
        """Whether this provider has data for the region."""
        ...

    def configured(self) -> bool:
        """Whether the credentials it needs are present (no network call)."""
        ...

    def fetch(self, region: Region, now: datetime, hours: int) -> ProviderData:
        """Forecast from `now` for `hours` hours, plus as much recent history as it gives.

        Raises `harchos_cli.errors.ProviderError` when nothing usable could be had.
        """
        ...
