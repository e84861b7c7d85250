"""Held-out validation of the embedded forecaster against 24 h persistence, per zone.

Run from the repository root (needs the traces beside the checkout):

    python scripts/validate_forecaster.py [--traces ../shared/traces] [--setup year-2022]
        [--write docs/benchmarks.md] [--json results.json]

For each setup it fits the model with `scripts/fit_embedded.py --until CUTOFF` into a temporary
file (nothing at or after the cutoff is read by the fit), loads that file, and scores every zone
on its trace from the cutoff to the end of the test period with the project's own protocol
(`harchos_cli.plan.evaluate.backtest` for day-ahead MAPE and P10–P90 coverage, `evaluate` for 1 h
and 6 h jobs with 24 h slack), next to 24 h persistence. It prints a Markdown table per setup;
`--write` puts them into docs/benchmarks.md between the forecast-quality markers.

Setups (the validation ones chose the fit script's constants; the test ones are reported):

- `year-2022` (test): fit before 2022-01-01, score 2022, zones with earlier data;
- `late-2022` (test): fit before 2022-09-01, score Sep–Dec 2022, zones with only 2022 data;
- `year-2021` (validation): fit before 2021-01-01, score 2021;
- `late-2021` (validation): fit before 2021-09-01, score Sep–Dec 2021.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fit_embedded

from harchos_cli.carbon.embedded import EmbeddedModel
from harchos_cli.carbon.traces import Trace
from harchos_cli.plan.evaluate import backtest, evaluate

MARK_BEGIN = "<!-- forecast_quality:begin -->"
MARK_END = "<!-- forecast_quality:end -->"
SETUPS: dict[str, dict[str, Any]] = {
    "year-2022": {
        "cutoff": "2022-01-01",
        "end": "2023-01-01",
        "only_new": False,
        "role": "test",
        "title": "fit before 2022, scored on 2022 (zones with earlier data)",
    },
    "late-2022": {
        "cutoff": "2022-09-01",
        "end": "2023-01-01",
        "only_new": True,
        "role": "test",
        "title": "fit on Jan–Aug 2022, scored on Sep–Dec 2022 (zones with only 2022 data)",
    },
    "year-2021": {
        "cutoff": "2021-01-01",
        "end": "2022-01-01",
        "only_new": False,
        "role": "validation",
        "title": "fit before 2021, scored on 2021",
    },
    "late-2021": {
        "cutoff": "2021-09-01",
        "end": "2022-01-01",
        "only_new": False,
        "role": "validation",
        "title": "fit before 2021-09, scored on Sep–Dec 2021",
    },
}


def hour_of(date: str) -> int:
    """Epoch hour of a UTC date."""
    return int(datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp() // 3600)


def test_trace(data: fit_embedded.ZoneData, since: int, until: int) -> tuple[Trace, str] | None:
    """The zone's highest-priority single trace covering [since, until), cut to that period."""
    for _priority, source, trace in sorted(data.traces, key=lambda t: (t[0], t[1])):
        first = int(trace.start.timestamp() // 3600)
        if first <= since and first + len(trace.values) >= until:
            values = trace.values[since - first : until - first]
            start = datetime.fromtimestamp(since * 3600, tz=UTC)
            return Trace(data.zone, start, values, Path(source)), source
    return None


def run_setup(
    name: str, traces: Path, zones: dict[str, fit_embedded.ZoneData], fit_args: list[str]
) -> dict[str, Any]:
    """Fit with the setup's cutoff into a temporary file and score every eligible zone."""
    setup = SETUPS[name]
    since, until = hour_of(setup["cutoff"]), hour_of(setup["end"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "heldout.json.gz"
        started = time.perf_counter()
        args = ["--traces", str(traces), "--until", setup["cutoff"], "--out", str(out), "--quiet"]
        args += fit_args
        fit_embedded.main(args)
        fit_seconds = time.perf_counter() - started
        model = EmbeddedModel.from_file(out)
    rows: dict[str, dict[str, Any]] = {}
    timings = []
    for zone in model.zones():
        if setup["only_new"] and fit_embedded.merge(zones[zone], hour_of("2022-01-01"))[1].size:
            continue
        found = test_trace(zones[zone], since, until)
        if found is None:
            continue
        trace, source = found
        started = time.perf_counter()
        bt = backtest(trace, model, horizon=24)
        assert not bt["fit_overlap"], f"{zone}: test period overlaps the fit"
        row: dict[str, Any] = {
            "source": source,
            "mape": bt["mape"],
            "persistence_mape": bt["baseline"]["persistence_24h"]["mape"],
            "coverage": bt["coverage"],
        }
        for job in (1, 6):
            ev = evaluate(trace, model, job_hours=job, slack_hours=24)
            row[f"oracle_saving_{job}h"] = ev["saving"]["oracle"]
            row[f"share_{job}h"] = ev["share_of_oracle"]["forecast"]
            row[f"persistence_share_{job}h"] = ev["share_of_oracle"]["persistence"]
        timings.append(time.perf_counter() - started)
        rows[zone] = row
    return {
        "setup": name,
        **setup,
        "fit_seconds": round(fit_seconds, 1),
        "score_seconds_per_zone_year": round(statistics.mean(timings) * 8760 / (until - since), 3),
        "zones": rows,
        "mean": means(rows),
    }


def means(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Means over zones (shares: zones where the oracle saves something)."""
    keys = [k for k, v in next(iter(rows.values())).items() if k != "source"]
    out = {}
    for key in keys:
        values = [r[key] for r in rows.values() if r[key] is not None]
        out[key] = float(np.mean(values)) if values else float("nan")
    for job in (1, 6):
        gaps = [
            r[f"share_{job}h"] - r[f"persistence_share_{job}h"]
            for r in rows.values()
            if r[f"share_{job}h"] is not None
        ]
        out[f"worst_gap_{job}h"] = float(min(gaps))
        out[f"zones_behind_persistence_by_2pt_{job}h"] = float(sum(g < -0.02 for g in gaps))
    out["zones_mape_better"] = float(sum(r["mape"] < r["persistence_mape"] for r in rows.values()))
    return out


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The per-zone table of one setup, with means."""
    rows = result["zones"]
    m = result["mean"]
    lines = [
        f"#### `{result['setup']}` ({result['role']}): {result['title']}, {len(rows)} zones",
        "",
        "| zone | MAPE model | MAPE persistence | P10–P90 coverage | 1 h share model | "
        "1 h share persistence | 6 h share model | 6 h share persistence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for zone, r in rows.items():
        lines.append(
            f"| {zone} | {pct(r['mape'])} | {pct(r['persistence_mape'])} | {pct(r['coverage'])} "
            f"| {pct(r['share_1h'])} | {pct(r['persistence_share_1h'])} | {pct(r['share_6h'])} "
            f"| {pct(r['persistence_share_6h'])} |"
        )
    lines.append(
        f"| **mean** | **{pct(m['mape'])}** | **{pct(m['persistence_mape'])}** | "
        f"**{pct(m['coverage'])}** | **{pct(m['share_1h'])}** | "
        f"**{pct(m['persistence_share_1h'])}** | **{pct(m['share_6h'])}** | "
        f"**{pct(m['persistence_share_6h'])}** |"
    )
    lines += [
        "",
        f"All figures in %. Shares are of the oracle's saving (24 h slack); oracle saving mean "
        f"{pct(m['oracle_saving_1h'])} % (1 h jobs), {pct(m['oracle_saving_6h'])} % (6 h). "
        f"Model MAPE below persistence on {int(m['zones_mape_better'])} of {len(rows)} zones; "
        f"worst share gap to persistence {pct(m['worst_gap_1h'])} points (1 h), "
        f"{pct(m['worst_gap_6h'])} (6 h); zones more than 2 points behind: "
        f"{int(m['zones_behind_persistence_by_2pt_1h'])} (1 h), "
        f"{int(m['zones_behind_persistence_by_2pt_6h'])} (6 h). Fit {result['fit_seconds']} s; "
        f"backtest plus both evaluations {result['score_seconds_per_zone_year']} s per zone-year.",
        "",
    ]
    return "\n".join(lines)


def timing() -> dict[str, float]:
    """Seconds to load the packaged model and to forecast 48 h for one region from a week."""
    started = time.perf_counter()
    model = EmbeddedModel.load()
    loaded = time.perf_counter() - started
    history = np.full(168, 300.0)
    origin = datetime(2025, 6, 1, tzinfo=UTC)
    started = time.perf_counter()
    for _ in range(20):
        model.forecast_values("DE", origin, 48, history)
    return {"load": loaded, "forecast": (time.perf_counter() - started) / 20}


def verdicts(results: list[dict[str, Any]]) -> str:
    """The issue's targets against the test setups' means."""
    lines = [
        "| target | " + " | ".join(f"`{r['setup']}`" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    row(
        "day-ahead MAPE <= 8 % (persistence)",
        lambda r: (
            f"{pct(r['mean']['mape'])} % ({pct(r['mean']['persistence_mape'])} %): "
            f"{mark(r['mean']['mape'] <= 0.08)}"
        ),
    )
    for job in (1, 6):
        row(
            f"{job} h jobs, 24 h slack: >= 90 % of oracle (persistence)",
            lambda r, j=job: (
                f"{pct(r['mean'][f'share_{j}h'])} % "
                f"({pct(r['mean'][f'persistence_share_{j}h'])} %): "
                f"{mark(r['mean'][f'share_{j}h'] >= 0.9)}"
            ),
        )
        row(
            f"{job} h: no zone > 2 points behind persistence",
            lambda r, j=job: (
                f"{int(r['mean'][f'zones_behind_persistence_by_2pt_{j}h'])} zone(s) behind: "
                f"{mark(r['mean'][f'zones_behind_persistence_by_2pt_{j}h'] == 0)}"
            ),
        )
    row(
        "P10–P90 coverage 80 % ± 5",
        lambda r: (
            f"{pct(r['mean']['coverage'])} %: {mark(abs(r['mean']['coverage'] - 0.8) <= 0.05)}"
        ),
    )
    row(
        "a year's backtest + evaluations < 1 min",
        lambda r: (
            f"{r['score_seconds_per_zone_year']} s: {mark(r['score_seconds_per_zone_year'] < 60)}"
        ),
    )
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace the forecast-quality section of `path` (appending it if the markers are absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{MARK_BEGIN}\n{body.rstrip()}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the setups and print (optionally write) their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument(
        "--setup", action="append", choices=sorted(SETUPS), help="default: the two test setups"
    )
    parser.add_argument("--write", type=Path, help="Markdown file to put the tables into")
    parser.add_argument("--json", type=Path, help="write the raw per-zone results here")
    parser.add_argument("--fit-args", default="", help="extra fit_embedded.py arguments")
    args = parser.parse_args(argv)
    names = args.setup or ["year-2022", "late-2022"]
    zones = fit_embedded.collect(args.traces)
    results = [run_setup(name, args.traces, zones, args.fit_args.split()) for name in names]
    tables = "\n".join(markdown(r) for r in results)
    tests = [r for r in results if r["role"] == "test"] or results
    speed = timing()
    intro = (
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `{fit_embedded.SCRIPT_VERSION}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Reproduce with `python scripts/validate_forecaster.py --write docs/benchmarks.md` "
        "(add `--setup year-2021 --setup late-2021` for the validation splits that chose the "
        "fit's constants). Each setup fits with `fit_embedded.py --until CUTOFF` into a temporary "
        "file and scores the zone's trace after the cutoff with `forecast backtest` / "
        "`plan evaluate` semantics; nothing at or after the cutoff reaches the fit.\n\n"
        + verdicts(tests)
        + f"\n\nLoading the packaged model takes {speed['load'] * 1000:.0f} ms, a 48 h forecast "
        f"for one region {speed['forecast'] * 1000:.1f} ms (target for both together: < 0.3 s).\n"
    )
    tables = intro + "\n" + tables
    print(tables)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.write:
        write_section(args.write, tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
