"""The hub inventory in the state database. The `local` hub (this machine) is never stored."""

from __future__ import annotations

import functools
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

from harchos_cli import state
from harchos_cli.errors import UsageError
from harchos_cli.hubs.base import LOCAL, Hub

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RESERVED = frozenset({LOCAL, "auto", "all"})
SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_COLUMNS = tuple(f.name for f in fields(Hub))


@functools.cache
def detect_local_gpus() -> int:
    """How many NVIDIA GPUs this machine has (0 without `nvidia-smi`)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.decode().splitlines() if line.strip())


def local_hub() -> Hub:
    """This machine, with its GPUs detected; its Python is the one running harchos."""
    return Hub(name=LOCAL, transport="local", gpus=detect_local_gpus(), python=sys.executable)


@contextmanager
def _db(db: sqlite3.Connection | None) -> Iterator[sqlite3.Connection]:
    if db is not None:
        yield db
        return
    conn = state.connect()
    try:
        yield conn
    finally:
        conn.close()


def check_name(name: str) -> str:
    """`name` when it can name a new hub; `UsageError` (exit 2) otherwise."""
    if not NAME.match(name):
        raise UsageError(
            f"invalid hub name {name!r}",
            hint="use up to 63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        )
    if name.lower() in RESERVED:
        raise UsageError(f"the hub name {name!r} is reserved", hint="choose another name")
    return name


def parse_ssh_target(target: str) -> tuple[str | None, str, int | None]:
    """Split `[USER@]HOST[:PORT]` (IPv6 as `[ADDR]:PORT`) into user, host and port.

    HOST may be an alias from ~/.ssh/config, whose User and Port then apply when not given here.
    """
    user, sep, rest = target.rpartition("@")
    if not sep:
        user, rest = "", target
    port_text = ""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise UsageError(f"invalid SSH target {target!r}", hint="e.g. [2001:db8::1]:2222")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest
    bad = not host or any(c.isspace() for c in target) or host.startswith("-") or "@" in user
    if bad or (sep and not user):
        raise UsageError(f"invalid SSH target {target!r}", hint="expected [USER@]HOST[:PORT]")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"invalid SSH port in {target!r}", hint="a port is 1 to 65535")
        port = int(port_text)
    return (user or None), host, port


def kind_of(
    *, ssh: str | None, slurm: str | None, partition: str | None, account: str | None,
    qos: str | None,
) -> tuple[Literal["ssh", "slurm"], str | None]:  # fmt: skip
    """The transport `hubs add` was asked for, and its SSH target (None: this machine)."""
    if (ssh is None) == (slurm is None):
        raise UsageError(
            "give one of --ssh and --slurm",
            hint="--ssh [USER@]HOST for a GPU box, --slurm [USER@]LOGIN (or local) for a cluster",
        )
    if ssh is not None:
        given = [flag for flag, value in (("--partition", partition), ("--account", account),
                                          ("--qos", qos)) if value is not None]  # fmt: skip
        if given:
            raise UsageError(f"{given[0]} applies to a Slurm hub", hint="use --slurm instead")
        return "ssh", ssh
    assert slurm is not None
    return "slurm", None if slurm.strip() == LOCAL else slurm


def _from_row(row: sqlite3.Row) -> Hub:
    data: dict[str, Any] = {key: row[key] for key in _COLUMNS}
    data["identity"] = Path(data["identity"]) if data["identity"] else None
    return Hub(**data)


def add(hub: Hub, db: sqlite3.Connection | None = None) -> Hub:
    """Store a new SSH hub after checking its name, region and identity file.

    Raises:
        UsageError: Bad or duplicate name, unknown region, missing identity file, bad numbers.
    """
    from harchos_cli.carbon import regions

    check_name(hub.name)
    if hub.transport == "slurm":
        for flag, value in (("--partition", hub.partition), ("--account", hub.account),
                            ("--qos", hub.qos)):  # fmt: skip
            if value is not None and not SLURM_NAME.match(value):
                raise UsageError(f"invalid {flag} {value!r}",
                                 hint="letters, digits, '-', '_' and '.'")  # fmt: skip
        if not hub.partition:
            raise UsageError("a Slurm hub needs --partition",
                             hint="sinfo on the login node lists the partitions")  # fmt: skip
    elif hub.transport != "ssh" or not hub.host:
        raise UsageError("only SSH and Slurm hubs are stored", hint="give --ssh [USER@]HOST[:PORT]")
    if hub.region is not None:
        hub = _replace(hub, region=regions.resolve(hub.region).name)
    if hub.identity is not None:
        identity = hub.identity.expanduser()
        if not identity.is_file():
            raise UsageError(f"identity file {str(identity)!r} does not exist")
        hub = _replace(hub, identity=identity.resolve())
    if hub.gpus is not None and hub.gpus < 0:
        raise UsageError("--gpus must be a whole number >= 0, or auto")
    if hub.pue < 1.0:
        raise UsageError(f"PUE {hub.pue:g} is below 1.0", hint="PUE is >= 1.0 (1.1-1.6 typical)")
    if hub.price_per_gpu_hour is not None and hub.price_per_gpu_hour < 0:
        raise UsageError("--price-per-gpu-hour must be >= 0")
    if hub.electricity_price_per_kwh is not None and hub.electricity_price_per_kwh < 0:
        raise UsageError("--electricity-price must be >= 0")
    if hub.cpu_tdp_w is not None and hub.cpu_tdp_w <= 0:
        raise UsageError("--cpu-tdp must be > 0 watts")
    if hub.max_jobs is not None and hub.max_jobs < 1:
        raise UsageError("--max-jobs must be a whole number >= 1")
    if hub.currency is not None and not re.fullmatch(r"[A-Z]{3}", hub.currency):
        raise UsageError(f"invalid currency {hub.currency!r}", hint="an ISO 4217 code: EUR, USD")
    if not hub.workdir or not hub.python:
        raise UsageError("--workdir and --python must not be empty")
    row = asdict(hub)
    row["identity"] = str(hub.identity) if hub.identity else None
    with _db(db) as conn:
        try:
            conn.execute(
                f"INSERT INTO hubs ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                [row[key] for key in _COLUMNS],
            )
        except sqlite3.IntegrityError:
            raise UsageError(
                f"a hub named {hub.name!r} exists already",
                hint=f"remove it first (harchos hubs remove {hub.name}) or choose another name",
            ) from None
    return hub


def _replace(hub: Hub, **changes: Any) -> Hub:
    from dataclasses import replace

    return replace(hub, **changes)


def list_hubs(db: sqlite3.Connection | None = None) -> list[Hub]:
    """Every hub: `local` first, then the stored ones by name."""
    with _db(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM hubs ORDER BY name").fetchall()
    return [local_hub(), *(_from_row(row) for row in rows)]


def get(name: str, db: sqlite3.Connection | None = None) -> Hub:
    """The hub called `name`; `UsageError` (exit 2, with near names) when there is none."""
    if name == LOCAL:
        return local_hub()
    with _db(db) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM hubs WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return _from_row(row)
        names = [r[0] for r in conn.execute("SELECT name FROM hubs")]
    raise unknown_hub(name, [LOCAL, *names])


def unknown_hub(name: str, names: list[str]) -> UsageError:
    """The error for a hub name that is not in the inventory."""
    import difflib

    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}?" if near else "see: harchos hubs list"
    return UsageError(f"no hub named {name!r}", hint=hint)


def remove(name: str, db: sqlite3.Connection | None = None) -> None:
    """Forget the hub called `name` (its machine and files are untouched)."""
    if name == LOCAL:
        raise UsageError("the local hub cannot be removed", hint="it is this machine")
    with _db(db) as conn:
        deleted = conn.execute("DELETE FROM hubs WHERE name = ?", (name,)).rowcount
        if deleted:
            return
        names = [r[0] for r in conn.execute("SELECT name FROM hubs")]
    raise unknown_hub(name, [LOCAL, *names])


def as_json(hub: Hub) -> dict[str, Any]:
    """The stable JSON shape of a hub (`hubs list/show --json`)."""
    data = asdict(hub)
    data["identity"] = str(hub.identity) if hub.identity else None
    return data


def from_json(data: dict[str, Any]) -> Hub:
    """The hub `as_json` described (a job keeps the hub it was launched on this way)."""
    values = {f.name: data[f.name] for f in fields(Hub) if f.name in data}
    values["identity"] = Path(values["identity"]) if values.get("identity") else None
    return Hub(**values)
