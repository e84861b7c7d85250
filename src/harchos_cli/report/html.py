"""The report as one self-contained HTML page: inline CSS and inline SVG charts drawn here.

No script, no font, no image is fetched: the page opens offline, and its Content-Security-Policy
forbids anything else, so a job or hub name (user input, always escaped) cannot run code.

Charts carry stable classes for tests and readers: `svg.chart.intensity` (one `polyline.hub-line`
per hub, `rect.band.{running,paused,waiting}` per period, `line.decision` per dated decision) and
`svg.chart.cumulative` (`polyline.cumulative.actual` and `polyline.cumulative.counterfactual`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from pathlib import Path

from harchos_cli.errors import UsageError
from harchos_cli.meter.model import Figure, IntensityPoint, Interval, Ledger
from harchos_cli.paths import PRIVATE_FILE
from harchos_cli.report.summary import Report, Total, amount
from harchos_cli.timeparse import as_utc, iso, parse_instant

HUB_COLOURS = ("#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PERIOD_COLOURS = {"running": "#2ca02c", "paused": "#ff7f0e", "waiting": "#7f7f7f"}
PERIOD_LABELS = {"running": "running", "paused": "paused", "waiting": "waiting to start"}
HOUR = timedelta(hours=1)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  margin: 2rem auto; max-width: 62rem; padding: 0 1rem; background: #fff; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem;
  border-top: 1px solid #ddd; padding-top: 1rem; } h3 { font-size: 1rem; margin-bottom: .3rem; }
.meta, .note, .detail { color: #666; } .note { font-style: italic; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { text-align: left; padding: .2rem .8rem .2rem 0; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.source { display: inline-block; font-size: .8em; padding: 0 .35em; border-radius: .3em;
  background: #eef; color: #335; }
.source.mixed, .source.unknown, .source.unpriced { background: #fee; color: #733; }
svg.chart { display: block; width: 100%; height: auto; max-width: 760px; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #444; }
svg.chart .axis { stroke: #999; stroke-width: 1; } svg.chart .grid { stroke: #eee; }
svg.chart .hub-line, svg.chart .cumulative { fill: none; stroke-width: 2; }
svg.chart .cumulative.counterfactual { stroke-dasharray: 6 4; }
svg.chart .decision { stroke: #333; stroke-dasharray: 2 3; }
ul.legend { list-style: none; padding: 0; margin: .3rem 0 1rem; display: flex; flex-wrap: wrap;
  gap: .3rem 1.2rem; font-size: .9em; }
.swatch { display: inline-block; width: 1.6em; height: .8em; margin-right: .4em;
  vertical-align: middle; }
.swatch.line { height: 3px; } .swatch.dashed { background: none !important;
  border-top: 3px dashed; height: 0; }
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render(report: Report, *, generated_at: datetime) -> str:
    """The whole page as text."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>harchos report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>harchos report: energy, emissions and cost</h1>",
        f'<p class="meta">Generated {_e(iso(generated_at))}'
        + (f"; jobs submitted since {_e(iso(report.since))}" if report.since else "")
        + ". Times are UTC. Each figure shows its source: measured (a meter read it, or a grid "
        "operator measured the hour's intensity), estimated (a stated assumption, or an intensity "
        "the provider estimated), forecast, replayed (a recorded trace), configured (a price), or "
        "mixed (a sum of several).</p>",
        '<section id="total"><h2>Total</h2>',
        _total_table(report.total),
        "</section>",
    ]
    if not report.ledgers:
        parts.append('<p class="note">No jobs in this report.</p>')
    for index, ledger in enumerate(report.ledgers):
        parts.append(_job_section(ledger, index))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a reader sees the old file or the new, whole one), mode
    0600: the report names jobs, hubs and their costs.

    Raises:
        UsageError: the folder is missing or cannot be written (exit 2).
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, PRIVATE_FILE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _unwritable(path, exc) from None


def check_writable(path: Path) -> None:
    """Fail early (before the ledgers are built) when `path` cannot be the report's file."""
    folder = path.parent
    if path.is_dir():
        raise UsageError(
            f"cannot write the report to {path}: it is a folder",
            hint="give a file name, e.g. --html report.html",
        )
    if not folder.is_dir():
        raise UsageError(
            f"cannot write the report to {path}: no folder {folder}",
            hint="create the folder first, or give another path",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write the report to {path}: {folder} is not writable",
            hint="give a path in a folder you can write",
        )


def _unwritable(path: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot write the report to {path}: {exc.strerror or exc}",
        hint="give a path in a folder you can write",
    )


def _e(text: object) -> str:
    return escape(str(text), quote=True)


# Tables


def _figure_cells(figure: Figure, unit: str) -> str:
    value = "n/a" if figure.value is None else amount(figure.value, unit)
    detail = f'<span class="detail">{_e(figure.detail)}</span>' if figure.detail else ""
    return (
        f'<td class="num">{_e(value)}</td>'
        f'<td><span class="source {_e(figure.source)}">{_e(figure.source)}</span></td>'
        f"<td>{detail}</td>"
    )


def _percent(value: float | None) -> str:
    return "" if value is None else f" ({value:.1f} %)"


def _total_table(total: Total) -> str:
    rows = [
        ("Jobs", f'<td class="num">{total.jobs}</td><td></td><td></td>'),
        ("Energy", _figure_cells(total.energy_kwh, "kWh")),
        ("Emissions", _figure_cells(total.emissions_kg, "kg CO₂e")),
        (
            "Run at once, it would have emitted",
            _figure_cells(total.counterfactual_emissions_kg, "kg CO₂e"),
        ),
        (
            "Saving" + _percent(total.saving_percent),
            _figure_cells(total.saving_emissions_kg, "kg CO₂e"),
        ),
    ]
    for code, figure in total.cost.items():
        rows.append((f"Cost ({code})", _figure_cells(figure, code)))
    for code, figure in total.saving_cost.items():
        rows.append((f"Cost saving ({code})", _figure_cells(figure, code)))
    if total.unpriced_jobs:
        names = ", ".join(total.unpriced_jobs)
        rows.append(("No price", f'<td colspan="3" class="detail">{_e(names)}</td>'))
    decisions = ", ".join(f"{action} × {count}" for action, count in total.decisions.items())
    rows.append(("Decisions", f'<td colspan="3">{_e(decisions or "none")}</td>'))
    return _table(rows, 'class="figures total"')


def _table(rows: Iterable[tuple[str, str]], attributes: str) -> str:
    body = "".join(f"<tr><th>{_e(label)}</th>{cells}</tr>" for label, cells in rows)
    return f"<table {attributes}><tbody>{body}</tbody></table>"


def _job_table(ledger: Ledger) -> str:
    currency = ledger.currency or ""
    rows = [
        ("Energy", _figure_cells(ledger.energy_kwh, "kWh")),
        ("Average power", _figure_cells(ledger.average_power_w, "W")),
        ("Emissions", _figure_cells(ledger.emissions_kg, "kg CO₂e")),
        (
            "Run at once, it would have emitted",
            _figure_cells(ledger.counterfactual.emissions_kg, "kg CO₂e"),
        ),
        (
            "Saving" + _percent(ledger.saving_percent),
            _figure_cells(ledger.saving_emissions_kg, "kg CO₂e"),
        ),
        ("Cost", _figure_cells(ledger.cost, currency)),
        ("Cost saving", _figure_cells(ledger.saving_cost, currency)),
    ]
    return _table(rows, 'class="figures job"')


def _job_section(ledger: Ledger, index: int) -> str:
    at_once = ledger.counterfactual
    where = f" on {at_once.hub}" if at_once.hub else ""
    lines = [
        f'<section class="job" id="job-{index}"><h2>{_e(ledger.name)} '
        f'<span class="meta">({_e(ledger.job_id)})</span></h2>',
        f'<p class="meta">{_e(ledger.kind)}, {_e(ledger.state)}; hubs: '
        f"{_e(', '.join(ledger.hubs) or 'none')}; submitted {_e(iso(ledger.submitted_at))}; "
        f"the counterfactual runs the same energy at once from {_e(iso(at_once.start))}"
        f"{_e(where)}.</p>",
        _job_table(ledger),
        "<h3>Grid intensity on the job's hubs</h3>",
        _intensity_chart(ledger, index),
        "<h3>Cumulative emissions, actual and if run at once</h3>",
        _cumulative_chart(ledger, index),
        "<h3>Decisions</h3>",
        _decisions(ledger),
    ]
    if ledger.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in ledger.warnings)
        lines.append(f'<h3>Warnings</h3><ul class="warnings">{items}</ul>')
    lines.append("</section>")
    return "\n".join(lines)


def _decisions(ledger: Ledger) -> str:
    if not ledger.decisions:
        return '<p class="note">No decisions recorded.</p>'
    items = []
    for decision in ledger.decisions:
        hub = decision.get("hub")
        where = f" [{hub}]" if hub else ""
        items.append(
            f"<li><time>{_e(decision.get('at', ''))}</time> <b>{_e(decision.get('action', ''))}"
            f"</b>{_e(where)}: {_e(decision.get('reason', ''))}</li>"
        )
    return f'<ul class="decisions">{"".join(items)}</ul>'


# Charts


@dataclass(frozen=True)
class _Frame:
    """Maps time and value onto the SVG's pixels."""

    start: datetime
    end: datetime
    top: float
    width: int = 760
    height: int = 260
    left: int = 64
    right: int = 16
    upper: int = 14
    lower: int = 30

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        share = (as_utc(moment) - self.start).total_seconds() / span
        return self.left + min(1.0, max(0.0, share)) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        share = min(1.0, max(0.0, value / self.top))
        return self.upper + (1.0 - share) * (self.height - self.upper - self.lower)

    @property
    def bottom(self) -> float:
        return float(self.height - self.lower)


def _frame(moments: Sequence[datetime], top: float) -> _Frame:
    start = min(as_utc(m) for m in moments)
    end = max(as_utc(m) for m in moments)
    if end <= start:
        end = start + HOUR
    return _Frame(start=start, end=end, top=_nice_top(top))


def _nice_top(value: float) -> float:
    """The axis' top: the next of 1, 2, 2.5, 5 × 10^n at or above `value` (1 when it is 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return 10.0 * magnitude


def _axes(frame: _Frame, unit: str) -> list[str]:
    out = []
    for i in range(5):
        value = frame.top * i / 4
        y = frame.y(value)
        out.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(_tick_value(value))}</text>"
        )
    out.append(f'<text class="unit" x="4" y="{frame.upper - 4}">{_e(unit)}</text>')
    for moment in _time_ticks(frame.start, frame.end):
        x = frame.x(moment)
        label = moment.strftime("%d %b") if moment.hour == 0 else moment.strftime("%H:%M")
        out.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom}" '
            f'y2="{frame.bottom + 4}"/>'
            f'<text x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle">{_e(label)}</text>'
        )
    out.append(
        f'<line class="axis" x1="{frame.left}" x2="{frame.width - frame.right}" '
        f'y1="{frame.bottom}" y2="{frame.bottom}"/>'
        f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.upper}" '
        f'y2="{frame.bottom}"/>'
    )
    return out


def _tick_value(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.3g}"


def _time_ticks(start: datetime, end: datetime) -> list[datetime]:
    """Round-hour ticks, at most about eight, on multiples of a sensible step."""
    span_hours = (end - start).total_seconds() / 3600
    step = next(
        (h for h in (1, 2, 3, 6, 12, 24, 48, 168, 336, 720) if span_hours / h <= 8), 24 * 60
    )
    epoch_hours = math.ceil((start.timestamp()) / 3600 / step) * step
    first = datetime.fromtimestamp(epoch_hours * 3600, tz=start.tzinfo)
    ticks: list[datetime] = []
    moment = first
    while moment <= end and len(ticks) < 12:
        ticks.append(moment)
        moment += timedelta(hours=step)
    return ticks


def _svg(kind: str, index: int, frame: _Frame, label: str, body: Iterable[str]) -> str:
    return (
        f'<svg class="chart {kind}" id="{kind}-{index}" role="img" aria-label="{_e(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {frame.width} {frame.height}">'
        + "".join(body)
        + "</svg>"
    )


def _points(pairs: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)


def _intensity_chart(ledger: Ledger, index: int) -> str:
    series = {hub: points for hub, points in ledger.intensity.items() if points}
    if not series:
        return '<p class="note">No grid intensity data for this job\'s hubs.</p>'
    moments: list[datetime] = [p.at for points in series.values() for p in points]
    moments += [p.at + HOUR for points in series.values() for p in points[-1:]]
    moments += [m for period in ledger.periods for m in (period.start, period.end)]
    top = max(p.value for points in series.values() for p in points)
    frame = _frame(moments, top * 1.05)
    body: list[str] = []
    for period in ledger.periods:
        x1, x2 = frame.x(period.start), frame.x(period.end)
        colour = PERIOD_COLOURS.get(period.kind, "#999")
        where = f" on {period.hub}" if period.hub else ""
        title = f"{period.kind}{where}: {iso(period.start)} to {iso(period.end)}"
        body.append(
            f'<rect class="band {_e(period.kind)}" data-hub="{_e(period.hub or "")}" '
            f'x="{x1:.1f}" y="{frame.upper}" width="{max(x2 - x1, 0.5):.1f}" '
            f'height="{frame.bottom - frame.upper:.1f}" fill="{colour}" fill-opacity="0.16">'
            f"<title>{_e(title)}</title></rect>"
        )
        if period.hub and x2 - x1 >= 24:
            body.append(
                f'<text class="band-label" x="{(x1 + x2) / 2:.1f}" y="{frame.upper + 12}" '
                f'text-anchor="middle">{_e(period.hub)}</text>'
            )
    body += _axes(frame, "gCO₂e/kWh")
    legend = []
    for number, (hub, points) in enumerate(series.items()):
        colour = HUB_COLOURS[number % len(HUB_COLOURS)]
        body.append(
            f'<polyline class="hub-line" data-hub="{_e(hub)}" stroke="{colour}" '
            f'points="{_points(_steps(frame, points))}"><title>{_e(hub)}</title></polyline>'
        )
        sources = ", ".join(sorted({p.source for p in points}))
        legend.append(
            f'<li><span class="swatch line" style="background:{colour}"></span>'
            f'hub {_e(hub)} <span class="source">{_e(sources)}</span></li>'
        )
    for decision in ledger.decisions:
        moment = _decision_time(decision.get("at"))
        if moment is None or not frame.start <= moment <= frame.end:
            continue
        x = frame.x(moment)
        body.append(
            f'<line class="decision" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.upper}" '
            f'y2="{frame.bottom}"><title>{_e(decision.get("action", ""))}: '
            f"{_e(decision.get('reason', ''))}</title></line>"
        )
    for kind in ("running", "paused", "waiting"):
        if any(period.kind == kind for period in ledger.periods):
            legend.append(
                f'<li><span class="swatch band {kind}" style="background:'
                f'{PERIOD_COLOURS[kind]};opacity:.35"></span>{PERIOD_LABELS[kind]}</li>'
            )
    label = f"Grid intensity on {', '.join(series)} with the job's periods"
    chart = _svg("intensity", index, frame, label, body)
    return f'{chart}<ul class="legend">{"".join(legend)}</ul>'


def _steps(frame: _Frame, points: Sequence[IntensityPoint]) -> list[tuple[float, float]]:
    """Each hour's intensity holds until the next point (the last one for an hour)."""
    ordered = sorted(points, key=lambda p: p.at)
    pairs = []
    for number, point in enumerate(ordered):
        until = ordered[number + 1].at if number + 1 < len(ordered) else point.at + HOUR
        y = frame.y(point.value)
        pairs += [(frame.x(point.at), y), (frame.x(until), y)]
    return pairs


def _decision_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except UsageError:
        return None


def _cumulative(intervals: Sequence[Interval]) -> tuple[list[tuple[datetime, float]], bool]:
    """(time, emissions so far) at each interval's start and end, from 0 at the first start, so
    the line is flat where no energy was used (a pause); and whether an interval without
    emissions (no intensity) was left out."""
    ordered = sorted(intervals, key=lambda i: (i.start, i.end))
    steps: list[tuple[datetime, float]] = []
    so_far = 0.0
    partial = False
    for interval in ordered:
        if interval.emissions_kg is None:
            partial = True
            continue
        if not steps or steps[-1][0] != interval.start:
            steps.append((interval.start, so_far))
        so_far += interval.emissions_kg
        steps.append((interval.end, so_far))
    return steps, partial


def _cumulative_chart(ledger: Ledger, index: int) -> str:
    if not ledger.intervals:
        return (
            '<p class="note">This job has not used energy yet (it has not run), so there are '
            "no emissions to chart.</p>"
        )
    actual, actual_partial = _cumulative(ledger.intervals)
    at_once, at_once_partial = _cumulative(ledger.counterfactual.intervals)
    moments = [m for m, _ in actual] + [m for m, _ in at_once]
    if not moments:
        return '<p class="note">No grid intensity for the energy this job used.</p>'
    frame = _frame(moments, max(v for _, v in actual + at_once) * 1.05)
    body = _axes(frame, "kg CO₂e")
    lines = (
        ("actual", actual, "#2ca02c", "this job, as it ran", ledger.emissions_kg),
        (
            "counterfactual",
            at_once,
            "#555",
            "run at once on the submission hub",
            ledger.counterfactual.emissions_kg,
        ),
    )
    legend = []
    for kind, steps, colour, meaning, figure in lines:
        if not steps:
            continue
        pairs = [(frame.x(m), frame.y(v)) for m, v in steps]
        body.append(
            f'<polyline class="cumulative {kind}" stroke="{colour}" points="{_points(pairs)}">'
            f"<title>{_e(meaning)}</title></polyline>"
        )
        dashed = " dashed" if kind == "counterfactual" else ""
        legend.append(
            f'<li><span class="swatch line{dashed}" style="background:{colour};'
            f'border-color:{colour}"></span>{_e(meaning)} '
            f'<span class="source {_e(figure.source)}">{_e(figure.source)}</span></li>'
        )
    chart = _svg("cumulative", index, frame, "Cumulative emissions, actual and at once", body)
    notes = []
    if actual_partial or at_once_partial:
        notes.append(
            '<p class="note">Some energy had no grid intensity and is left out of the lines.</p>'
        )
    if not at_once:
        notes.append('<p class="note">No counterfactual profile to compare with.</p>')
    return f'{chart}<ul class="legend">{"".join(legend)}</ul>' + "".join(notes)
