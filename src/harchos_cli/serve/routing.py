"""Which replica gets a request: the replica table and the carbon-aware ranking (pure, no I/O).

The policy, applied to the replicas in the `ready` state only (never `starting`, `dead`,
`draining` or `stopped`):

1. *Preferred* replicas are those that are neither saturated nor over the latency budget. A
   replica is saturated when vLLM's own `vllm:num_requests_waiting` (at the last scrape) is above
   `RoutingPolicy.max_waiting`. The router's own open requests are not counted as queued: it
   cannot know how many a replica runs at once (`--max-num-seqs`), so only vLLM can say that one
   is full; the price is that a burst reaches a green replica's queue for up to one scrape
   interval before the overflow moves on. A replica is over budget when its estimate of the time
   to first byte through the router exceeds `RoutingPolicy.latency_budget_s`.
2. Preferred replicas come first, lowest carbon intensity first; a replica whose region's
   intensity is unknown ranks after every known one. Ties go to the least loaded (`running +
   waiting + in_flight`), then to the smaller id.
3. The other ready replicas follow, least loaded first, then by id: they take requests only when
   no preferred replica can.

The ranking is deterministic: the same replicas give the same order. The router sends a request
to the first replica and, if that one cannot take it, tries the rest in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DecisionReason",
    "Replica",
    "ReplicaStateName",
    "ReplicaTable",
    "RoutingPolicy",
    "TableListener",
    "choice_reason",
    "is_preferred",
    "load",
    "ranked",
]

ReplicaStateName = Literal["starting", "ready", "dead", "draining", "stopped"]
DecisionReason = Literal["greenest", "latency", "failover", "only_ready"]


@dataclass
class Replica:
    """One vLLM server behind the router, and what the router knows about it now."""

    id: str  # "<hub>/<index>", e.g. "gpu1/0"
    hub: str
    region: str | None
    url: str  # "http://host:port" of the vLLM server
    state: ReplicaStateName = "starting"
    intensity: float | None = None  # gCO2eq/kWh now in its region; None: unknown
    running: int = 0  # vllm:num_requests_running at the last scrape, summed over label sets
    waiting: int = 0  # vllm:num_requests_waiting at the last scrape
    in_flight: int = 0  # requests the router has open to it right now
    latency_s: float | None = None  # EWMA of the time to first byte through the router
    requests: int = 0  # requests routed to it so far
    failures: int = 0  # connection failures (and 503s) the router met


@dataclass(frozen=True)
class RoutingPolicy:
    """The knobs of the ranking (see the module docstring)."""

    latency_budget_s: float = 5.0
    max_waiting: int = 0


def load(replica: Replica) -> int:
    """The load the ranking weighs: running + waiting + the router's open requests to it."""
    return replica.running + replica.waiting + replica.in_flight


def is_preferred(replica: Replica, policy: RoutingPolicy) -> bool:
    """True when the replica is neither saturated nor over the latency budget."""
    over_budget = replica.latency_s is not None and replica.latency_s > policy.latency_budget_s
    return replica.waiting <= policy.max_waiting and not over_budget


def ranked(replicas: Iterable[Replica], policy: RoutingPolicy) -> list[Replica]:
    """Ready replicas in order of preference: the first gets the request, the rest are the retry
    order."""
    preferred: list[Replica] = []
    others: list[Replica] = []
    for replica in replicas:
        if replica.state == "ready":
            (preferred if is_preferred(replica, policy) else others).append(replica)
    preferred.sort(key=lambda r: (r.intensity is None, r.intensity or 0.0, load(r), r.id))
    others.sort(key=lambda r: (load(r), r.id))
    return preferred + others


def choice_reason(ranking: list[Replica]) -> DecisionReason:
    """Why `ranking[0]` got the request: `only_ready`, `greenest`, or `latency` when a greener
    ready replica was passed over as saturated or over budget.

    Raises:
        ValueError: the ranking is empty.
    """
    if not ranking:
        raise ValueError("no replica to choose from")
    if len(ranking) == 1:
        return "only_ready"
    chosen = ranking[0].intensity
    known = [r.intensity for r in ranking if r.intensity is not None]
    if known and (chosen is None or min(known) < chosen):
        return "latency"
    return "greenest"


TableListener = Callable[[Replica, "ReplicaStateName | None", "ReplicaStateName | None"], None]


class ReplicaTable:
    """The replicas, shared by the router and the replica controller on one asyncio loop.

    Not thread-safe: every call must come from the loop's thread. Listeners hear every change
    as `(replica, old_state, new_state)`: `old_state` is None when the replica was added,
    `new_state` None when it was removed.
    """

    def __init__(self, replicas: Iterable[Replica] = ()) -> None:
        self._replicas: dict[str, Replica] = {}
        self._listeners: list[TableListener] = []
        for replica in replicas:
            self.add(replica)

    def add(self, replica: Replica) -> None:
        """Add a replica.

        Raises:
            ValueError: a replica with the same id is already in the table.
        """
        if replica.id in self._replicas:
            raise ValueError(f"replica {replica.id} is already in the table")
        self._replicas[replica.id] = replica
        self._notify(replica, None, replica.state)

    def remove(self, replica_id: str) -> Replica | None:
        """Take a replica out of the table; the removed replica, or None if there was none."""
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            self._notify(replica, replica.state, None)
        return replica

    def get(self, replica_id: str) -> Replica | None:
        """The replica with this id, or None."""
        return self._replicas.get(replica_id)

    def all(self) -> list[Replica]:
        """Every replica, in the order they were added."""
        return list(self._replicas.values())

    def set_state(self, replica_id: str, state: ReplicaStateName) -> None:
        """Move a replica to `state` (listeners hear only real changes).

        Raises:
            KeyError: no replica has this id.
        """
        replica = self._replicas[replica_id]
        old = replica.state
        if old != state:
            replica.state = state
            self._notify(replica, old, state)

    def shares(self) -> dict[str, float]:
        """Each replica's share of the requests routed so far (all 0.0 before the first)."""
        total = sum(r.requests for r in self._replicas.values())
        return {r.id: (r.requests / total if total else 0.0) for r in self._replicas.values()}

    def subscribe(self, listener: TableListener) -> None:
        """Call `listener(replica, old_state, new_state)` on every later change."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: TableListener) -> None:
        """Stop calling `listener` (no error if it was not subscribed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(
        self, replica: Replica, old: ReplicaStateName | None, new: ReplicaStateName | None
    ) -> None:
        for listener in list(self._listeners):
            listener(replica, old, new)
