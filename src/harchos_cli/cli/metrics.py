"""`harchos metrics`: export harchos's Prometheus metrics (docs/metrics.md)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Export harchos's Prometheus metrics: grid intensity per hub, job state, power, energy, "
    "emissions, cost and decisions.",
    rich_markup_mode=None,
    no_args_is_help=True,
)


@app.command("serve", short_help="Serve the metrics over HTTP, or write them for node_exporter.")
def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for a Prometheus in Docker)."
    ),
    port: int = typer.Option(9464, "--port", min=1, max=65535, help="Port to listen on."),
    textfile: Path | None = typer.Option(
        None,
        "--textfile",
        metavar="PATH",
        help="Write the metrics to this file for node_exporter's textfile collector instead of "
        "serving them over HTTP.",
    ),
    interval: float = typer.Option(
        15.0, "--interval", min=0.1, help="Seconds between writes of --textfile."
    ),
    once: bool = typer.Option(False, "--once", help="Write --textfile once and exit."),
    provider: str | None = typer.Option(
        None,
        "--provider",
        help="Carbon data provider for the hubs' intensity (default: configured).",
    ),
) -> None:
    """Serve /metrics over HTTP until Ctrl-C, or write them to a file (--textfile)."""
    import time

    from harchos_cli import metrics_export
    from harchos_cli.errors import UsageError

    source = metrics_export.registry(metrics_export.HarchosCollector(provider))
    if textfile is not None:
        while True:
            metrics_export.write_textfile(textfile, source)
            if once:
                return
            time.sleep(interval)
    if once:
        raise UsageError("--once needs --textfile", hint="see: harchos metrics serve --help")
    metrics_export.serve_http(host, port, source)
    typer.echo(
        f"serving metrics at http://{_url_host(host)}:{port}/metrics (Ctrl-C stops)", err=True
    )
    while True:
        time.sleep(3600)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
