"""`harchos plan`: evaluate scheduling policies on recorded traces."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Evaluate carbon-aware scheduling on recorded traces.", rich_markup_mode=None
)


@app.command(short_help="Savings of carbon-aware scheduling on a trace.")
def evaluate(
    trace: Path = typer.Argument(
        ..., help="Hourly trace: Electricity Maps export or datetime,carbon_intensity."
    ),
    job_hours: int = typer.Option(..., "--job-hours", min=1, help="Job length L in hours."),
    slack_hours: int = typer.Option(..., "--slack-hours", min=0, help="Slack S in hours."),
    interruptible: bool = typer.Option(
        False, "--interruptible", help="The job may pause and resume (any L hours in the span)."
    ),
    zone: str | None = typer.Option(None, "--zone", help="Grid zone, if the file doesn't say."),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Savings of forecast-driven and persistence-driven scheduling against the oracle."""
    from harchos_cli.carbon.embedded import EmbeddedModel
    from harchos_cli.cli.session import load_trace
    from harchos_cli.plan.evaluate import evaluate as run_evaluate

    result = run_evaluate(
        load_trace(trace, zone),
        EmbeddedModel.load(),
        job_hours=job_hours,
        slack_hours=slack_hours,
        interruptible=interruptible,
    )
    if json_:
        from harchos_cli.cli import output

        output.print_json(result)
    else:
        from harchos_cli.cli import render

        render.print_evaluation(result)
