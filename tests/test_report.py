"""`harchos report`: totals, the JSON document, the terminal table and the HTML page (opened in a
real headless Chromium)."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from browser import inspect_page
from clirunner import harchos

from harchos_cli.errors import UsageError
from harchos_cli.meter.model import (
    Counterfactual,
    Figure,
    FigureSource,
    IntensityPoint,
    Interval,
    Ledger,
    Period,
)
from harchos_cli.report import html
from harchos_cli.report.summary import build_report, sum_figures, total

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
HOSTILE = "<script>alert(1)</script>"
# The hub's intensity by hour of day: hub a is dirty at night, hub b clean all day.
A_CURVE = [420, 410, 380, 300, 240, 200, 210, 260, 330, 390, 400, 410, 420, 430]
B_CURVE = [120, 110, 100, 95, 90, 90, 95, 100, 110, 120, 125, 120, 115, 110]


def _intervals(hub: str, start: datetime, hours: int, curve: list[int]) -> list[Interval]:
    """Quarter-hour meter samples of 0.5 kWh each, priced at the hour's intensity (PUE 1)."""
    out = []
    for quarter in range(hours * 4):
        begin = start + quarter * HOUR / 4
        intensity = float(curve[int((begin - T0) / HOUR)])
        out.append(
            Interval(
                hub, begin, begin + HOUR / 4, 0.5, intensity, 0.5 * intensity / 1000, "measured"
            )
        )
    return out


def moved_ledger(
    *,
    job_id: str = "j-moved",
    name: str = "train-llm",
    hubs: tuple[str, str] = ("a", "b"),
    currency: str | None = "EUR",
    price: float | None = 0.25,
) -> Ledger:
    """A job submitted at 00:00 that waited for a greener hour, ran on hub a 03:00–06:00, was
    paused 06:00–09:00, then moved to hub b and ran 09:00–12:00."""
    a, b = hubs
    ran = _intervals(a, T0 + 3 * HOUR, 3, A_CURVE) + _intervals(b, T0 + 9 * HOUR, 3, B_CURVE)
    at_once = _intervals(a, T0, 6, A_CURVE)
    energy = sum(i.energy_kwh for i in ran)
    emitted = sum(i.emissions_kg or 0 for i in ran)
    would = sum(i.emissions_kg or 0 for i in at_once)
    cost = None if price is None else energy * price
    cost_source: FigureSource = "unpriced" if price is None else "configured"
    return Ledger(
        job_id=job_id,
        name=name,
        kind="train",
        state="succeeded",
        hubs=hubs,
        submitted_at=T0,
        started_at=T0 + 3 * HOUR,
        finished_at=T0 + 12 * HOUR,
        currency=currency,
        energy_kwh=Figure(energy, "measured", "NVML energy counters"),
        emissions_kg=Figure(emitted, "forecast", "embedded model"),
        cost=Figure(cost, cost_source),
        counterfactual=Counterfactual(
            hub=a,
            region="DE",
            start=T0,
            energy_kwh=Figure(energy, "measured"),
            emissions_kg=Figure(would, "forecast"),
            cost=Figure(cost, cost_source),
            intervals=tuple(at_once),
        ),
        saving_emissions_kg=Figure(would - emitted, "forecast"),
        saving_cost=Figure(None if cost is None else 0.0, cost_source),
        average_power_w=Figure(2000.0, "measured"),
        periods=(
            Period("waiting", a, "DE", T0, T0 + 3 * HOUR),
            Period("running", a, "DE", T0 + 3 * HOUR, T0 + 6 * HOUR),
            Period("paused", a, "DE", T0 + 6 * HOUR, T0 + 9 * HOUR),
            Period("running", b, "FR", T0 + 9 * HOUR, T0 + 12 * HOUR),
        ),
        intervals=tuple(ran),
        intensity={
            a: tuple(IntensityPoint(T0 + h * HOUR, v, "forecast") for h, v in enumerate(A_CURVE)),
            b: tuple(IntensityPoint(T0 + h * HOUR, v, "replayed") for h, v in enumerate(B_CURVE)),
        },
        decisions=(
            {
                "at": "2026-11-20T00:00:00Z",
                "action": "wait",
                "hub": a,
                "reason": "greener at 03:00 (240 vs 420 g/kWh)",
            },
            {
                "at": "2026-11-20T06:00:00Z",
                "action": "pause",
                "hub": a,
                "reason": "intensity rising above 200 g/kWh",
            },
            {
                "at": "2026-11-20T09:00:00Z",
                "action": "migrate",
                "hub": b,
                "reason": f"hub {b} is 70% greener",
            },
        ),
    )


def waiting_ledger(job_id: str = "j-wait") -> Ledger:
    """A job still waiting for its window: no energy, no intervals."""
    nothing = Figure(0.0, "measured")
    unknown = Figure(None, "unknown", "the job has not run")
    return Ledger(
        job_id=job_id,
        name="later",
        kind="train",
        state="scheduled",
        hubs=("a",),
        submitted_at=T0,
        started_at=None,
        finished_at=None,
        currency=None,
        energy_kwh=nothing,
        emissions_kg=Figure(0.0, "forecast"),
        cost=Figure(None, "unpriced"),
        counterfactual=Counterfactual(
            hub="a",
            region="DE",
            start=T0,
            energy_kwh=nothing,
            emissions_kg=unknown,
            cost=Figure(None, "unpriced"),
        ),
        saving_emissions_kg=unknown,
        saving_cost=Figure(None, "unpriced"),
        average_power_w=Figure(None, "unknown"),
        periods=(Period("waiting", "a", "DE", T0, T0 + 2 * HOUR),),
        intensity={
            "a": tuple(
                IntensityPoint(T0 + h * HOUR, v, "forecast") for h, v in enumerate(A_CURVE[:4])
            )
        },
    )


# Totals


def test_sum_keeps_the_shared_source_and_skips_none() -> None:
    same = sum_figures([("j1", Figure(1.0, "measured")), ("j2", Figure(2.5, "measured"))])
    assert same == Figure(3.5, "measured", "")
    partial = sum_figures([("j1", Figure(1.0, "measured")), ("j2", Figure(None, "unpriced"))])
    assert partial.value == 1.0
    assert partial.source == "mixed"
    assert "j2" in partial.detail
    mixed = sum_figures([("j1", Figure(1.0, "measured")), ("j2", Figure(2.0, "estimated"))])
    assert mixed.value == 3.0
    assert mixed.source == "mixed"
    assert "estimated (1 job)" in mixed.detail
    assert "measured (1 job)" in mixed.detail
    none = sum_figures([("j1", Figure(None, "unpriced")), ("j2", Figure(None, "unpriced"))])
    assert none == Figure(None, "unpriced", "no value for jobs j1, j2")
    assert sum_figures([]).value is None


def test_total_never_adds_currencies_together() -> None:
    euros = moved_ledger(job_id="j-eur", currency="EUR", price=0.25)
    dollars = moved_ledger(job_id="j-usd", currency="USD", price=0.10)
    unpriced = moved_ledger(job_id="j-free", currency=None, price=None)
    result = total([euros, dollars, unpriced])
    assert set(result.cost) == {"EUR", "USD"}
    # 6 h at 2 kW: 12 kWh each, at 0.25 EUR and 0.10 USD a kWh.
    assert result.cost["EUR"].value == pytest.approx(3.0)
    assert result.cost["EUR"].source == "configured"
    assert result.cost["USD"].value == pytest.approx(1.2)
    assert result.unpriced_jobs == ("j-free",)
    assert result.energy_kwh == Figure(36.0, "measured", "NVML energy counters")
    assert result.decisions == {"migrate": 3, "pause": 3, "wait": 3}


def test_total_saving_percent_only_over_jobs_with_a_counterfactual() -> None:
    moved = moved_ledger()
    waiting = waiting_ledger()
    result = total([moved, waiting])
    assert moved.saving_percent is not None
    assert result.saving_percent == pytest.approx(moved.saving_percent)
    assert result.saving_emissions_kg.source == "mixed"
    assert "j-wait" in result.saving_emissions_kg.detail
    assert result.counterfactual_emissions_kg.value == moved.counterfactual.emissions_kg.value
    # Hourly intensity sums: at once on a, hours 0-5: 1950; as run, a 3-5 and b 9-11: 1105.
    assert moved.saving_percent == pytest.approx(100 * (1950 - 1105) / 1950)


def test_report_json_schema() -> None:
    data = json.loads(json.dumps(build_report([moved_ledger(), waiting_ledger()], T0).as_json()))
    assert set(data) == {"since", "jobs", "total"}
    assert data["since"] == "2026-11-20T00:00:00Z"
    assert [job["job_id"] for job in data["jobs"]] == ["j-moved", "j-wait"]
    assert set(data["total"]) == {
        "jobs",
        "energy_kwh",
        "emissions_kg",
        "counterfactual_emissions_kg",
        "saving",
        "cost",
        "unpriced_jobs",
        "decisions",
    }
    assert set(data["total"]["saving"]) == {"emissions_kg", "percent", "cost"}
    assert set(data["total"]["energy_kwh"]) == {"value", "source", "detail"}
    assert data["total"]["cost"]["EUR"]["source"] == "configured"
    assert data["total"]["unpriced_jobs"] == ["j-wait"]
    assert build_report([]).as_json()["since"] is None


# HTML


def test_html_escapes_user_strings(tmp_path: Path) -> None:
    ledger = moved_ledger(name=HOSTILE, hubs=(HOSTILE, 'b" onload="x'))
    text = html.render(build_report([ledger]), generated_at=T0)
    assert HOSTILE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'b" onload' not in text
    assert "<script" not in text.lower()


def test_html_file_is_private_and_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("old")
    path.chmod(0o644)
    html.write(path, html.render(build_report([moved_ledger()]), generated_at=T0))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_html_write_to_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write the report"):
        html.write(tmp_path / "nowhere" / "r.html", "x")


def test_html_job_that_never_ran_has_a_note_not_a_chart() -> None:
    text = html.render(build_report([waiting_ledger()]), generated_at=T0)
    assert "has not used energy yet" in text
    assert 'class="chart cumulative"' not in text
    assert 'class="chart intensity"' in text


def test_html_opens_in_a_real_browser_without_errors(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    ledgers = [moved_ledger(name=HOSTILE), waiting_ledger()]
    html.write(page, html.render(build_report(ledgers, T0), generated_at=T0))
    shot = tmp_path / "report.png"
    found = inspect_page(
        page,
        {
            "charts": "document.querySelectorAll('svg.chart').length",
            "intensity": "document.querySelectorAll('svg.chart.intensity').length",
            "hub_lines": "[...document.querySelectorAll('#intensity-0 polyline.hub-line')]"
            ".map(l => [l.dataset.hub, l.points.numberOfItems])",
            "bands": "[...document.querySelectorAll('#intensity-0 rect.band')]"
            ".map(r => r.classList[1] + ':' + r.dataset.hub)",
            "decisions": "document.querySelectorAll('#intensity-0 line.decision').length",
            "cumulative": "[...document.querySelectorAll('#cumulative-0 polyline.cumulative')]"
            ".map(l => [l.classList[1], l.points.numberOfItems])",
            "chart_width": "document.querySelector('#intensity-0').getBoundingClientRect().width",
            "title": "document.querySelector('#job-0 h2').textContent",
            "scripts": "document.scripts.length",
        },
        shot,
    )
    assert found.errors == []
    values: dict[str, Any] = found.values
    # The moved job has both charts; the waiting one only its hub's intensity.
    assert values["charts"] == 3
    assert values["intensity"] == 2
    assert [hub for hub, _ in values["hub_lines"]] == ["a", "b"]
    assert all(points == 2 * len(A_CURVE) for _, points in values["hub_lines"])
    assert values["bands"] == ["waiting:a", "running:a", "paused:a", "running:b"]
    assert values["decisions"] == 3
    # A point at each run's start, then one per quarter-hour: flat across the pause.
    assert values["cumulative"] == [["actual", 2 + 24], ["counterfactual", 1 + 24]]
    assert values["chart_width"] > 300
    assert values["title"].startswith(HOSTILE)  # shown as text, not run
    assert values["scripts"] == 0
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000


def test_browser_helper_reports_console_errors(tmp_path: Path) -> None:
    """The check above means something: a page that logs an error and throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>console.error('boom');"
        "setTimeout(() => { throw new Error('late'); }, 0);</script></body></html>"
    )
    found = inspect_page(page, {"one": "1"}, tmp_path / "broken.png")
    assert found.values == {"one": 1}
    assert any("boom" in error for error in found.errors)
    assert any("late" in error for error in found.errors)


# The command


@pytest.fixture
def fake_ledgers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, ...], Any]]:
    """`harchos_cli.meter.ledger.ledgers` replaced by one returning the test's ledgers, and the
    calls it got."""
    import harchos_cli.meter.ledger as ledger_module

    calls: list[tuple[tuple[str, ...], Any]] = []

    def ledgers(job_ids: Any = (), *, since: datetime | None = None) -> list[Ledger]:
        calls.append((tuple(job_ids), since))
        if "nosuch" in job_ids:
            raise UsageError("no job nosuch", hint="see: harchos jobs list")
        return [moved_ledger(name="[bold]llm[/bold]"), replace(waiting_ledger(), name=HOSTILE)]

    monkeypatch.setattr(ledger_module, "ledgers", ledgers, raising=False)
    return calls


def test_command_json_and_html(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_ledgers: list[Any]
) -> None:
    out = tmp_path / "r.html"
    result = harchos(capsys, "report", "j-moved", "--since", "30d", "--json", "--html", str(out))
    assert result.code == 0, result.err
    data = result.json()
    assert [job["job_id"] for job in data["jobs"]] == ["j-moved", "j-wait"]
    assert data["since"].endswith("Z")
    assert fake_ledgers[0][0] == ("j-moved",)
    assert fake_ledgers[0][1] is not None
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f"wrote {out}" in result.err


def test_command_terminal_table(capsys: pytest.CaptureFixture[str], fake_ledgers: Any) -> None:
    result = harchos(capsys, "report")
    assert result.code == 0, result.err
    assert fake_ledgers == [((), None)]
    for text in (
        "j-moved",
        "total over 2 jobs",
        "12.0 kWh",
        "meas",
        "3.00 EUR",
        "config",
        "(43%)",
        "3: wait, pause, migrate",
        "fcst = forecast",
        "no price",
        "j-wait",
    ):
        assert text in result.out
    # Names are shown as given, never read as rich markup.
    assert "[bold]llm[/bold]" in result.out
    assert HOSTILE in result.out


@pytest.mark.parametrize("since", ["yesterday", "-3d", "2026-13-40"])
def test_command_bad_since_is_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], fake_ledgers: Any, since: str
) -> None:
    result = harchos(capsys, "report", "--since", since)
    assert result.code == 2
    assert result.err.startswith("harchos: error: bad --since")
    assert "hint:" in result.err
    assert "Traceback" not in result.err
    assert fake_ledgers == []


def test_command_unwritable_html_is_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_ledgers: Any
) -> None:
    result = harchos(capsys, "report", "--html", str(tmp_path / "missing" / "r.html"))
    assert result.code == 2
    assert "cannot write the report" in result.err
    assert "hint:" in result.err
    folder = harchos(capsys, "report", "--html", str(tmp_path))
    assert folder.code == 2
    assert "it is a folder" in folder.err


def test_command_unknown_job(capsys: pytest.CaptureFixture[str], fake_ledgers: Any) -> None:
    result = harchos(capsys, "report", "nosuch")
    assert result.code == 2
    assert result.err.splitlines()[0] == "harchos: error: no job nosuch"


def test_report_help_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\nfrom harchos_cli.cli.app import run\ncode = run(['report', '--help'])\n"
        "print([m for m in ('rich', 'numpy', 'httpx') if m in sys.modules])\nsys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--since" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
