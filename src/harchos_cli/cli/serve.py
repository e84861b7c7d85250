"""`harchos serve`: what a serving deployment runs, its replicas' logs, stopping it, and the router
on its own. (`harchos run serve` starts one.)"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from harchos_cli.serve.store import ServeStore

app = typer.Typer(
    help="Status, logs and stop of `harchos run serve` deployments; the router on its own.",
    short_help="Status, logs and stop of serving deployments.",
    rich_markup_mode=None,
    no_args_is_help=True,
)

_JSON = typer.Option(False, "--json", help="Print JSON (docs/serving.md) on stdout.")
_DEPLOYMENT = typer.Option(
    None, "--deployment", "-d", metavar="ID",
    help="Which deployment (default: this project's, else the only live one).",
)  # fmt: skip


def _store() -> ServeStore:
    """The store, after restarting any controller that died (kill -9, reboot)."""
    from harchos_cli.cli.output import warn
    from harchos_cli.serve.controller import revive
    from harchos_cli.serve.store import ServeStore

    store = ServeStore()
    for deployment_id in revive(store):
        warn(f"restarted the controller of deployment {deployment_id}")
    return store


@app.command("status", short_help="Replicas: state, region, intensity and load.")
def status(deployment_id: str = _DEPLOYMENT, json_output: bool = _JSON) -> None:
    """Replicas with state, region, current intensity, load and share of traffic."""
    from harchos_cli.cli.output import print_json
    from harchos_cli.serve import deploy

    store = _store()
    try:
        deployment = deploy.find_deployment(store, deployment_id)
        data = deploy.status(store, deployment)
    finally:
        store.close()
    if json_output:
        print_json(data)
        return
    _print_status(data)


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"deployment {data['deployment_id']} ({data['name']}): {data['state']}, router "
        f"{data['router_url'] or 'not listening'}"
    )
    if data["message"]:
        console.print(f"  {data['message']}")
    table = Table(box=None)
    for column in ("replica", "hub", "region", "state"):
        table.add_column(column)
    for column in ("gCO2eq/kWh", "running", "waiting", "share", "restarts"):
        table.add_column(column, justify="right")
    for replica in data["replicas"]:
        intensity = replica.get("intensity")
        table.add_row(
            replica["id"], replica["hub"], replica["region"] or "-", replica["state"],
            "-" if intensity is None else f"{intensity:.0f}",
            str(replica.get("running", 0)), str(replica.get("waiting", 0)),
            f"{replica.get('share', 0.0):.0%}", str(replica["restarts"]),
        )  # fmt: skip
    console.print(table)
    moves = [d for d in data["decisions"] if d["action"] in ("move", "move-failed", "restart")]
    for decision in moves[-5:]:
        console.print(f"  {decision['at']}  {decision['action']}: {decision['reason']}")


@app.command("stop", short_help="Drain and stop a deployment.")
def stop(
    deployment_id: str = _DEPLOYMENT,
    wait: float = typer.Option(
        120.0, "--wait", metavar="SECONDS", help="How long to wait for the drain.", min=0
    ),
    json_output: bool = _JSON,
) -> None:
    """Drain every replica (no new requests; running ones finish), stop them and the router."""
    from harchos_cli.cli.output import print_json
    from harchos_cli.serve import deploy

    store = _store()
    try:
        deployment = deploy.find_deployment(store, deployment_id)
        final = deploy.request_stop(store, deployment, wait_s=wait)
        data = deploy.status(store, final)
    finally:
        store.close()
    if json_output:
        print_json(data)
    else:
        typer.echo(f"deployment {final.id}: {final.state}", err=True)
    if final.live:
        raise typer.Exit(1)


@app.command("logs")
def logs(
    replica: str = typer.Argument(..., metavar="REPLICA", help="A replica id, e.g. gpu1/0."),
    deployment_id: str = _DEPLOYMENT,
) -> None:
    """The replica's output (its current launch), as its hub has it."""
    import sys

    from harchos_cli.serve import deploy

    store = _store()
    try:
        deployment = deploy.find_deployment(store, deployment_id)
        _, data = deploy.replica_log(store, deployment, replica)
    finally:
        store.close()
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command("router", short_help="Run only the carbon-aware router.")
def router(
    replica: list[str] = typer.Option(
        ...,
        "--replica",
        metavar="URL[@REGION]",
        help="A vLLM server (repeat the option), and its region for carbon-aware routing.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on.", min=0, max=65535),
    latency_budget_ms: float = typer.Option(5000.0, "--latency-budget-ms", min=1.0),
    provider: str = typer.Option(None, "--provider", help="Carbon data (default: configured)."),
) -> None:
    """Run only the carbon-aware router in front of servers you started yourself."""
    import asyncio

    from harchos_cli.carbon import regions
    from harchos_cli.errors import UsageError
    from harchos_cli.serve.controller import IntensitySource
    from harchos_cli.serve.router import serve_forever
    from harchos_cli.serve.routing import RoutingPolicy

    targets: list[tuple[str, str | None]] = []
    for item in replica:
        url, _, region = item.partition("@")
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--replica {item!r} is not a URL", hint="e.g. http://gpu1:8000@DE")
        if region:
            regions.resolve(region)  # an unknown region is exit 2 now, not a silent "unknown"
        targets.append((url.rstrip("/"), region or None))
    from harchos_cli.jobs.clock import RealClock

    source = IntensitySource(provider, ".", RealClock())
    policy = RoutingPolicy(latency_budget_s=latency_budget_ms / 1000)

    def ready(url: str) -> None:
        typer.echo(f"router on {url} in front of {len(targets)} replica(s)", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(targets, host, port, policy, source.of_region, on_ready=ready))
