"""`harchos report`: energy, emissions and cost of jobs, against running them at once."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import typer

_SINCE_HINT = "give a duration back from now (30d, 6h) or an ISO timestamp (2026-11-01T00:00Z)"


def report(
    job_ids: list[str] | None = typer.Argument(
        None, metavar="JOB", help="Job ids or unique prefixes (default: every job)."
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="WHEN", help="Only jobs submitted since then: 30d, 6h or ISO."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print JSON (docs/report.md) on stdout."
    ),
    html: Path | None = typer.Option(
        None, "--html", metavar="FILE", help="Also write a self-contained HTML report with charts."
    ),
) -> None:
    """Per job and in total: energy, emissions, cost, the saving against running at once, and
    the decisions taken."""
    from harchos_cli.meter.ledger import ledgers
    from harchos_cli.report import html as html_report
    from harchos_cli.report.summary import build_report
    from harchos_cli.timeparse import utcnow

    now = utcnow()
    start = _since(since, now) if since is not None else None
    if html is not None:
        html_report.check_writable(html)
    result = build_report(ledgers(job_ids or (), since=start), since=start)
    if html is not None:
        html_report.write(html, html_report.render(result, generated_at=now))
    if json_output:
        from harchos_cli.cli.output import print_json

        print_json(result.as_json())
    else:
        from harchos_cli.report.terminal import print_report

        print_report(result)
    if html is not None:
        typer.echo(f"wrote {html}", err=True)


def _since(text: str, now: datetime) -> datetime:
    from harchos_cli.errors import UsageError
    from harchos_cli.timeparse import parse_duration, parse_instant

    try:
        if re.match(r"^\s*\d{4}-\d{2}-\d{2}", text):
            return parse_instant(text)
        return now - parse_duration(text)
    except UsageError:
        raise UsageError(f"bad --since {text!r}", hint=_SINCE_HINT) from None
