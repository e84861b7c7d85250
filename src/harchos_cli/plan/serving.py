"""Where a service's replicas live: on the greenest hubs, and when one should move (pure).

- `place`: N replicas over the candidate hubs, greenest first, one per hub per round (a replica
  on each of the N greenest hubs before any hub gets a second), within each hub's capacity (its
  GPUs over the GPUs a replica needs; unlimited where the hub has no GPU count).
- `next_move`: follow the sun. The replica on the dirtiest hub moves to the greenest hub that
  hosts none of the service's replicas, when that hub is at least `min_saving` greener; one move
  at a time, and the caller keeps the time between moves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Move:
    """Move the replica `replica` from hub `source` to hub `target`, and why."""

    replica: str
    source: str
    target: str
    source_intensity: float
    target_intensity: float

    @property
    def saving(self) -> float:
        return 1 - self.target_intensity / self.source_intensity

    def reason(self) -> str:
        return (
            f"hub {self.target} is greener ({self.target_intensity:.0f} gCO2eq/kWh) than hub "
            f"{self.source} ({self.source_intensity:.0f}): {self.saving:.0%} less per request"
        )


def _greenness(hubs: Sequence[str], intensities: Mapping[str, float | None]) -> list[str]:
    """Hubs greenest first; a hub without data after every hub with, in the given order."""
    order = {hub: i for i, hub in enumerate(hubs)}

    def key(hub: str) -> tuple[float, int]:
        value = intensities.get(hub)
        return (math.inf if value is None else value, order[hub])

    return sorted(hubs, key=key)


def place(
    hubs: Sequence[str],
    intensities: Mapping[str, float | None],
    replicas: int,
    capacity: Mapping[str, int | None],
) -> list[str]:
    """The hub of each of `replicas` replicas (a hub may appear more than once).

    Raises:
        ValueError: the hubs cannot hold that many replicas.
    """
    placed: list[str] = []
    ordered = _greenness(hubs, intensities)
    while len(placed) < replicas:
        counts = Counter(placed)
        free = [h for h in ordered if capacity.get(h) is None or counts[h] < (capacity[h] or 0)]
        if not free:
            room = sum(c or 0 for c in capacity.values())
            raise ValueError(f"the hubs hold {room} replica(s), not {replicas}")
        for hub in free:
            if len(placed) == replicas:
                break
            placed.append(hub)
    return placed


def next_move(
    current: Mapping[str, str],
    hubs: Sequence[str],
    intensities: Mapping[str, float | None],
    capacity: Mapping[str, int | None],
    min_saving: float,
) -> Move | None:
    """The one move worth making now, or None.

    Args:
        current: replica id → the hub it runs on.
        hubs: every hub the service may use.
        intensities: hub → gCO2eq/kWh now (None: unknown; such a hub is never a target, and a
            replica on it never moves).
        capacity: hub → how many replicas it holds (None: no limit).
        min_saving: the least fraction by which the target must be greener.
    """
    used = Counter(current.values())
    targets = [
        h
        for h in _greenness(hubs, intensities)
        if intensities.get(h) is not None
        and used[h] == 0
        and (capacity.get(h) is None or (capacity[h] or 0) > 0)
    ]
    if not targets:
        return None
    target = targets[0]
    target_value = intensities[target]
    assert target_value is not None
    known = [(r, h) for r, h in current.items() if intensities.get(h) is not None]
    if not known:
        return None
    replica, source = max(known, key=lambda rh: (intensities[rh[1]] or 0.0, rh[0]))
    source_value = intensities[source]
    assert source_value is not None
    if source_value <= 0 or target_value > source_value * (1 - min_saving):
        return None
    return Move(replica, source, target, source_value, target_value)
