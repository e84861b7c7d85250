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

from harchos_cli.carbon.embedded import HISTORY_HOURS, EmbeddedModel
from harchos_cli.carbon.traces import Trace
from harchos_cli.plan.evaluate import backtest, evaluate

HISTORIES = (24, 168)
"""History limits (hours) the rolling policy is also scored with, besides all the model reads."""
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
    name: str,
    traces: Path,
    zones: dict[str, fit_embedded.ZoneData],
    fit_args: list[str],
    *,
    rolling: bool = True,
    model_file: Path | None = None,
) -> dict[str, Any]:
    """Fit with the setup's cutoff into a temporary file (or load `model_file`, which must have
    been fitted with `--until` that cutoff) and score every eligible zone."""
    setup = SETUPS[name]
    since, until = hour_of(setup["cutoff"]), hour_of(setup["end"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "heldout.json.gz"
        started = time.perf_counter()
        if model_file is None:
            args = ["--traces", str(traces), "--until", setup["cutoff"], "--out", str(out)]
            fit_embedded.main([*args, "--quiet", *fit_args])
        else:
            out = model_file
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
            ev = evaluate(trace, model, job_hours=job, slack_hours=24, rolling=False)
            row[f"oracle_saving_{job}h"] = ev["saving"]["oracle"]
            row[f"share_{job}h"] = ev["share_of_oracle"]["forecast"]
            row[f"persistence_share_{job}h"] = ev["share_of_oracle"]["persistence"]
        timings.append(time.perf_counter() - started)
        for job in (1, 6):
            for hours in (*HISTORIES, None) if rolling else ():
                limited = evaluate(trace, model, job_hours=job, slack_hours=24, history_hours=hours)
                row[f"rolling_{job}h_{hours or 'all'}"] = limited["share_of_oracle"]["rolling"]
        rows[zone] = row
    return {
        "setup": name,
        "model": model.model_name,
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
    rolled = "rolling_1h_all" in next(iter(rows.values()))
    extra = [f"rolling_{j}h_{h}" for j in (1, 6) for h in (*HISTORIES, "all")] if rolled else []
    head = "".join(
        f" {j} h rolling, {h if h == 'all' else f'{h} h'} |"
        for j in (1, 6)
        for h in (*HISTORIES, "all")
        if rolled
    )
    lines = [
        f"#### `{result['setup']}` ({result['role']}): {result['title']}, {len(rows)} zones",
        "",
        f"Model: {result.get('model', 'n/a')}.",
        "",
        "| zone | MAPE model | MAPE persistence | P10–P90 coverage | 1 h share model | "
        "1 h share persistence | 6 h share model | 6 h share persistence |" + head,
        "|---|" + "---:|" * (7 + len(extra)),
    ]
    keys = [
        "mape",
        "persistence_mape",
        "coverage",
        "share_1h",
        "persistence_share_1h",
        "share_6h",
        "persistence_share_6h",
        *extra,
    ]
    for zone, r in rows.items():
        lines.append(f"| {zone} | " + " | ".join(pct(r[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{pct(m[k])}**" for k in keys) + " |")
    lines += [
        "",
        f"All figures in %. Shares are of the oracle's saving (24 h slack); oracle saving mean "
        f"{pct(m['oracle_saving_1h'])} % (1 h jobs), {pct(m['oracle_saving_6h'])} % (6 h). "
        f"Model MAPE below persistence on {int(m['zones_mape_better'])} of {len(rows)} zones; "
        f"worst share gap to persistence {pct(m['worst_gap_1h'])} points (1 h), "
        f"{pct(m['worst_gap_6h'])} (6 h); zones more than 2 points behind: "
        f"{int(m['zones_behind_persistence_by_2pt_1h'])} (1 h), "
        f"{int(m['zones_behind_persistence_by_2pt_6h'])} (6 h). "
        + (
            "Rolling: the supervisor's re-plan every hour on the actuals revealed so far "
            "(`plan evaluate`'s rolling policy), given the last 24 h, the last 168 h, or all "
            "the history the model reads. "
            if rolled
            else ""
        )
        + f"Fit {result['fit_seconds']} s; "
        f"backtest plus both single-shot evaluations {result['score_seconds_per_zone_year']} s "
        "per zone-year.",
        "",
    ]
    return "\n".join(lines)


SIDE_BY_SIDE = (
    ("mape", "day-ahead MAPE"),
    ("coverage", "P10–P90 coverage"),
    ("share_1h", "1 h jobs, single shot"),
    ("share_6h", "6 h jobs, single shot"),
    ("worst_gap_1h", "worst zone vs persistence, 1 h (points)"),
    ("worst_gap_6h", "worst zone vs persistence, 6 h (points)"),
    *(
        (f"rolling_{j}h_{h}", f"{j} h jobs, rolling, {h if h == 'all' else f'{h} h'} history")
        for j in (1, 6)
        for h in (24, 168, "all")
    ),
)


def side_by_side(others: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """Means of another model's results (e.g. the previous version) beside these, per setup."""
    lines = []
    for new in results:
        for old in others:
            if old["setup"] != new["setup"]:
                continue
            lines += [
                f"#### `{new['setup']}`: {old.get('model', 'other')} and {new.get('model')}",
                "",
                f"| mean over {len(new['zones'])} zones | {old.get('model', 'other')} | "
                f"{new.get('model')} |",
                "|---|---:|---:|",
            ]
            for key, label in SIDE_BY_SIDE:
                if key in old["mean"] and key in new["mean"]:
                    lines.append(f"| {label} | {pct(old['mean'][key])} | {pct(new['mean'][key])} |")
            lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def timing() -> dict[str, float]:
    """Seconds to load the packaged model and to forecast 48 h for one region from a week."""
    started = time.perf_counter()
    model = EmbeddedModel.load()
    loaded = time.perf_counter() - started
    history = np.full(HISTORY_HOURS, 300.0)
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
        "issue 12: day-ahead MAPE <= 10.3 %",
        lambda r: f"{pct(r['mean']['mape'])} %: {mark(r['mean']['mape'] <= 0.103)}",
    )
    if any("rolling_1h_all" in r["mean"] for r in results):
        for hours, goal in ((168, 0.78), (24, 0.74)):
            for job in (1, 6):
                row(
                    f"issue 12: {job} h jobs, rolling, {hours} h of history >= {pct(goal)} %",
                    lambda r, j=job, h=hours, g=goal: (
                        f"{pct(r['mean'][f'rolling_{j}h_{h}'])} %: "
                        f"{mark(r['mean'][f'rolling_{j}h_{h}'] >= g)}"
                        if f"rolling_{j}h_{h}" in r["mean"]
                        else "not scored (`--no-rolling`)"
                    ),
                )
    row(
        "P10–P90 coverage 80 % ± 5",
        lambda r: (
            f"{pct(r['mean']['coverage'])} %: {mark(abs(r['mean']['coverage'] - 0.8) <= 0.05)}"
        ),
    )
    row(
        "a year's backtest + single-shot evaluations < 1 min",
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
    parser.add_argument(
        "--model",
        type=Path,
        help="score this model file (fitted with --until the setup's cutoff) instead of fitting",
    )
    parser.add_argument(
        "--no-rolling", action="store_true", help="skip the (slow) rolling-policy columns"
    )
    parser.add_argument(
        "--results",
        type=Path,
        action="append",
        help="render these saved --json results instead of running (repeatable)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        help="saved --json results of another model (e.g. the previous version) to show "
        "side by side with these (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.results:
        results = [r for path in args.results for r in json.loads(path.read_text("utf-8"))]
    else:
        names = args.setup or ["year-2022", "late-2022"]
        zones = fit_embedded.collect(args.traces)
        results = [
            run_setup(
                name,
                args.traces,
                zones,
                args.fit_args.split(),
                rolling=not args.no_rolling,
                model_file=args.model,
            )
            for name in names
        ]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    others = [r for path in args.compare or () for r in json.loads(path.read_text("utf-8"))]
    tables = side_by_side(others, results) + "\n".join(markdown(r) for r in results)
    tests = [r for r in results if r["role"] == "test"] or results
    speed = timing()
    intro = (
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `{fit_embedded.SCRIPT_VERSION}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Reproduce with `python scripts/validate_forecaster.py --write docs/benchmarks.md` "
        "(add `--setup year-2021 --setup late-2021` for the validation splits that chose the "
        "fit's constants; `--no-rolling` skips the slow rolling columns). Each setup fits with "
        "`fit_embedded.py --until CUTOFF` into a temporary "
        "file and scores the zone's trace after the cutoff with `forecast backtest` / "
        "`plan evaluate` semantics; nothing at or after the cutoff reaches the fit.\n\n"
        + verdicts(tests)
        + f"\n\nLoading the packaged model takes {speed['load'] * 1000:.0f} ms, a 48 h forecast "
        f"for one region {speed['forecast'] * 1000:.1f} ms (target for both together: < 0.3 s).\n"
    )
    tables = intro + "\n" + tables
    print(tables)
    if args.write:
        write_section(args.write, tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
