"""Fit the embedded carbon-intensity model on the real traces and write the package data file.

Run from the repository root:

    python scripts/fit_embedded.py [--traces ../shared/traces] [--until 2022-01-01] [--out PATH]

For each zone it merges every trace that covers it (one value per hour; where sources overlap the
first source in `SOURCE_PRIORITY` wins), fits the climatology, the per-lead blend weights (least
squares over walk-forward origins: the features use only values before each origin) and the
P10/P90 bands, and records where the data came from. See docs/model.md.
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
    FEATURES,
    HISTORY_HOURS,
    MAX_LEAD,
    MODEL_FILE,
    ZoneParams,
    calendar,
    features,
    predict_batch,
)
from harchos_cli.carbon.traces import Trace, read_trace, read_wide_traces

SCRIPT_VERSION = "fit_embedded 1"
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
RIDGE = 1e-3
MIN_FIT_HOURS = 24 * 30
BAND_QUANTILES = (10.0, 90.0)
WARMUP_HOURS = 14 * 24
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
    """Monthly levels (recency-weighted over years) and normalised daily shapes."""
    hours = first + np.arange(len(series))
    month, weekend, hour, _ = calendar(hours)
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

    shape_sum = np.zeros((12, 2, 24))
    shape_n = np.zeros((12, 2, 24))
    ok = ~np.isnan(norm)
    np.add.at(shape_sum, (month[ok], weekend[ok], hour[ok]), norm[ok])
    np.add.at(shape_n, (month[ok], weekend[ok], hour[ok]), 1.0)
    # neighbouring months share their profile (weights ¼ ½ ¼): one year has few weekend days
    kernel = (0.25, 0.5, 0.25)
    ssum = sum(k * np.roll(shape_sum, s, axis=0) for k, s in zip(kernel, (-1, 0, 1), strict=True))
    sn = sum(k * np.roll(shape_n, s, axis=0) for k, s in zip(kernel, (-1, 0, 1), strict=True))
    assert isinstance(ssum, np.ndarray)
    assert isinstance(sn, np.ndarray)
    shape = np.where(sn > 0, ssum / np.where(sn > 0, sn, 1.0), np.nan)
    for m in range(12):
        for w in range(2):
            row = shape[m, w]
            if np.isnan(row).all():
                row[:] = np.nanmean(shape[m], axis=0) if not np.isnan(shape[m]).all() else 1.0
            row[np.isnan(row)] = np.nanmean(row)
        week_mean = (5 * shape[m, 0].mean() + 2 * shape[m, 1].mean()) / 7
        shape[m] /= week_mean
    return level, shape


def windows(series: np.ndarray, origins: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """History (n, HISTORY_HOURS) and target (n, horizon) matrices; NaN outside the series."""
    padded = np.concatenate([np.full(HISTORY_HOURS, np.nan), series, np.full(horizon, np.nan)])
    base = origins + HISTORY_HOURS
    hist = padded[base[:, None] + np.arange(-HISTORY_HOURS, 0)]
    target = padded[base[:, None] + np.arange(horizon)]
    return hist, target


def fit_zone(first: int, series: np.ndarray) -> tuple[ZoneParams, dict[str, float]]:
    """Fit one zone's parameters and compute its in-sample 24 h backtest MAPEs."""
    level, shape = fit_climatology(first, series)
    n = len(series)
    step = 1 if n <= 20000 else 2
    origins = np.arange(24, n - 1, step)
    hist, target = windows(series, origins, MAX_LEAD)
    enough = (~np.isnan(hist[:, -24:])).sum(axis=1) >= 24
    origins, hist, target = origins[enough], hist[enough], target[enough]
    origin_hours = first + origins

    clim = ZoneParams(
        level, shape, np.zeros((MAX_LEAD, len(FEATURES))), np.ones((1, 2)), np.ones((1, 2))
    )
    hist_clim = clim.climatology(origin_hours[:, None] + np.arange(-HISTORY_HOURS, 0))
    target_clim = clim.climatology(origin_hours[:, None] + np.arange(MAX_LEAD))
    feats = features(hist, hist_clim, MAX_LEAD)
    ratio = target / target_clim
    ok = ~np.isnan(ratio)

    # weights sum to one, so the forecast scales with the history's level: a pull back to the
    # fitted climatology's level looks good in-sample but does not carry over from year to year
    weights = np.zeros((MAX_LEAD, len(FEATURES)))
    for lead in range(MAX_LEAD):
        x = feats[ok[:, lead], lead]
        base = x[:, -1]
        xs = x[:, 1:-1] - base[:, None]
        ys = ratio[ok[:, lead], lead] - base
        gram = xs.T @ xs / len(ys) + np.eye(xs.shape[1]) * RIDGE
        w = np.linalg.solve(gram, xs.T @ ys / len(ys))
        weights[lead, 1:-1] = w
        weights[lead, -1] = 1.0 - w.sum()

    def band(actual_over_forecast: np.ndarray) -> np.ndarray:
        lo, hi = np.nanpercentile(actual_over_forecast, BAND_QUANTILES, axis=0)
        return np.stack([np.minimum(lo, 1.0), np.maximum(hi, 1.0)], axis=1)

    fitted = ZoneParams(level, shape, weights, np.ones((1, 2)), np.ones((1, 2)))
    point, _, _ = predict_batch(fitted, hist, origin_hours, MAX_LEAD)
    params = ZoneParams(level, shape, weights, band(target / point), band(target / target_clim))
    return params, protocol_mapes(params, first, series)


def protocol_mapes(params: ZoneParams, first: int, series: np.ndarray) -> dict[str, float]:
    """24 h MAPE of the model and of 24 h persistence under the evaluation protocol."""
    n = len(series)
    idx = np.arange(WARMUP_HOURS, n - 24)
    idx = idx[(first + idx) % 6 == 0]
    hist, target = windows(series, idx, 24)
    point, _, _ = predict_batch(params, hist, first + idx, 24)
    persistence = hist[:, -24:]
    ok = ~np.isnan(target) & ~np.isnan(persistence) & (target > 0)
    ok &= (~np.isnan(hist[:, -24:])).all(axis=1)[:, None]
    model = np.abs(point - target)[ok] / target[ok]
    pers = np.abs(persistence - target)[ok] / target[ok]
    return {"model": float(model.mean()), "persistence_24h": float(pers.mean())}


def rounded(values: np.ndarray, digits: int) -> list[float]:
    """A compact JSON list."""
    return [round(float(v), digits) for v in np.ravel(values)]


def iso_hour(epoch_hour: int) -> str:
    """ISO-8601 UTC of an epoch hour."""
    return datetime.fromtimestamp(epoch_hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def main(argv: list[str] | None = None) -> int:
    """Fit every zone and write the gzip JSON model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument("--until", help="fit only on hours before this UTC date (YYYY-MM-DD)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    until_hour = None
    if args.until:
        until = datetime.fromisoformat(args.until).replace(tzinfo=UTC)
        until_hour = int(until.timestamp() // 3600)

    started = time.perf_counter()
    zones = collect(args.traces)
    doc: dict[str, Any] = {
        "format": 1,
        "script": SCRIPT_VERSION,
        "fitted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "until": args.until,
        "features": list(FEATURES),
        "max_lead": MAX_LEAD,
        "history_hours": HISTORY_HOURS,
        "attribution": "Contains data from Electricity Maps (https://www.electricitymaps.com), "
        "made available under the Open Database License (ODbL) 1.0",
        "zones": {},
    }
    for zone in sorted(zones):
        first, series, sources = merge(zones[zone], until_hour)
        valid = np.flatnonzero(~np.isnan(series))
        if len(valid) < MIN_FIT_HOURS:
            print(f"{zone}: too little data before {args.until}, skipped", file=sys.stderr)
            continue
        series = series[valid[0] : valid[-1] + 1]
        first += int(valid[0])
        params, mapes = fit_zone(first, series)
        doc["zones"][zone] = {
            "level": rounded(params.level, 1),
            "shape": rounded(params.shape, 3),
            "weights": rounded(params.weights, 4),
            "band_history": rounded(params.band_history, 3),
            "band_climatology": rounded(params.band_climatology, 3),
            "info": {
                "sources": sources,
                "fit_start": iso_hour(first),
                "fit_end": iso_hour(first + len(series) - 1),
                "hours": int((~np.isnan(series)).sum()),
                "backtest_mape_24h": round(mapes["model"], 4),
                "persistence_mape_24h": round(mapes["persistence_24h"], 4),
            },
        }
        print(
            f"{zone:14s} {len(series):6d} h  model {mapes['model']:.3f}  "
            f"persistence {mapes['persistence_24h']:.3f}  {', '.join(sources)}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(doc, separators=(",", ":")).encode()
    args.out.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))
    model_m = np.mean([z["info"]["backtest_mape_24h"] for z in doc["zones"].values()])
    pers_m = np.mean([z["info"]["persistence_mape_24h"] for z in doc["zones"].values()])
    print(
        f"{len(doc['zones'])} zones, mean in-sample 24 h MAPE model {model_m:.4f} vs persistence "
        f"{pers_m:.4f}; wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
