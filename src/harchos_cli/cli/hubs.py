"""`harchos hubs`: the machines jobs run on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from harchos_cli.cli import completion

app = typer.Typer(
    help="Add, list, check and remove hubs (this machine, or GPU boxes over SSH).",
    short_help="Add, list, check and remove hubs.",
    rich_markup_mode=None,
)


def _parse_gpus(value: str) -> int | None:
    from harchos_cli.errors import UsageError

    if value.strip().lower() == "auto":
        return None
    if not value.strip().isdigit():
        raise UsageError(f"invalid --gpus {value!r}", hint="a whole number >= 0, or auto")
    return int(value)


@app.command()
def add(
    name: str = typer.Argument(..., help="A name for the hub: letters, digits, '-', '_', '.'."),
    ssh: str | None = typer.Option(
        None, "--ssh", help="[USER@]HOST[:PORT]; HOST may be an alias from ~/.ssh/config."
    ),
    slurm: str | None = typer.Option(
        None,
        "--slurm",
        help="A Slurm cluster: its login node as [USER@]HOST[:PORT], or `local` on the login "
        "node itself.",
    ),
    partition: str | None = typer.Option(
        None, "--partition", help="Slurm partition the jobs are submitted to (with --slurm)."
    ),
    account: str | None = typer.Option(None, "--account", help="Slurm account (with --slurm)."),
    qos: str | None = typer.Option(None, "--qos", help="Slurm QOS (with --slurm)."),
    identity: str | None = typer.Option(
        None, "--identity", "-i", help="Private key file (default: your ssh config and agent)."
    ),
    region: str | None = typer.Option(
        None,
        "--region",
        help="Where the hub is (eu-west, aws:eu-central-1, DE, ...).",
        autocompletion=completion.regions,
    ),
    gpus: str = typer.Option(
        "auto", "--gpus", "--gpus-per-node", help="How many GPUs (a Slurm hub: per node), or auto."
    ),
    gpu_type: str | None = typer.Option(None, "--gpu-type", help="e.g. A100-80GB (informative)."),
    price: float | None = typer.Option(
        None, "--price-per-gpu-hour", help="Cost of one GPU for one hour, in your currency."
    ),
    pue: float = typer.Option(1.0, "--pue", help="Power usage effectiveness of the site (>= 1)."),
    electricity_price: float | None = typer.Option(
        None, "--electricity-price", help="What the hub pays per kWh, if you pay for energy."
    ),
    currency: str | None = typer.Option(
        None, "--currency", help="ISO code of both prices (default: the cost.currency setting)."
    ),
    cpu_tdp: float | None = typer.Option(
        None, "--cpu-tdp", help="CPU package power in watts, for the meter's CPU estimate."
    ),
    max_jobs: int | None = typer.Option(
        None,
        "--max-jobs",
        metavar="N",
        min=1,
        help="Jobs it runs at once: plans never book an hour beyond that (default: no limit).",
    ),
    workdir: str = typer.Option(
        "~/harchos", "--workdir", help="Folder on the hub that projects are synced into."
    ),
    python: str = typer.Option("python3", "--python", help="Python 3.8+ on the hub."),
    strict_host_key: bool = typer.Option(
        False,
        "--strict-host-key",
        help="Refuse an unknown host key instead of pinning it on first use.",
    ),
    json_: bool = typer.Option(False, "--json", help="Print the stored hub as JSON."),
) -> None:
    """Add a GPU box reached over SSH, or a Slurm cluster."""
    from harchos_cli.cli import output
    from harchos_cli.hubs import inventory
    from harchos_cli.hubs.base import Hub

    transport, target = inventory.kind_of(ssh=ssh, slurm=slurm, partition=partition,
                                          account=account, qos=qos)  # fmt: skip
    user, host, port = inventory.parse_ssh_target(target) if target else (None, None, None)
    _finite("--pue", pue)
    _finite("--price-per-gpu-hour", price)
    _finite("--electricity-price", electricity_price)
    _finite("--cpu-tdp", cpu_tdp)
    hub = inventory.add(
        Hub(
            name=name,
            transport=transport,
            host=host,
            user=user,
            port=port,
            identity=_identity(identity),
            region=region,
            gpus=_parse_gpus(gpus),
            gpu_type=gpu_type,
            price_per_gpu_hour=price,
            pue=pue,
            electricity_price_per_kwh=electricity_price,
            currency=currency.upper() if currency else None,
            cpu_tdp_w=cpu_tdp,
            max_jobs=max_jobs,
            workdir=workdir,
            python=python,
            host_key_policy="strict" if strict_host_key else "accept-new",
            partition=partition,
            account=account,
            qos=qos,
        )
    )
    if json_:
        output.print_json(inventory.as_json(hub))
    else:
        print(f"added hub {hub.name} ({_where(hub)})")
        print(f"check it with: harchos hubs check {hub.name}")


def _finite(name: str, value: float | None) -> None:
    import math

    from harchos_cli.errors import UsageError

    if value is not None and not math.isfinite(value):
        raise UsageError(f"{name} {value:g} is not a number", hint=f"give {name} as a number")


def _identity(value: str | None) -> Path | None:
    import os

    from harchos_cli.errors import UsageError

    if not value:
        return None
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        raise UsageError(f"cannot find the home folder in --identity {value!r}",
                         hint="give the key file's full path")  # fmt: skip
    return Path(expanded)


def _where(hub: Any) -> str:
    if hub.transport == "local":
        return "this machine"
    user = f"{hub.user}@" if hub.user else ""
    port = f":{hub.port}" if hub.port else ""
    host = f"[{hub.host}]" if ":" in (hub.host or "") and port else hub.host
    if hub.transport == "slurm":
        login = f"{user}{host}{port}" if hub.host else "this login node"
        return f"slurm partition {hub.partition} via {login}"
    return f"ssh {user}{host}{port}"


@app.command("list")
def list_(json_: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every hub, `local` (this machine) first."""
    from harchos_cli.cli import output
    from harchos_cli.hubs import inventory

    hubs = inventory.list_hubs()
    if json_:
        output.print_json([inventory.as_json(hub) for hub in hubs])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("name", "where", "region", "gpus", "pue", "price/gpu-h", "workdir"):
        table.add_column(column)
    for hub in hubs:
        table.add_row(
            hub.name,
            _where(hub),
            hub.region or "-",
            "auto" if hub.gpus is None else str(hub.gpus),
            f"{hub.pue:g}",
            "-" if hub.price_per_gpu_hour is None else f"{hub.price_per_gpu_hour:g}",
            "(in place)" if hub.transport == "local" else hub.workdir,
        )
    Console(highlight=False).print(table)


@app.command()
def show(
    name: str = typer.Argument(..., help="The hub's name.", autocompletion=completion.hubs),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One hub's settings, and where harchos keeps its files for it."""
    from harchos_cli.cli import output
    from harchos_cli.hubs import inventory
    from harchos_cli.hubs.processes import jobs_root
    from harchos_cli.hubs.ssh import known_hosts_file

    hub = inventory.get(name)
    data = inventory.as_json(hub)
    data["jobs_dir"] = jobs_root(hub)
    data["known_hosts"] = None if hub.transport == "local" else str(known_hosts_file())
    if json_:
        output.print_json(data)
        return
    for key, value in data.items():
        print(f"{key:20} {'-' if value is None else value}")


@app.command()
def remove(
    name: str = typer.Argument(..., help="The hub's name.", autocompletion=completion.hubs),
) -> None:
    """Forget a hub (nothing on the machine is touched)."""
    from harchos_cli.hubs import inventory

    inventory.remove(name)
    print(f"removed hub {name}")


@app.command(short_help="Check that hubs can run jobs.")
def check(
    names: list[str] | None = typer.Argument(
        None, help="Hubs to check (default: all).", autocompletion=completion.hubs
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON (one object for one hub)."),
) -> None:
    """Reachability, host key, Python, GPUs and free disk; hubs are checked concurrently.

    Exits 4 when a hub cannot be used.
    """
    from harchos_cli.cli import output
    from harchos_cli.hubs import inventory
    from harchos_cli.hubs.check import check_hubs

    hubs = [inventory.get(name) for name in names] if names else inventory.list_hubs()
    results = check_hubs(hubs)
    if json_:
        payload = [r.as_json() for r in results]
        output.print_json(payload[0] if names and len(names) == 1 else payload)
    else:
        for r in results:
            if r.ok:
                gpus = ", ".join(str(g.get("name")) for g in r.gpus) or "none"
                key = f", host key {r.host_key}" if r.host_key else ""
                print(
                    f"{r.hub}: ok{key}, Python {r.python}, GPUs: {gpus}, {r.free_disk_gb:g} GB free"
                )
                if r.slurm:
                    states = ", ".join(
                        f"{n} {s}" for s, n in sorted(r.slurm["node_states"].items())
                    )
                    print(f"{r.hub}: Slurm partition {r.slurm['partition']} "
                          f"({r.slurm['state']}): {r.slurm['nodes']} node(s) ({states}), "
                          f"{r.slurm['cpus']} CPUs, {r.slurm['gpus']} GPUs")  # fmt: skip
            else:
                print(f"{r.hub}: FAILED: {r.error}")
            for warning in r.warnings:
                print(f"{r.hub}: warning: {warning}")
    if not all(r.ok for r in results):
        from harchos_cli.errors import ExitCode

        raise typer.Exit(int(ExitCode.HUB_FAILED))
