"""Totals over jobs' ledgers, and the `harchos report --json` document (docs/report.md).

A total never invents a number: a job's figure that is None (no price, no intensity) is left out
of the sum, and the total says so (source `mixed`, detail naming the jobs that lacked it). Costs
are totalled per currency and never added across currencies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from harchos_cli.meter.model import Figure, FigureSource, Ledger
from harchos_cli.timeparse import iso


@dataclass(frozen=True)
class Total:
    """The sums over a report's jobs, each with the source it was made from."""

    jobs: int
    energy_kwh: Figure
    emissions_kg: Figure
    counterfactual_emissions_kg: Figure
    saving_emissions_kg: Figure
    saving_percent: float | None
    cost: dict[str, Figure] = field(default_factory=dict)
    saving_cost: dict[str, Figure] = field(default_factory=dict)
    unpriced_jobs: tuple[str, ...] = ()
    decisions: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        percent = self.saving_percent
        return {
            "jobs": self.jobs,
            "energy_kwh": self.energy_kwh.as_json(),
            "emissions_kg": self.emissions_kg.as_json(),
            "counterfactual_emissions_kg": self.counterfactual_emissions_kg.as_json(),
            "saving": {
                "emissions_kg": self.saving_emissions_kg.as_json(),
                "percent": None if percent is None else round(percent, 2),
                "cost": {code: figure.as_json() for code, figure in self.saving_cost.items()},
            },
            "cost": {code: figure.as_json() for code, figure in self.cost.items()},
            "unpriced_jobs": list(self.unpriced_jobs),
            "decisions": dict(self.decisions),
        }


@dataclass(frozen=True)
class Report:
    """What `harchos report` shows: the jobs' ledgers and their total."""

    since: datetime | None
    ledgers: tuple[Ledger, ...]
    total: Total

    def as_json(self) -> dict[str, Any]:
        return {
            "since": iso(self.since) if self.since else None,
            "jobs": [ledger.as_json() for ledger in self.ledgers],
            "total": self.total.as_json(),
        }


def build_report(ledgers: Sequence[Ledger], since: datetime | None = None) -> Report:
    return Report(since=since, ledgers=tuple(ledgers), total=total(ledgers))


def total(ledgers: Sequence[Ledger]) -> Total:
    """Sum `ledgers`' figures; costs and cost savings per currency."""
    cost: dict[str, list[tuple[str, Figure]]] = {}
    saving_cost: dict[str, list[tuple[str, Figure]]] = {}
    unpriced: list[str] = []
    for ledger in ledgers:
        if ledger.currency is None or ledger.cost.value is None:
            unpriced.append(ledger.job_id)
            continue
        cost.setdefault(ledger.currency, []).append((ledger.job_id, ledger.cost))
        saving_cost.setdefault(ledger.currency, []).append((ledger.job_id, ledger.saving_cost))
    decisions = Counter(
        str(decision.get("action", "?")) for ledger in ledgers for decision in ledger.decisions
    )
    return Total(
        jobs=len(ledgers),
        energy_kwh=sum_figures([(ledger.job_id, ledger.energy_kwh) for ledger in ledgers]),
        emissions_kg=sum_figures([(ledger.job_id, ledger.emissions_kg) for ledger in ledgers]),
        counterfactual_emissions_kg=sum_figures(
            [(ledger.job_id, ledger.counterfactual.emissions_kg) for ledger in ledgers]
        ),
        saving_emissions_kg=sum_figures(
            [(ledger.job_id, ledger.saving_emissions_kg) for ledger in ledgers]
        ),
        saving_percent=_saving_percent(ledgers),
        cost={code: sum_figures(figures) for code, figures in sorted(cost.items())},
        saving_cost={code: sum_figures(figures) for code, figures in sorted(saving_cost.items())},
        unpriced_jobs=tuple(unpriced),
        decisions=dict(sorted(decisions.items())),
    )


def sum_figures(figures: Sequence[tuple[str, Figure]]) -> Figure:
    """The sum of the `(job_id, figure)`s that have a value.

    Its source is theirs when they share one and none was left out, else `mixed`; the detail
    says which sources went in and which jobs had no value. None when no figure had a value.
    """
    if not figures:
        return Figure(None, "unknown", "no jobs")
    known = [(job_id, figure) for job_id, figure in figures if figure.value is not None]
    lacking = [job_id for job_id, figure in figures if figure.value is None]
    if not known:
        sources = {figure.source for _, figure in figures}
        source: FigureSource = sources.pop() if len(sources) == 1 else "unknown"
        return Figure(None, source, f"no value for {_jobs(lacking)}")
    value = sum(figure.value for _, figure in known if figure.value is not None)
    counts = Counter(figure.source for _, figure in known)
    if len(counts) == 1 and not lacking:
        only = next(iter(counts))
        details = {figure.detail for _, figure in known}
        detail = details.pop() if len(details) == 1 else ""
        return Figure(value, only, detail)
    parts = [f"{name} ({count} {_plural(count, 'job')})" for name, count in sorted(counts.items())]
    detail = "sum of " + ", ".join(parts)
    if lacking:
        detail += f"; no value for {_jobs(lacking)}, left out"
    return Figure(value, "mixed", detail)


def _saving_percent(ledgers: Sequence[Ledger]) -> float | None:
    """The saving against the counterfactual's emissions, over the jobs that have both (a job
    without one would skew the ratio)."""
    saved = base = 0.0
    for ledger in ledgers:
        job_saving = ledger.saving_emissions_kg.value
        job_base = ledger.counterfactual.emissions_kg.value
        if job_saving is None or job_base is None:
            continue
        saved += job_saving
        base += job_base
    return 100.0 * saved / base if base > 0 else None


def _jobs(job_ids: Sequence[str]) -> str:
    return f"{_plural(len(job_ids), 'job')} " + ", ".join(job_ids)


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def amount(value: float, unit: str) -> str:
    """`value` with as many digits as a person needs, and its unit."""
    size = abs(value)
    if size == 0:
        text = "0"
    elif size >= 100:
        text = f"{value:,.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 0.01:
        text = f"{value:.2f}"
    else:
        text = f"{value:.2g}"
    return f"{text} {unit}".strip()
