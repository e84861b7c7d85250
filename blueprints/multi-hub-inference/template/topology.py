"""The multi-hub layout in harchos.toml: hubs per region, the replicas on them, router settings.

    python topology.py check      # validate harchos.toml (regions against harchos's catalogue)
    python topology.py commands   # the `vllm serve` command each replica runs on its hub
    python topology.py pick       # the API URL of the first ready replica, in file order

harchos's carbon-aware router (a later harchos release) reads the same tables: it sends each
request to the greenest ready replica whose extra latency stays within `latency_budget_ms`, health
checks every replica each `health_check_interval_s`, and retries a failed request on up to
`retries` other replicas. Until it is there, `pick` gives a replica to talk to directly.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from serve import ConfigError, ServeSettings, parse_settings, vllm_command

POLICIES = ("greenest-within-budget", "greenest", "lowest-latency")


@dataclass(frozen=True)
class Hub:
    """A machine with GPUs in one region: this one (`local`) or one reached over `ssh` at `host`."""

    name: str
    region: str
    transport: str
    host: str
    gpus: int

    @property
    def address(self) -> str:
        """Where the hub's replicas answer HTTP."""
        return "127.0.0.1" if self.transport == "local" else self.host.rpartition("@")[2]


@dataclass(frozen=True)
class Replica:
    """One `vllm serve` process on a hub."""

    hub: str
    port: int
    index: int

    @property
    def id(self) -> str:
        """The replica's id in harchos's metrics (`replica` label): `<hub>/<index>`."""
        return f"{self.hub}/{self.index}"


@dataclass(frozen=True)
class Failover:
    """How the router notices a dead replica and what it does with the request."""

    health_check_interval_s: float
    unhealthy_after: int
    retries: int


@dataclass(frozen=True)
class Router:
    """The router's address and policy."""

    host: str
    port: int
    carbon_policy: str
    latency_budget_ms: float
    failover: Failover


@dataclass(frozen=True)
class Topology:
    """Everything in harchos.toml that the router and the replicas need."""

    serve: ServeSettings
    hubs: dict[str, Hub]
    replicas: tuple[Replica, ...]
    router: Router

    def url(self, replica: Replica) -> str:
        """A replica's OpenAI API base URL."""
        return f"http://{self.hubs[replica.hub].address}:{replica.port}/v1"

    def command(self, replica: Replica) -> list[str]:
        """The `vllm serve` command line the replica runs on its hub."""
        return vllm_command(replace(self.serve, port=replica.port))


def _number(table: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} {key} must be a number, not {value!r}")
    return value


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"harchos.toml needs a [{key}] table")
    return value


def parse(data: Mapping[str, Any]) -> Topology:
    """Validate the [serve], [hubs], [[replicas]] and [router] tables.

    Raises:
        ConfigError: a table or value is missing or wrong; the message names it.
    """
    serve = parse_settings(_table(data, "serve"))
    hubs: dict[str, Hub] = {}
    for name, hub in _table(data, "hubs").items():
        if not isinstance(hub, dict) or not isinstance(hub.get("region"), str):
            raise ConfigError(f"[hubs.{name}] needs a region")
        transport = hub.get("transport", "ssh" if "host" in hub else "local")
        host = hub.get("host", "localhost")
        if transport not in ("local", "ssh"):
            raise ConfigError(f"[hubs.{name}] transport must be 'local' or 'ssh'")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"[hubs.{name}] host must be an SSH destination")
        gpus = int(_number(hub, "gpus", f"[hubs.{name}]", 1))
        hubs[name] = Hub(name, hub["region"], transport, host, gpus)
    if not hubs:
        raise ConfigError("[hubs] is empty: add one hub per region")
    replicas: list[Replica] = []
    per_hub: dict[str, int] = {}
    for i, raw in enumerate(data.get("replicas", [])):
        hub = raw.get("hub") if isinstance(raw, dict) else None
        if hub not in hubs:
            raise ConfigError(f"replica {i + 1} names hub {hub!r}, which is not in [hubs]")
        port = int(_number(raw, "port", f"replica {i + 1}", serve.port))
        replica = Replica(hub, port, per_hub.get(hub, 0))
        if any(r.hub == hub and r.port == port for r in replicas):
            raise ConfigError(f"two replicas on hub {hub} use port {port}")
        per_hub[hub] = replica.index + 1
        replicas.append(replica)
    if not replicas:
        raise ConfigError("no [[replicas]]: add at least one")
    for name, count in per_hub.items():
        if count * serve.tensor_parallel_size > hubs[name].gpus:
            raise ConfigError(
                f"hub {name} has {hubs[name].gpus} GPUs but its {count} replicas need "
                f"{count * serve.tensor_parallel_size} (tensor_parallel_size "
                f"{serve.tensor_parallel_size} each)"
            )
    router = _table(data, "router")
    failover = router.get("failover", {})
    if not isinstance(failover, dict):
        raise ConfigError("[router.failover] must be a table")
    policy = router.get("carbon_policy", POLICIES[0])
    if policy not in POLICIES:
        raise ConfigError(f"[router] carbon_policy must be one of {', '.join(POLICIES)}")
    settings = Router(
        host=str(router.get("host", "127.0.0.1")),
        port=int(_number(router, "port", "[router]", 9000)),
        carbon_policy=policy,
        latency_budget_ms=_number(router, "latency_budget_ms", "[router]"),
        failover=Failover(
            health_check_interval_s=_number(
                failover, "health_check_interval_s", "[router.failover]", 5
            ),
            unhealthy_after=int(_number(failover, "unhealthy_after", "[router.failover]", 3)),
            retries=int(_number(failover, "retries", "[router.failover]", 2)),
        ),
    )
    if settings.latency_budget_ms <= 0:
        raise ConfigError("[router] latency_budget_ms must be more than 0")
    if settings.failover.health_check_interval_s <= 0 or settings.failover.unhealthy_after < 1:
        raise ConfigError("[router.failover] needs an interval > 0 and unhealthy_after >= 1")
    if settings.failover.retries < 0:
        raise ConfigError("[router.failover] retries cannot be negative")
    return Topology(serve, hubs, tuple(replicas), settings)


def load(path: Path = Path("harchos.toml")) -> Topology:
    """Read and validate a harchos.toml.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run from the project folder") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def unknown_regions(topology: Topology) -> list[str]:
    """Hub regions harchos does not know, each with harchos's hint."""
    from harchos_cli.carbon.regions import resolve
    from harchos_cli.errors import UsageError

    problems = []
    for hub in topology.hubs.values():
        try:
            resolve(hub.region)
        except UsageError as exc:
            problems.append(f"[hubs.{hub.name}] region: {exc}")
    return problems


def first_ready(urls: Iterable[str], timeout: float = 2.0) -> str | None:
    """The first URL whose server's `/health` answers 200 (starting and dead ones are skipped)."""
    for url in urls:
        health = url.rstrip("/").removesuffix("/v1") + "/health"
        try:
            if httpx.get(health, timeout=timeout).status_code == 200:
                return url
        except httpx.TransportError:
            continue
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`check`, `commands` or `pick`; exit 2 on an invalid harchos.toml."""
    parser = argparse.ArgumentParser(description="The multi-hub layout in harchos.toml.")
    parser.add_argument("action", choices=["check", "commands", "pick"])
    parser.add_argument("--config", type=Path, default=Path("harchos.toml"))
    args = parser.parse_args(argv)
    try:
        topology = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "check":
        problems = unknown_regions(topology)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 2
        for replica in topology.replicas:
            hub = topology.hubs[replica.hub]
            print(f"{replica.id:<24} {hub.region:<16} {topology.url(replica)}")
        return 0
    if args.action == "commands":
        for replica in topology.replicas:
            hub = topology.hubs[replica.hub]
            where = "this machine" if hub.transport == "local" else hub.host
            print(f"# {replica.id} on {where}\n{shlex.join(topology.command(replica))}")
        return 0
    url = first_ready(topology.url(r) for r in topology.replicas)
    if url is None:
        print("error: no replica is ready", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
