"""`harchos plan`: evaluate scheduling policies on recorded traces."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Evaluate carbon-aware scheduling on recorded traces.", rich_markup_mode=None
)


@app.command(short_help="Savings of carbon-aware scheduling on traces.")
def evaluate(
    traces: list[Path] = typer.Argument(
        ...,
        help="Hourly trace: Electricity Maps export or datetime,carbon_intensity. Several (one "
        "per hub): choose the hub and the time together.",
    ),
    job_hours: int = typer.Option(..., "--job-hours", min=1, help="Job length L in hours."),
    slack_hours: int = typer.Option(..., "--slack-hours", min=0, help="Slack S in hours."),
    interruptible: bool = typer.Option(
        False, "--interruptible", help="The job may pause and resume (any L hours in the span)."
    ),
    history: str = typer.Option(
        "all",
        "--history",
        help="Actuals the model may see before each forecast: 0h (offline), 24h (a live "
        "provider's day), 168h (a week), or all.",
    ),
    min_saving_percent: float | None = typer.Option(
        None,
        "--min-saving-percent",
        help="The rolling policy's minimum worthwhile saving (default: plan.min_saving_percent).",
    ),
    zone: list[str] | None = typer.Option(
        None, "--zone", help="Grid zone, if the file doesn't say (once per trace, in order)."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Savings of forecast-driven and persistence-driven scheduling against the oracle: chosen
    once at submission (forecast), re-planned every hour as a waiting job is (rolling)."""
    from harchos_cli.carbon.embedded import EmbeddedModel
    from harchos_cli.cli.session import load_trace
    from harchos_cli.errors import UsageError
    from harchos_cli.plan import evaluate as scoring

    zones = list(zone or [])
    if zones and len(zones) != len(traces):
        raise UsageError(
            f"{len(zones)} --zone for {len(traces)} traces",
            hint="give --zone once per trace, in the same order, or not at all",
        )
    history_hours = scoring.parse_history(history)
    min_saving = _min_saving(min_saving_percent)
    loaded = [load_trace(path, zones[i] if zones else None) for i, path in enumerate(traces)]
    model = EmbeddedModel.load()
    if len(loaded) > 1:
        if interruptible:
            raise UsageError(
                "--interruptible is scored on one trace at a time",
                hint="give one trace, or drop --interruptible to score the hub and time together",
            )
        result = scoring.evaluate_spatial(
            loaded, model, job_hours, slack_hours, history_hours=history_hours,
            min_saving=min_saving,
        )  # fmt: skip
    else:
        result = scoring.evaluate(
            loaded[0], model, job_hours, slack_hours, interruptible,
            history_hours=history_hours, min_saving=min_saving,
        )  # fmt: skip
    if json_:
        from harchos_cli.cli import output

        output.print_json(result)
    else:
        from harchos_cli.cli import render

        render.print_evaluation(result)


def _min_saving(percent: float | None) -> float:
    import math

    from harchos_cli.errors import UsageError

    if percent is None:
        from harchos_cli.config import Config

        percent = float(Config.load({}).get("plan.min_saving_percent") or 0.0)
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise UsageError(
            f"minimum saving {percent:g} % is not a percentage", hint="a number from 0 to 100"
        )
    return percent / 100.0
