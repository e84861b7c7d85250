"""Fit the embedded carbon-intensity model on the real traces and write the package data file.

Run from the repository root:

    python scripts/fit_embedded.py [--traces ../shared/traces] [--until 2022-01-01] [--out PATH]

For each zone it merges every trace that covers it (one value per hour; where sources overlap the
first source in `SOURCE_PRIORITY` wins) and fits the climatology. It then fits the per-lead
regressions of `log(actual / climatology)` on the last week's log ratios: least squares over
walk-forward origins (the features use only values before each origin), first pooled over all
zones, then per zone, shrunk towards the pooled weights. The P10/P90 band per lead comes from the
residuals, widened by `BAND_SCALE` and scaled with recent volatility (both chosen on validation
splits inside 2021, see scripts/validate_forecaster.py). Without `--until` it also refits on all
but the last `--holdout-months` months and stores every zone's held-out backtest in its `info`.
See docs/model.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from harchos_cli.carbon.embedded import (
    DAY_TYPES,
    FORMAT,
    HISTORY_HOURS,
    KNOWN_SHARE,
    MAX_LEAD,
    MODEL_FILE,
    MODES,
    EmbeddedModel,
    ZoneParams,
    calendar,
    climatology,
    features,
    log_ratios,
    regress,
    restrict,
    volatility,
)
from harchos_cli.carbon.traces import Trace, read_trace, read_wide_traces
from harchos_cli.plan.evaluate import backtest, evaluate

SCRIPT_VERSION = "fit_embedded 3"
WIDE_FILE = "derived/sukprasert_2022_123zones_hourly_lca.csv"
SOURCE_PRIORITY = (
    "derived",
    "decarbonization-potential",
    "eco4cast",
    "EnsembleCI",
    "lets-wait-awhile",
)
EXTRA_ZONES = ("BR", "NO")
YEAR_DECAY = 0.5
"""Weight of a year's monthly level relative to the next year's (recent years count more)."""
SHRINK = 1.0
"""Ridge penalty pulling a zone's weights towards the pooled ones, per feature in units of that
feature's mean square (so log-ratio features and calendar terms are penalised alike)."""
POOLED_SHRINK = 1e-3
"""The same penalty, towards zero, for the pooled weights (only to keep them well defined)."""
LEAD_CHUNK = 8
"""Leads whose features are built at once in the fit (memory)."""
BAND_SCALE = 1.15
"""Widening of the in-sample residual quantiles, calibrated on held-out 2021 data."""
VOLATILITY_POWER = 0.5
"""Band width ∝ (recent volatility / typical volatility) ** this."""
MIN_FIT_HOURS = 24 * 30
BAND_QUANTILES = (10.0, 90.0)
WEIGHT_DIGITS = 3
"""Decimals kept of each zone's weight offsets from the pooled weights (4 gave the same scores on
the validation splits and a 2.5 MB file; the package data must stay under 2 MB)."""
DEFAULT_OUT = Path("src/harchos_cli/carbon/data") / MODEL_FILE


@dataclass
class ZoneData:
    """Every trace covering one zone, by source priority."""

    zone: str
    traces: list[tuple[int, str, Trace]] = field(default_factory=list)


def collect(traces_dir: Path) -> dict[str, ZoneData]:
    """Read all trace files and group them by zone."""
    zones: dict[str, ZoneData] = {}

    def add(trace: Trace, source: str, priority: int) -> None:
        assert trace.zone is not None
        zones.setdefault(trace.zone, ZoneData(trace.zone)).traces.append((priority, source, trace))

    rank = {name: i for i, name in enumerate(SOURCE_PRIORITY)}
    for trace in read_wide_traces(traces_dir / WIDE_FILE):
        add(trace, WIDE_FILE, rank["derived"])
    patterns = {
        "decarbonization-potential": "*_hourly.csv",
        "eco4cast": "*_hourly.csv",
        "EnsembleCI": "*_lifecycle_emissions.csv",
        "lets-wait-awhile": "*_ci.csv",
    }
    for folder, pattern in patterns.items():
        for path in sorted((traces_dir / folder).glob(pattern)):
            trace = read_trace(path)
            if trace.zone is None:
                print(f"skipping {path}: no zone", file=sys.stderr)
                continue
            add(trace, f"{folder}/{path.name}", rank[folder])
    wanted = set(_wide_zones(traces_dir)) | set(EXTRA_ZONES)
    return {z: d for z, d in zones.items() if z in wanted}


def _wide_zones(traces_dir: Path) -> list[str]:
    with (traces_dir / WIDE_FILE).open(encoding="utf-8-sig") as handle:
        return [name.strip() for name in handle.readline().strip().split(",")[1:]]


def merge(data: ZoneData, until_hour: int | None) -> tuple[int, np.ndarray, list[str]]:
    """One hourly series (epoch hour of index 0, values with NaN gaps, sources used)."""
    spans = []
    for priority, source, trace in data.traces:
        first = int(trace.start.timestamp() // 3600)
        values = trace.values
        if until_hour is not None:
            values = values[: max(0, until_hour - first)]
        if len(values):
            spans.append((priority, source, first, values))
    if not spans:
        return 0, np.empty(0), []
    lo = min(s[2] for s in spans)
    hi = max(s[2] + len(s[3]) for s in spans)
    series = np.full(hi - lo, np.nan)
    # lowest priority first, so better sources overwrite overlapping hours
    for _priority, _source, first, values in sorted(spans, key=lambda s: -s[0]):
        series[first - lo : first - lo + len(values)] = values
    return lo, series, [s[1] for s in sorted(spans, key=lambda s: (s[0], s[1]))]


def fit_climatology(first: int, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monthly levels (recency-weighted over years) and normalised daily shapes per day type."""
    hours = first + np.arange(len(series))
    month, day_type, hour, _ = calendar(hours)
    year = hours.astype("datetime64[h]").astype("datetime64[Y]").astype(np.int64) + 1970
    valid = ~np.isnan(series)
    last_year = int(year[valid].max())

    level_sum = np.zeros(12)
    level_w = np.zeros(12)
    norm = np.full(len(series), np.nan)
    for y in np.unique(year[valid]):
        for m in range(12):
            sel = valid & (year == y) & (month == m)
            if sel.sum() < 24 * 7:
                continue
            mean = float(series[sel].mean())
            weight = YEAR_DECAY ** (last_year - int(y))
            level_sum[m] += weight * mean
            level_w[m] += weight
            norm[sel] = series[sel] / mean
    have = level_w > 0
    level = np.empty(12)
    level[have] = level_sum[have] / level_w[have]
    if not have.all():
        months = np.arange(12)
        level[~have] = np.interp(months[~have], months[have], level[have], period=12)

    shape_sum = np.zeros((12, DAY_TYPES, 24))
    shape_n = np.zeros((12, DAY_TYPES, 24))
    ok = ~np.isnan(norm)
    np.add.at(shape_sum, (month[ok], day_type[ok], hour[ok]), norm[ok])
    np.add.at(shape_n, (month[ok], day_type[ok], hour[ok]), 1.0)
    # neighbouring months share their profile (weights ¼ ½ ¼): one year has few Sundays a month
    kernel = (0.25, 0.5, 0.25)
    ssum = np.zeros_like(shape_sum)
    sn = np.zeros_like(shape_n)
    for k, s in zip(kernel, (-1, 0, 1), strict=True):
        ssum += k * np.roll(shape_sum, s, axis=0)
        sn += k * np.roll(shape_n, s, axis=0)
    # a month without data takes the profile of the nearest month with data
    have_month = np.flatnonzero(sn.sum(axis=(1, 2)) > 0)
    for m in range(12):
        if m not in have_month:
            gap = np.minimum((have_month - m) % 12, (m - have_month) % 12)
            nearest = int(have_month[np.argmin(gap)])
            ssum[m], sn[m] = ssum[nearest], sn[nearest]
    shape = np.where(sn > 0, ssum / np.where(sn > 0, sn, 1.0), np.nan)
    days_per_week = np.array([5.0, 1.0, 1.0])
    for m in range(12):
        for d in range(DAY_TYPES):
            row = shape[m, d]
            if np.isnan(row).all():
                row[:] = np.nanmean(shape[m], axis=0)
            row[np.isnan(row)] = np.nanmean(row)
        shape[m] /= float((days_per_week * shape[m].mean(axis=1)).sum() / 7.0)
    return level, shape


@dataclass
class Design:
    """Walk-forward training data of one zone: history log ratios and target log ratios."""

    level: np.ndarray
    shape: np.ndarray
    history: np.ndarray  # (n, HISTORY_HOURS)
    target: np.ndarray  # (n, MAX_LEAD)
    origin_hours: np.ndarray  # (n,)
    usable: dict[str, np.ndarray]  # per mode: which origins have enough history for it


def crossfit_climatology(
    first: int, series: np.ndarray, level: np.ndarray, shape: np.ndarray
) -> np.ndarray:
    """The climatology at each hour, fitted without that hour's year (or month, for a zone with
    less than two years of data).

    The regression is trained on ratios to a climatology that did not see them, as in use (the
    shipped climatology has not seen the hours it forecasts): with the in-sample climatology the
    regression learns to trust its daily shape more than it deserves.
    """
    hours = first + np.arange(len(series))
    stamps = hours.astype("datetime64[h]")
    year = stamps.astype("datetime64[Y]").astype(np.int64)
    month = stamps.astype("datetime64[M]").astype(np.int64)
    valid = ~np.isnan(series)
    years = [y for y in np.unique(year) if (valid & (year == y)).sum() >= 24 * 90]
    block = year if len(years) >= 2 else month
    clim = climatology(level, shape, hours)
    for b in np.unique(block[valid]):
        inside = block == b
        rest = np.where(inside, np.nan, series)
        if (~np.isnan(rest)).sum() < 24 * 60:
            continue
        lv, sh = fit_climatology(first, rest)
        clim[inside] = climatology(lv, sh, hours[inside])
    return clim


def design(first: int, series: np.ndarray) -> Design:
    """The zone's climatology and its walk-forward origins (every hour, every 2nd if long)."""
    level, shape = fit_climatology(first, series)
    ratios = log_ratios(series, crossfit_climatology(first, series, level, shape))
    step = 1 if len(series) <= 20000 else 2
    origins = np.arange(168, len(series) - 1, step)
    padded = np.concatenate([np.full(HISTORY_HOURS, np.nan), ratios, np.full(MAX_LEAD, np.nan)])
    history = padded[origins[:, None] + np.arange(HISTORY_HOURS)]
    target = padded[HISTORY_HOURS + origins[:, None] + np.arange(MAX_LEAD)]
    known = ~np.isnan(history)
    day = known[:, -24:].all(axis=1)
    usable = {
        "long": day & (known.mean(axis=1) >= KNOWN_SHARE),
        "full": day & (known[:, -168:].mean(axis=1) >= KNOWN_SHARE),
        "short": day,
    }
    return Design(level, shape, history, target, first + origins, usable)


def grams(d: Design, mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-lead normal equations (X'X / n, X'y / n) of one mode's regression (None: too few
    origins with enough history)."""
    use = d.usable[mode]
    if use.sum() < 200:
        return None
    history = restrict(d.history[use], mode)
    target = d.target[use]
    gram: np.ndarray | None = None
    rhs = np.zeros(0)
    for lo in range(0, MAX_LEAD, LEAD_CHUNK):
        leads = np.arange(lo + 1, min(lo + LEAD_CHUNK, MAX_LEAD) + 1)
        anchor, common, per = features(history, d.origin_hours[use], leads, mode)
        for j, lead in enumerate(leads):
            y = target[:, lead - 1] - anchor
            ok = ~np.isnan(y)
            x = np.concatenate([common[ok], per[ok, j]], axis=1)
            if gram is None:
                gram = np.zeros((MAX_LEAD, x.shape[1], x.shape[1]))
                rhs = np.zeros((MAX_LEAD, x.shape[1]))
            count = max(int(ok.sum()), 1)
            gram[lead - 1] = x.T @ x / count
            rhs[lead - 1] = x.T @ y[ok] / count
    assert gram is not None
    return gram, rhs


def solve(gram: np.ndarray, rhs: np.ndarray, shrink: float, prior: np.ndarray) -> np.ndarray:
    """Per-lead ridge solutions pulled towards `prior`.

    Each weight's penalty is `shrink` times its feature's mean square: the same pull in a steady
    zone (small log ratios) as in a volatile one, and for the calendar terms as for the ratios.
    """
    out = []
    for h in range(gram.shape[0]):
        diag = np.diag(gram[h]).copy()
        diag = np.maximum(diag, 1e-6 * float(diag.mean()) + 1e-12)
        penalty = np.diag(shrink * diag) + 1e-9 * np.eye(len(diag))
        out.append(np.linalg.solve(gram[h] + penalty, rhs[h] + penalty @ prior[h]))
    return np.stack(out)


def residual_band(d: Design, weights: np.ndarray, mode: str) -> np.ndarray:
    """P10/P90 per lead of log(actual / forecast) on the training origins."""
    use = d.usable[mode]
    if use.sum() < 200:
        use = d.usable["short"]
    history = restrict(d.history[use], mode)
    error = d.target[use] - regress(history, d.origin_hours[use], weights, MAX_LEAD, mode)
    return np.asarray(np.nanpercentile(error, BAND_QUANTILES, axis=0).T)


def fit_all(
    series_by_zone: dict[str, tuple[int, np.ndarray]],
    shrink: float = SHRINK,
    band_scale: float = BAND_SCALE,
) -> tuple[dict[str, ZoneParams], dict[str, np.ndarray]]:
    """Fit every zone: pooled weights first, then each zone shrunk towards them.

    Returns:
        The zones' parameters and the pooled weights (`weights_<mode>`).
    """
    # two passes, so that only one zone's design matrices are in memory at a time
    per_zone: dict[str, dict[str, tuple[np.ndarray, np.ndarray] | None]] = {}
    for zone, (first, series) in series_by_zone.items():
        d = design(first, series)
        per_zone[zone] = {mode: grams(d, mode) for mode in MODES}
    pooled: dict[str, np.ndarray] = {}
    for mode in MODES:
        found = [g[mode] for g in per_zone.values() if g[mode] is not None]
        gram = np.mean([g[0] for g in found if g is not None], axis=0)
        rhs = np.mean([g[1] for g in found if g is not None], axis=0)
        pooled[mode] = solve(gram, rhs, POOLED_SHRINK, np.zeros_like(rhs))
    out: dict[str, ZoneParams] = {}
    for zone, (first, series) in series_by_zone.items():
        d = design(first, series)
        weights = {}
        for mode in MODES:
            found_zone = per_zone[zone][mode]
            weights[mode] = (
                pooled[mode] if found_zone is None else solve(*found_zone, shrink, pooled[mode])
            )
        anomaly = d.target - np.nanmedian(d.target, axis=0)
        out[zone] = ZoneParams(
            level=d.level,
            shape=d.shape,
            weights=weights,
            bands={mode: residual_band(d, weights[mode], mode) for mode in MODES},
            band_climatology=np.asarray(np.nanpercentile(anomaly, BAND_QUANTILES, axis=0).T),
            volatility_ref=float(np.nanmedian(volatility(d.history[d.usable["full"]]))),
            band_scale=band_scale,
            volatility_power=VOLATILITY_POWER,
        )
    return out, {f"weights_{mode}": pooled[mode] for mode in MODES}


def rounded(values: np.ndarray, digits: int) -> list[float]:
    """A compact JSON list."""
    return [round(float(v), digits) for v in np.ravel(values)]


def scaled(values: np.ndarray, digits: int) -> list[int]:
    """A compact JSON list of integers, `values × 10**digits` rounded (the loader multiplies by
    the document's `weight_scale`): shorter to store and parse than decimals."""
    return [int(v) for v in np.rint(np.ravel(values) * 10**digits)]


def iso_hour(epoch_hour: int) -> str:
    """ISO-8601 UTC of an epoch hour."""
    return datetime.fromtimestamp(epoch_hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def to_document(
    fitted: tuple[dict[str, ZoneParams], dict[str, np.ndarray]],
    infos: dict[str, dict[str, Any]],
    until: str | None,
) -> dict[str, Any]:
    """The gzip-JSON document: shared weights, then per zone the offsets from them."""
    params, pooled = fitted
    shared = {key: np.round(value, 5) for key, value in pooled.items()}
    scale = next(iter(params.values())).band_scale
    zones: dict[str, Any] = {}
    for zone in sorted(params):
        p = params[zone]
        arrays = {
            "level": rounded(p.level, 1),
            "shape": rounded(p.shape, 3),
            **{
                f"weights_{m}": scaled(p.weights[m] - shared[f"weights_{m}"], WEIGHT_DIGITS)
                for m in MODES
            },
            **{f"band_{m}": rounded(p.bands[m], 3) for m in MODES},
            "band_climatology": rounded(p.band_climatology, 3),
            "volatility_ref": round(p.volatility_ref, 4),
        }
        # a JSON string per zone: the model parses only the zones it is asked about
        zones[zone] = {"info": infos[zone], "params": json.dumps(arrays, separators=(",", ":"))}
    return {
        "format": FORMAT,
        "script": SCRIPT_VERSION,
        "fitted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "until": until,
        "history_hours": HISTORY_HOURS,
        "max_lead": MAX_LEAD,
        "band_scale": scale,
        "volatility_power": VOLATILITY_POWER,
        "attribution": "Contains data from Electricity Maps (https://www.electricitymaps.com), "
        "made available under the Open Database License (ODbL) 1.0",
        "shared": {key: rounded(value, 5) for key, value in shared.items()},
        "weight_scale": 10.0**-WEIGHT_DIGITS,
        "zones": zones,
    }


def score(model: EmbeddedModel, trace: Trace) -> dict[str, Any]:
    """Day-ahead backtest and 1 h / 6 h (24 h slack) scheduling shares of `model` on `trace`."""
    bt = backtest(trace, model, horizon=24)
    out: dict[str, Any] = {
        "period": f"{bt['period']['start']}/{bt['period']['end']}",
        "horizon_hours": 24,
        "mape": round(bt["mape"], 4),
        "coverage": round(bt["coverage"], 4),
        "persistence_mape": round(bt["baseline"]["persistence_24h"]["mape"], 4),
    }
    for job in (1, 6):
        ev = evaluate(trace, model, job_hours=job, slack_hours=24, rolling=False)
        share = ev["share_of_oracle"]
        out[f"share_of_oracle_{job}h"] = _round(share["forecast"])
        out[f"persistence_share_of_oracle_{job}h"] = _round(share["persistence"])
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def holdout_scores(
    series_by_zone: dict[str, tuple[int, np.ndarray]], cutoff: int, shrink: float, band_scale: float
) -> dict[str, dict[str, Any]]:
    """Refit on the hours before `cutoff` and score each zone on its hours from `cutoff` on."""
    before = {}
    for zone, (first, series) in series_by_zone.items():
        head = series[: max(0, cutoff - first)]
        if (~np.isnan(head)).sum() >= MIN_FIT_HOURS:
            before[zone] = (first, head)
    fitted = fit_all(before, shrink, band_scale)
    infos = {
        z: {"fit_start": iso_hour(f), "fit_end": iso_hour(f + len(s) - 1)}
        for z, (f, s) in before.items()
    }
    model = EmbeddedModel.from_document(to_document(fitted, infos, iso_hour(cutoff)))
    out = {}
    for zone in before:
        first, series = series_by_zone[zone]
        tail = series[cutoff - first :]
        if len(tail) < 24 * 30:
            continue
        start = datetime.fromtimestamp(cutoff * 3600, tz=UTC)
        trace = Trace(zone, start, _filled(tail), Path(zone))
        entry = score(model, trace)
        entry["kind"] = "held-out"
        entry["fit_until"] = iso_hour(cutoff)
        out[zone] = entry
    return out


def _filled(values: np.ndarray) -> np.ndarray:
    known = ~np.isnan(values)
    if known.all():
        return values
    pos = np.arange(len(values))
    return np.asarray(np.interp(pos, pos[known], values[known]))


def main(argv: list[str] | None = None) -> int:
    """Fit every zone and write the gzip JSON model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument("--until", help="fit only on hours before this UTC date (YYYY-MM-DD)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--holdout-months",
        type=int,
        default=4,
        help="without --until: refit without the last N months and record each zone's held-out "
        "scores on them (0: record in-sample scores on the last 4 months instead)",
    )
    parser.add_argument("--shrink", type=float, default=SHRINK, help="(for validation runs)")
    parser.add_argument("--band-scale", type=float, default=BAND_SCALE, help="(for validation)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    until_hour = None
    if args.until:
        until = datetime.fromisoformat(args.until).replace(tzinfo=UTC)
        until_hour = int(until.timestamp() // 3600)

    started = time.perf_counter()
    zones = collect(args.traces)
    series_by_zone: dict[str, tuple[int, np.ndarray]] = {}
    sources_by_zone: dict[str, list[str]] = {}
    skipped = []
    for zone in sorted(zones):
        first, series, sources = merge(zones[zone], until_hour)
        valid = np.flatnonzero(~np.isnan(series))
        if len(valid) < MIN_FIT_HOURS:
            skipped.append(zone)
            continue
        series_by_zone[zone] = (first + int(valid[0]), series[valid[0] : valid[-1] + 1])
        sources_by_zone[zone] = sources
    if skipped:
        print(
            f"{len(skipped)} zones have too little data before {args.until}, skipped: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}",
            file=sys.stderr,
        )
    fitted = fit_all(series_by_zone, args.shrink, args.band_scale)
    infos: dict[str, dict[str, Any]] = {}
    for zone, (first, series) in series_by_zone.items():
        infos[zone] = {
            "sources": sources_by_zone[zone],
            "fit_start": iso_hour(first),
            "fit_end": iso_hour(first + len(series) - 1),
            "hours": int((~np.isnan(series)).sum()),
            "backtest": None,
        }
    doc = to_document(fitted, infos, args.until)
    if until_hour is None:
        # the typical end (a few sources run a couple of days past the others)
        last = int(np.median([f + len(s) for f, s in series_by_zone.values()]))
        end_month = np.datetime64(last - 1, "h").astype("datetime64[M]")
        months = max(args.holdout_months, 1)
        cutoff = int((end_month - months + 1).astype("datetime64[h]").astype(np.int64))
        held: dict[str, dict[str, Any]] = {}
        if args.holdout_months > 0:
            held = holdout_scores(series_by_zone, cutoff, args.shrink, args.band_scale)
        model = EmbeddedModel.from_document(doc)
        for zone, (first, series) in series_by_zone.items():
            entry = held.get(zone)
            if entry is None and cutoff - first < len(series) - 24 * 30:
                tail = series[max(0, cutoff - first) :]
                start = datetime.fromtimestamp(max(cutoff, first) * 3600, tz=UTC)
                entry = score(model, Trace(zone, start, _filled(tail), Path(zone)))
                entry["kind"] = "in-sample"
            doc["zones"][zone]["info"]["backtest"] = entry
        doc["holdout"] = {"from": iso_hour(cutoff), "months": args.holdout_months}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(doc, separators=(",", ":")).encode()
    args.out.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))
    if not args.quiet:
        scored = [z["info"]["backtest"] for z in doc["zones"].values() if z["info"]["backtest"]]
        for zone in sorted(doc["zones"]):
            b = doc["zones"][zone]["info"]["backtest"]
            if b:
                print(
                    f"{zone:14s} {b['kind']:9s} MAPE {b['mape']:.3f} (persistence "
                    f"{b['persistence_mape']:.3f}) coverage {b['coverage']:.2f}"
                )
        if scored:
            print(
                f"mean {scored[0]['kind']} MAPE {np.mean([b['mape'] for b in scored]):.4f} vs "
                f"persistence {np.mean([b['persistence_mape'] for b in scored]):.4f}, coverage "
                f"{np.mean([b['coverage'] for b in scored]):.3f}"
            )
    print(
        f"{len(doc['zones'])} zones; wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
