"""`harchos forecast`: the grid's carbon intensity ahead and the greenest window for a job."""

from __future__ import annotations

from pathlib import Path

import typer

from harchos_cli.cli import completion

app = typer.Typer(
    help="Carbon intensity ahead, the greenest window for a job, and how sure it is.",
    short_help="Carbon intensity ahead and the greenest window.",
    invoke_without_command=True,
    rich_markup_mode=None,
    # It runs on its own; the subcommands are named in the usage line with what they take.
    subcommand_metavar="[backtest TRACE | history]",
)


@app.callback()
def forecast(
    ctx: typer.Context,
    region: str | None = typer.Option(
        None,
        "--region",
        "-r",
        help="Region(s), comma-separated: eu-west, aws:eu-west-1, DE, …",
        autocompletion=completion.regions,
    ),
    hours: int = typer.Option(48, "--hours", min=1, max=168, help="Hours ahead to show."),
    duration: str = typer.Option("1h", "--duration", help="Job length: 90m, 6h, PT6H."),
    deadline: str = typer.Option(
        "24h", "--deadline", help="Job must finish by: a duration from now or an ISO time."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Also list the periods under this many gCO2eq/kWh."
    ),
    provider: str | None = typer.Option(
        None,
        "--provider",
        "-p",
        help="auto, embedded, electricitymaps, watttime, ukgrid, entsoe or replay:PATH "
        "[HARCHOS_PROVIDER].",
    ),
    at: str | None = typer.Option(
        None, "--at", help="Pretend it is this ISO time (default: now; replay: 14 days in)."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON (schema in docs/json.md)."),
    csv_: bool = typer.Option(False, "--csv", help="Print the points as CSV."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw a chart in the terminal."),
    explain: bool = typer.Option(
        False, "--explain", help="Say which model, what history and its backtested error."
    ),
) -> None:
    """Show the carbon intensity ahead for one or more regions and the greenest window."""
    if ctx.invoked_subcommand is not None:
        return
    from harchos_cli.cli.session import forecast_outlook

    outlook = forecast_outlook(
        region=region,
        hours=hours,
        duration=duration,
        deadline=deadline,
        threshold=threshold,
        provider=provider,
        at=at,
    )
    if json_:
        from harchos_cli.carbon.outlook import outlook_json
        from harchos_cli.cli import output

        output.warn_all(outlook.all_warnings())
        output.print_json(outlook_json(outlook, explain=explain))
        return
    from harchos_cli.cli import render

    if csv_:
        render.print_outlook_csv(outlook)
    else:
        render.print_outlook(outlook, plot=plot, explain=explain)


@app.command(short_help="Score the forecaster on a recorded trace.")
def backtest(
    trace: Path = typer.Argument(
        ..., help="Hourly trace: Electricity Maps export or datetime,carbon_intensity."
    ),
    horizon: int = typer.Option(24, "--horizon", min=1, max=168, help="Forecast horizon in hours."),
    history: str = typer.Option(
        "all",
        "--history",
        help="Actuals the model may see before each forecast: 0h (offline), 24h (a live "
        "provider's day), 168h (a week), or all.",
    ),
    zone: str | None = typer.Option(None, "--zone", help="Grid zone, if the file doesn't say."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score the forecaster on a trace, beside the same-hour-yesterday baseline."""
    from harchos_cli.carbon.embedded import EmbeddedModel
    from harchos_cli.cli.session import load_trace
    from harchos_cli.plan.evaluate import backtest as run_backtest
    from harchos_cli.plan.evaluate import parse_history

    history_hours = parse_history(history)
    result = run_backtest(
        load_trace(trace, zone), EmbeddedModel.load(), horizon=horizon, history_hours=history_hours
    )
    if json_:
        from harchos_cli.cli import output

        output.print_json(result)
    else:
        from harchos_cli.cli import render

        render.print_backtest(result)


@app.command(short_help="The recent history kept per zone; --clear forgets it.")
def history(
    region: str | None = typer.Option(
        None,
        "--region",
        "-r",
        help="Only this region's zone.",
        autocompletion=completion.regions,
    ),
    clear: bool = typer.Option(False, "--clear", help="Forget the stored values and backfills."),
    json_: bool = typer.Option(False, "--json", help="Print JSON (schema in docs/json.md)."),
) -> None:
    """List the hourly actuals harchos keeps for the embedded model, per zone, series and
    provider (docs/forecast.md), or forget them with --clear."""
    from harchos_cli.carbon.history import HistoryStore
    from harchos_cli.cli import output

    zone = None
    if region:
        from harchos_cli.carbon import regions

        zone = regions.resolve(region).zone
    store = HistoryStore()
    try:
        if clear:
            removed = store.clear(zone)
            if json_:
                output.print_json({"cleared": removed, "zone": zone})
            else:
                typer.echo(f"forgot {removed} stored hours" + (f" of {zone}" if zone else ""))
            return
        rows = store.summary(zone)
    finally:
        store.close()
    if json_:
        output.print_json(rows)
        return
    if not rows:
        typer.echo("no stored history" + (f" for {zone}" if zone else ""))
        return
    for row in rows:
        series = f"{row['signal']} {row['method']}" + (f" ({row['area']})" if row["area"] else "")
        span = f"{row['first']} to {row['last']}" if row["hours"] else "no values"
        mark = row["backfill"]
        backfill = f"; backfill {mark['status']} at {mark['attempted_at']}" if mark else ""
        typer.echo(
            f"{row['zone']}  {series}  {row['provider']}: {row['hours']} h "
            f"({row['estimated_hours']} estimated), {span}{backfill}"
        )
