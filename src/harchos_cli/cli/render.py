"""Output for people (rich tables and a terminal chart) and for programs (JSON, CSV).

Imported only inside command bodies, so rich never loads for `--help`.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harchos_cli.carbon.outlook import UNIT, Outlook, RegionOutlook
from harchos_cli.carbon.types import Point, Region, Source
from harchos_cli.carbon.windows import saving_text
from harchos_cli.cli.output import warn, warn_all
from harchos_cli.config import Config
from harchos_cli.timeparse import format_duration, iso

stdout = Console(highlight=False)


def local(moment: datetime, fmt: str = "%a %d %b %H:%M") -> str:
    """Times are UTC inside; people see their local time, with the year when it is not this
    year's (a replayed trace, a far deadline)."""
    here = moment.astimezone()
    if "%b" in fmt and here.year != datetime.now().astimezone().year:
        fmt = fmt.replace("%b", "%b %Y")
    return here.strftime(fmt)


def describe_source(source: Source) -> str:
    parts = [source.provider]
    if source.model:
        parts.append(source.model)
    parts.append(f"{source.signal} intensity ({source.method})")
    parts.append(source.kind)
    text = ", ".join(parts)
    return f"{text}; {source.detail}" if source.detail else text


def print_regions(entries: Sequence[Region]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("name", "zone", "display name", "kind", "providers"):
        table.add_column(column)
    for r in entries:
        table.add_row(r.name, r.zone, r.display_name, r.kind, ", ".join(r.providers))
    stdout.print(table)


def print_region(region: Region) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in region.as_json().items():
        if value in (None, "", []):
            continue
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    stdout.print(table)


def _kg(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} kg"


def _money(value: float | None) -> str:
    return "no price" if value is None else f"{value:.2f}"


def plan_choice_lines(plan: dict[str, Any]) -> list[str]:
    """Why the plan's hub won, and the other hubs' best options (`--hub auto`; empty when there
    was one hub to choose from): the text form of the plan's `alternatives`."""
    alternatives = plan.get("alternatives") or []
    if not alternatives:
        return []
    hub, objective = plan.get("hub"), plan.get("objective") or "carbon"
    if str(plan.get("reason")).startswith("under threshold"):
        why = f"hub {hub} won: the earliest start under the threshold"
    elif objective == "cost":
        nearest = min(
            alternatives, key=lambda alt: math.inf if alt["cost"] is None else alt["cost"]
        )
        why = (f"hub {hub} won on cost: {_money(plan.get('cost'))}, against "
               f"{_money(nearest['cost'])} on hub {nearest['hub']}")  # fmt: skip
    elif objective == "balanced":
        why = f"hub {hub} won on cost plus priced carbon ({_kg(plan.get('emissions_kg'))}, cost " \
              f"{_money(plan.get('cost'))})"  # fmt: skip
    else:

        def emitted(alt: dict[str, Any]) -> float:
            return math.inf if alt["emissions_kg"] is None else float(alt["emissions_kg"])

        nearest = min(alternatives, key=emitted)
        why = (f"hub {hub} won on carbon: {_kg(plan.get('emissions_kg'))} CO2eq expected, "
               f"against {_kg(nearest['emissions_kg'])} on hub {nearest['hub']}")  # fmt: skip
    others = sorted({f"{name} would choose hub {choice}"
                     for name, choice in (plan.get("by_objective") or {}).items()
                     if choice and choice != hub and name != objective})  # fmt: skip
    if others:
        why += f" ({'; '.join(others)})"
    lines = [f"why: {why}", "other hubs (best start on each):"]
    width = max(len(str(alt["hub"])) for alt in alternatives)
    for alt in alternatives:
        intensity = alt.get("expected_intensity")
        shown = "no data" if intensity is None else f"{intensity:g} gCO2eq/kWh"
        queue = str(alt.get("reason") or "").partition(" (Slurm's queue")[1:]
        lines.append(f"  {alt['hub']:<{width}}  start {alt['start']}, {shown}, "
                     f"{_kg(alt['emissions_kg'])}, cost {_money(alt['cost'])}"
                     + ("".join(queue) if queue[0] else ""))  # fmt: skip
    return lines


def print_config(config: Config) -> None:
    for message in config.warnings:
        warn(message)
    stdout.print(f"user config: {config.user_file}")
    stdout.print(f"project file: {config.project_file or '(none)'}")
    columns = ("setting", "value", "from", "environment variable")
    rows = [
        (row["key"], "" if row["value"] is None else str(row["value"]), row["origin"], row["env"])
        for row in config.describe()
    ]
    needed = sum(max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True))
    needed += 2 * (len(columns) - 1)
    # Keys and variable names are copied from here: never cut them. Piped output is read by
    # programs (as wide as it needs); a terminal too narrow for the table gets one setting a
    # block, its variable on the line under it.
    if stdout.is_terminal and stdout.width < needed:
        for key, value, origin, env in rows:
            shown = f" = {value}" if value else " (unset)"
            stdout.print(Text.assemble((key, "bold"), f"{shown}  ({origin})"))
            stdout.print(Text(f"  {env}", style="dim"), no_wrap=True, crop=False)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column != "value")
    for row_cells in rows:
        table.add_row(*row_cells)
    console = stdout if stdout.is_terminal else Console(highlight=False, width=max(needed, 20))
    console.print(table)


def _chart(
    points: Sequence[Point], best: tuple[datetime, datetime] | None, height: int = 10
) -> Text:
    """One column per point: `█` at the forecast, `░` across its P10–P90 band, best window green."""
    if not points:
        return Text("")
    bottom = min(p.low for p in points)
    top = max(p.high for p in points)
    step = (top - bottom) / height or 1.0

    def row_of(value: float) -> int:
        return min(height - 1, int((value - bottom) / step))

    text = Text()
    for row in range(height - 1, -1, -1):
        if row in (height - 1, 0):
            label = f"{bottom + (row + (1 if row else 0)) * step:7.0f} ┤"
        else:
            label = "        │"
        text.append(label, style="dim")
        for p in points:
            in_best = best is not None and best[0] <= p.start < best[1]
            if row == row_of(p.intensity):
                text.append("█", style="green" if in_best else "cyan")
            elif row_of(p.low) <= row <= row_of(p.high):
                text.append("░", style="green" if in_best else "grey50")
            else:
                text.append(" ")
        text.append("\n")
    ticks = "".join("┬" if p.start.astimezone().hour % 6 == 0 else "─" for p in points)
    text.append(f"        └{ticks}\n", style="dim")
    labels = [" "] * len(points)
    for i, p in enumerate(points):
        stamp = p.start.astimezone()
        if stamp.hour % 6 == 0 and i + 5 <= len(points):
            tag = stamp.strftime("%a") if stamp.hour == 0 else f"{stamp.hour:02d}h"
            labels[i : i + len(tag)] = list(tag)
    text.append("         " + "".join(labels) + "\n", style="dim")
    if best is not None:
        text.append("         █ forecast  ░ P10–P90  green: greenest window\n", style="dim")
    return text


def print_outlook(outlook: Outlook, *, plot: bool, explain: bool = False) -> None:
    warn_all(outlook.all_warnings())
    for item in outlook.regions:
        _print_region_outlook(outlook, item, plot=plot)
        if explain:
            _print_explain(item)
    if len(outlook.regions) > 1:
        _print_ranking(outlook)


def _print_region_outlook(outlook: Outlook, item: RegionOutlook, *, plot: bool) -> None:
    forecast = item.forecast
    region = forecast.region
    stdout.print(
        Text.assemble(
            (f"{region.name}", "bold"),
            f" → {region.zone} ({region.display_name})",
        )
    )
    stdout.print(Text(f"source: {describe_source(forecast.source)}", style="dim"))
    if forecast.history:
        stdout.print(
            Text(f"history: {len(forecast.history)} h from {forecast.history_source}", style="dim")
        )
    if forecast.comparison:
        stdout.print(
            Text(
                f"using {forecast.source.provider}'s own forecast; harchos's model on the same "
                f"history differs by {forecast.comparison.relative_diff:.0%} on average",
                style="dim",
            )
        )
    best = item.best
    span = (best.best.start, best.best.end) if best else None
    if plot:
        stdout.print(_chart(item.shown, span))
    table = Table(box=None, header_style="bold", title_justify="left")
    table.add_column("local time")
    table.add_column(UNIT, justify="right")
    table.add_column("P10–P90", justify="right")
    table.add_column("")
    for p in item.shown:
        marks = []
        if span and span[0] <= p.start < span[1]:
            marks.append("best window")
        if outlook.threshold is not None and p.intensity < outlook.threshold:
            marks.append("under threshold")
        style = "green" if span and span[0] <= p.start < span[1] else None
        table.add_row(
            local(p.start),
            f"{p.intensity:.0f}",
            f"{p.low:.0f}–{p.high:.0f}",
            ", ".join(marks),
            style=style,
        )
    stdout.print(table)
    if best is not None:
        stdout.print(
            Text.assemble(
                ("Greenest start", "bold"),
                f" for a {format_duration(outlook.duration)} job finishing by "
                f"{local(outlook.deadline)}: ",
                (f"{local(best.best.start)} → {local(best.best.end, '%H:%M')}", "bold green"),
                f", mean {best.best.mean_intensity:.0f} {UNIT}\n"
                f"  {saving_text(best.saving_vs_now, item.spread)} less than "
                + (
                    "starting now"
                    if best.now_is_now
                    else f"the first window the data allow, at {local(best.now.start)},"
                )
                + f" ({best.now.mean_intensity:.0f}), "
                f"{saving_text(best.saving_vs_median, item.spread)} less than the "
                f"median window ({best.median_intensity:.0f})",
            )
        )
    elif item.error:
        warn(f"{region.name}: {item.error}")
    if item.below is not None:
        if item.below:
            stdout.print(f"Under {outlook.threshold:g} {UNIT}:")
            for window in item.below:
                stdout.print(
                    f"  {local(window.start)} → {local(window.end)}  "
                    f"mean {window.mean_intensity:.0f}"
                )
        else:
            stdout.print(f"No period under {outlook.threshold:g} {UNIT} in the forecast.")
    stdout.print()


def _print_explain(item: RegionOutlook) -> None:
    from harchos_cli.carbon.outlook import explain

    details = explain(item.forecast)
    stdout.print(Text("How this forecast was made", style="bold"))
    stdout.print(f"  source: {details['method']}")
    model = details if details["used"] == "embedded" else details.get("embedded_on_same_history")
    if model:
        if details["used"] != "embedded":
            stdout.print(f"  compared with: {model['model']}")
        else:
            stdout.print(f"  model: {model['model']}")
        fit = model["fit"]
        stdout.print(
            f"  fitted on {fit['hours']:,} hours, {fit['start'][:10]} to {fit['end'][:10]} "
            f"({len(fit['sources'])} trace files)"
        )
        stdout.print(f"  history: {model['history']['description']}")
        backtest = model.get("backtest")
        if backtest:
            stdout.print(
                f"  {backtest['kind']} backtest for {item.forecast.region.zone} "
                f"({backtest['period'].replace('/', ' to ')}): day-ahead MAPE "
                f"{backtest['mape']:.1%} (same-hour-yesterday {backtest['persistence_mape']:.1%}),"
                f" P10–P90 band covered {backtest['coverage']:.0%} of actual values"
            )
    stdout.print()


def _print_ranking(outlook: Outlook) -> None:
    table = Table(title="Where and when (greenest first)", box=None, header_style="bold")
    for column in ("#", "region", "zone", "signal", "start", "mean", "vs now"):
        table.add_column(column)
    for rank, item in enumerate(outlook.ranking(), start=1):
        assert item.best is not None
        table.add_row(
            str(rank),
            item.forecast.region.name,
            item.forecast.region.zone,
            item.forecast.source.signal,
            local(item.best.best.start),
            f"{item.best.best.mean_intensity:.0f}",
            saving_text(item.best.saving_vs_now, item.spread),
        )
    stdout.print(table)


def print_outlook_csv(outlook: Outlook) -> None:
    warn_all(outlook.all_warnings())
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(
        ["region", "zone", "provider", "signal", "start", "end", "intensity", "low", "high"]
    )
    for item in outlook.regions:
        source = item.forecast.source
        for p in item.shown_points:  # the data at its own resolution, as --json gives it
            writer.writerow(
                [
                    item.forecast.region.name,
                    item.forecast.region.zone,
                    source.provider,
                    source.signal,
                    iso(p.start),
                    iso(p.end),
                    f"{p.intensity:.2f}",
                    f"{p.low:.2f}",
                    f"{p.high:.2f}",
                ]
            )


def percent(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def _metric_table(rows: Iterable[tuple[str, ...]], columns: Sequence[str]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*row)
    return table


def print_backtest(result: dict[str, Any]) -> None:
    period = result.get("period") or {}
    span = f", {period['start'][:10]} to {period['end'][:10]}" if period else ""
    stdout.print(
        f"[bold]{result['zone']}[/]: {result['origins']} forecasts of {result['horizon_hours']} h"
        f"{span}"
    )
    seen = _history_seen(result.get("history_hours"))
    stdout.print(f"the model sees {seen} before each forecast")
    base = result["baseline"]["persistence_24h"]
    rows = [
        ("harchos embedded", percent(result["mape"], 1), f"{result['mae']:.1f}"),
        ("persistence 24 h", percent(base["mape"], 1), f"{base['mae']:.1f}"),
    ]
    stdout.print(_metric_table(rows, ("forecaster", "MAPE", f"MAE ({UNIT})")))
    if "coverage" in result:
        stdout.print(f"P10–P90 band covers {result['coverage']:.1%} of actual values")
    if result.get("fit_overlap"):
        warn("the model was fitted on data from this period: these scores are in-sample")


def _history_seen(hours: int | None) -> str:
    return "all the history" if hours is None else f"{hours} h of history"


def print_evaluation(result: dict[str, Any]) -> None:
    kind = "interruptible" if result["interruptible"] else "non-interruptible"
    seen = _history_seen(result.get("history_hours"))
    where = result["zone"] if "zones" not in result else " + ".join(result["hubs"])
    stdout.print(
        f"[bold]{where}[/]: {result['jobs']} {kind} jobs of {result['job_hours']} h "
        f"with {result['slack_hours']} h slack; the model sees {seen}"
    )
    saving, share = result["saving"], result["share_of_oracle"]
    names = {
        "forecast": "harchos forecast, once",
        "rolling": "harchos, re-planned hourly",
        "persistence": "persistence 24 h",
    }
    first = result.get("first_hub")
    rows: list[tuple[str, ...]] = [
        ("oracle (knows the future)", percent(saving["oracle"], 1), "100%")
    ]
    rows += [
        (label, percent(saving[name], 1), percent(share[name], 0))
        for name, label in names.items()
        if name in saving
    ]
    headers: tuple[str, ...] = ("policy", "saving vs run now", "share of oracle")
    if first is not None:
        rows = [
            (*row, percent(first["saving"][name], 1))
            for row, name in zip(rows, ("oracle", *[n for n in names if n in saving]), strict=True)
        ]
        headers = (*headers, f"on {first['zone']} alone")
    stdout.print(_metric_table(rows, headers))
    if first is not None:
        chosen = result["chosen_hub"]["rolling"]
        stdout.print(
            "re-planned hourly, jobs ran on: "
            + ", ".join(f"{hub} {percent(part, 0)}" for hub, part in chosen.items())
        )
    if result.get("fit_overlap"):
        warn("the model was fitted on data from this period: these scores are in-sample")
