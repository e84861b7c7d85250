"""What every live provider client offers the forecast service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from harchos_cli.carbon.types import Observation, Region, Signal, Source
from harchos_cli.errors import ProviderError


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


class PlanRefused(ProviderError):
    """The provider refused an endpoint that the user's plan (or the API) does not offer.

    Always permanent: asking again soon would get the same answer. `status` is the HTTP status.
    """

    def __init__(self, provider: str, message: str, *, status: int) -> None:
        super().__init__(provider, message, permanent=True)
        self.status = status


@runtime_checkable
class HistoryBackfill(Protocol):
    """A live provider that can give actuals for a past range (beyond what `fetch` returns).

    The forecast service calls `backfill` the first time a region is used (and after a gap), for
    the hours its history store lacks, and keeps what comes back (see carbon/history.py).
    """

    name: str
    #: Hours of history back from the current hour that every `fetch` returns.
    recent_hours: int
    #: The longest range one request may ask for (the provider's documented limit).
    backfill_chunk: timedelta

    def backfill(
        self, region: Region, start: datetime, end: datetime, now: datetime
    ) -> list[Observation]:
        """Hourly actuals (the series `fetch` gives as history) for hours starting in
        [start, end), in as few requests as the provider's range limit allows.

        Raises:
            PlanRefused: The plan (or the API) does not offer past ranges.
            ProviderError: The request failed (network, HTTP 5xx, an odd answer).
        """
        ...
