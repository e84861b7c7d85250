"""The report for people: a table per job and one for the total.

Every number carries its unit and its source, abbreviated (`meas` measured, `est` estimated, ...,
the key printed under the tables). rich is imported inside the functions: `harchos --help` loads
only the command module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harchos_cli.meter.model import Figure, Ledger
from harchos_cli.report.summary import Report, Total, amount
from harchos_cli.timeparse import iso

SOURCE_ABBREVIATIONS = {
    "measured": "meas",
    "estimated": "est",
    "forecast": "fcst",
    "replayed": "replay",
    "configured": "config",
    "mixed": "mixed",
    "unpriced": "unpriced",
    "unknown": "?",
}


def value_text(figure: Figure, unit: str) -> str:
    return "n/a" if figure.value is None else amount(figure.value, unit)


def source_text(figure: Figure) -> str:
    return SOURCE_ABBREVIATIONS.get(figure.source, figure.source)


def decisions_text(actions: Sequence[str]) -> str:
    """`3: wait, pause, migrate`; repeated actions counted (`pause×2`)."""
    if not actions:
        return "none"
    counts: dict[str, int] = {}
    for action in actions:
        counts[action] = counts.get(action, 0) + 1
    kinds = ", ".join(a if n == 1 else f"{a}×{n}" for a, n in counts.items())
    return f"{len(actions)}: {kinds}"


Row = tuple[str, str, str, str]


def _row(label: str, figure: Figure, unit: str, *, extra: str = "") -> Row:
    value = value_text(figure, unit) + (f" ({extra})" if extra and figure.value is not None else "")
    return (label, value, source_text(figure), figure.detail)


def _saving_percent(percent: float | None) -> str:
    return "" if percent is None else f"{percent:.0f}%"


def job_rows(ledger: Ledger) -> list[Row]:
    at_once = ledger.counterfactual
    where = f"on {at_once.hub} " if at_once.hub else ""
    rows = [
        _row("energy", ledger.energy_kwh, "kWh"),
        _row("average power", ledger.average_power_w, "W"),
        _row("emissions", ledger.emissions_kg, "kg CO2e"),
        (
            *_row("run at once", at_once.emissions_kg, "kg CO2e")[:3],
            at_once.emissions_kg.detail or f"{where}from {iso(at_once.start)}",
        ),
        _row(
            "saving",
            ledger.saving_emissions_kg,
            "kg CO2e",
            extra=_saving_percent(ledger.saving_percent),
        ),
        _row("cost", ledger.cost, ledger.currency or ""),
        _row("cost saving", ledger.saving_cost, ledger.currency or ""),
    ]
    actions = [str(decision.get("action", "?")) for decision in ledger.decisions]
    rows.append(("decisions", decisions_text(actions), "", ""))
    return rows


def total_rows(total: Total) -> list[Row]:
    rows = [
        _row("energy", total.energy_kwh, "kWh"),
        _row("emissions", total.emissions_kg, "kg CO2e"),
        _row("run at once", total.counterfactual_emissions_kg, "kg CO2e"),
        _row(
            "saving",
            total.saving_emissions_kg,
            "kg CO2e",
            extra=_saving_percent(total.saving_percent),
        ),
    ]
    for code, figure in total.cost.items():
        rows.append(_row(f"cost ({code})", figure, code))
    for code, figure in total.saving_cost.items():
        rows.append(_row(f"cost saving ({code})", figure, code))
    if total.unpriced_jobs:
        rows.append(("no price", ", ".join(total.unpriced_jobs), "", ""))
    actions = [action for action, n in total.decisions.items() for _ in range(n)]
    rows.append(("decisions", decisions_text(actions), "", ""))
    return rows


def _table(title: str, rows: Sequence[Row]) -> Any:
    from rich.table import Table
    from rich.text import Text

    # Text, not str: job and hub names are the user's, and must not be read as rich markup.
    table = Table(
        title=Text(title, style="bold"),
        title_justify="left",
        box=None,
        show_header=False,
        pad_edge=False,
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(style="dim", overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_report(report: Report) -> None:
    """The tables on stdout; each job's warnings on stderr."""
    from rich.console import Console
    from rich.text import Text

    from harchos_cli.cli.output import warn

    for ledger in report.ledgers:
        for message in ledger.warnings:
            warn(f"{ledger.job_id}: {message}")
    console = Console(highlight=False)
    if not report.ledgers:
        console.print("no jobs to report" + (" in that period" if report.since else ""))
        return
    for ledger in report.ledgers:
        title = (
            f"{ledger.job_id}  {ledger.name}  ({ledger.kind}, {ledger.state}; "
            f"hubs: {', '.join(ledger.hubs) or 'none'})"
        )
        console.print(_table(title, job_rows(ledger)))
        console.print()
    jobs = report.total.jobs
    console.print(
        _table(f"total over {jobs} job{'' if jobs == 1 else 's'}", total_rows(report.total))
    )
    used = sorted(_sources(report), key=list(SOURCE_ABBREVIATIONS).index)
    key = ", ".join(
        f"{SOURCE_ABBREVIATIONS[s]} = {s}" for s in used if SOURCE_ABBREVIATIONS[s] != s
    )
    note = "run at once: the same energy at submission, on the submission hub; saving = run at "
    note += "once - emissions." + (f" Sources: {key}" if key else "")
    console.print(Text(note, style="dim"))


def _sources(report: Report) -> set[str]:
    figures: list[Figure] = []
    for ledger in report.ledgers:
        figures += [
            ledger.energy_kwh,
            ledger.average_power_w,
            ledger.emissions_kg,
            ledger.counterfactual.emissions_kg,
            ledger.saving_emissions_kg,
            ledger.cost,
            ledger.saving_cost,
        ]
    total = report.total
    figures += [
        total.energy_kwh,
        total.emissions_kg,
        total.counterfactual_emissions_kg,
        total.saving_emissions_kg,
        *total.cost.values(),
        *total.saving_cost.values(),
    ]
    return {figure.source for figure in figures if figure.source in SOURCE_ABBREVIATIONS}
