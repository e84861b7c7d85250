"""The multi-hub layout in harchos.toml: the hubs, and the replicas [serve] asks for on them.

    python topology.py check      # validate harchos.toml (regions against harchos's catalogue)
    python topology.py commands   # the `vllm serve` command of each replica slot on each hub

`harchos run serve` does the placing: it starts `[serve] replicas` replicas on the greenest of the
`[serve] hubs`, at most as many on a hub as its GPUs hold, and moves them as the grids change,
with its carbon-aware router in front. This script checks beforehand that the layout can hold
them, and prints the commands for starting replicas by hand (the manual way): on a hub, the k-th
replica listens on `[serve] port` + k.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serve import ConfigError, ServeSettings, load_settings, parse_settings, vllm_command


@dataclass(frozen=True)
class Hub:
    """A machine with GPUs in one region: this one (`local`) or one reached over `ssh` at `host`."""

    name: str
    region: str
    transport: str
    host: str
    gpus: int | None

    @property
    def address(self) -> str:
        """Where the hub's replicas answer HTTP."""
        return "127.0.0.1" if self.transport == "local" else self.host.rpartition("@")[2]


@dataclass(frozen=True)
class Slot:
    """Where a replica can run: a hub and a port on it (the hub's k-th replica: port + k)."""

    hub: Hub
    index: int
    port: int

    @property
    def url(self) -> str:
        """The replica's OpenAI API base URL."""
        return f"http://{self.hub.address}:{self.port}/v1"


@dataclass(frozen=True)
class Topology:
    """The [serve] and [hubs] tables of a harchos.toml."""

    serve: ServeSettings
    hubs: dict[str, Hub]

    def candidates(self) -> list[Hub]:
        """The hubs replicas may run on: `[serve] hubs`, else every hub."""
        names = self.serve.hubs if self.serve.hubs is not None else tuple(self.hubs)
        return [self.hubs[name] for name in names]

    def capacity(self, hub: Hub) -> int:
        """Replicas the hub can hold: its GPUs over a replica's; no GPU count, no limit."""
        if hub.gpus is None:
            return self.serve.replicas
        return min(self.serve.replicas, hub.gpus // self.serve.tensor_parallel_size)

    def slots(self) -> list[Slot]:
        """Every place a replica could run, hub by hub."""
        return [
            Slot(hub, k, self.serve.port + k)
            for hub in self.candidates()
            for k in range(self.capacity(hub))
        ]

    def command(self, slot: Slot) -> list[str]:
        """The `vllm serve` command line of a replica in `slot`."""
        return vllm_command(replace(self.serve, port=slot.port))


def _hub(name: str, table: Any) -> Hub:
    if not isinstance(table, dict) or not isinstance(table.get("region"), str):
        raise ConfigError(f"[hubs.{name}] needs a region")
    transport = table.get("transport", "ssh" if "host" in table else "local")
    host = table.get("host", "localhost")
    gpus = table.get("gpus")
    if transport not in ("local", "ssh"):
        raise ConfigError(f"[hubs.{name}] transport must be 'local' or 'ssh'")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"[hubs.{name}] host must be an SSH destination")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise ConfigError(f"[hubs.{name}] gpus must be a whole number, 0 or more")
    return Hub(name, table["region"], transport, host, gpus)


def parse(data: Mapping[str, Any], serve: ServeSettings | None = None) -> Topology:
    """Validate the [serve] and [hubs] tables (`serve`, if given, stands for [serve]).

    Raises:
        ConfigError: a table or value is missing or wrong; the message names it.
    """
    if serve is None:
        table = data.get("serve")
        if not isinstance(table, dict):
            raise ConfigError("harchos.toml needs a [serve] table")
        serve = parse_settings(table)
    hubs_table = data.get("hubs")
    if not isinstance(hubs_table, dict) or not hubs_table:
        raise ConfigError("harchos.toml needs [hubs.*] tables: one hub per region")
    topology = Topology(serve, {name: _hub(name, hub) for name, hub in hubs_table.items()})
    unknown = [name for name in serve.hubs or () if name not in topology.hubs]
    if unknown:
        raise ConfigError(f"[serve] hubs names {', '.join(unknown)}, not in [hubs]")
    if not topology.candidates():
        raise ConfigError("[serve] hubs is empty: name at least one hub")
    room = len(topology.slots())
    if room < serve.replicas:
        raise ConfigError(
            f"[serve] replicas = {serve.replicas}, but the hubs hold {room} (each replica needs "
            f"tensor_parallel_size = {serve.tensor_parallel_size} GPUs): add GPUs or hubs"
        )
    return topology


def load(path: Path = Path("harchos.toml"), environ: Mapping[str, str] | None = None) -> Topology:
    """Read and validate a harchos.toml ([serve] with `$HARCHOS_VLLM_COMMAND`, as harchos does).

    Raises:
        ConfigError: the file is missing, not TOML, or invalid.
    """
    serve = load_settings(path, environ=environ)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        return parse(data, serve)
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


def main(argv: Sequence[str] | None = None) -> int:
    """`check` or `commands`; exit 2 on an invalid harchos.toml."""
    parser = argparse.ArgumentParser(description="The multi-hub layout in harchos.toml.")
    parser.add_argument("action", choices=["check", "commands"])
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
        for hub in topology.candidates():
            where = "this machine" if hub.transport == "local" else hub.host
            print(f"{hub.name:<16} {hub.region:<16} up to {topology.capacity(hub)} "
                  f"replica(s) on {where}")  # fmt: skip
        print(f"{topology.serve.replicas} replica(s) on the greenest of them")
        return 0
    for slot in topology.slots():
        where = "this machine" if slot.hub.transport == "local" else slot.hub.host
        print(f"# {slot.hub.name}/{slot.index} on {where}\n{shlex.join(topology.command(slot))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
