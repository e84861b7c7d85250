"""Read carbon-intensity traces (CSV files) into gap-free hourly series.

Accepted formats (detected from the header):

- Electricity Maps export: `Datetime (UTC),...,Zone Id,...,Carbon Intensity gCO₂eq/kWh (LCA),...`
  (the lifecycle column is used);
- two columns such as `datetime,carbon_intensity` (any time-like and intensity-like header names,
  timestamps with or without an offset; naive ones are UTC), which also covers the
  lets-wait-awhile `Time,Carbon Intensity` files and the EnsembleCI `,UTC time,carbon_intensity,...`
  files;
- the wide file `datetime_utc,AT,AU-NSW,...`, one column per zone (a zone must be given).

Sub-hourly values are averaged into the hour that contains them; gaps of up to `MAX_GAP_HOURS`
hours are filled by linear interpolation, longer gaps are an error. A sub-hourly trace also keeps
its own resolution (`Trace.slot_values`), which a replayed forecast serves: a timestamp given
twice counts once, at the mean of its values.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from harchos_cli.errors import UsageError

MAX_GAP_HOURS = 72
"""Longest run of missing hours that is interpolated rather than rejected."""

# Electricity Maps has spelt its lifecycle column "(LCA)" and, in newer exports, "(Life cycle)".
_LCA_MARKERS = ("(lca)", "(life cycle)", "(lifecycle)")
_ENSEMBLE_ZONES = {
    "CISO": "US-CAL-CISO",
    "ERCO": "US-TEX-ERCO",
    "PJM": "US-MIDA-PJM",
    "ISNE": "US-NE-ISNE",
    "MISO": "US-MIDW-MISO",
    "EPE": "US-SW-EPE",
}
_LWA_ZONES = {"ger": "DE", "gb": "GB", "fr": "FR"}
_ENSEMBLE_NAME = re.compile(r"^([A-Z]+)_(?:lifecycle|direct)_emissions$")
_LWA_NAME = re.compile(r"^([a-z]+)_ci$")
_ZONE_NAME = re.compile(r"^([A-Z]{2}(?:-[A-Z0-9]+)*)_\d{4}(?:_hourly)?$")
_FORMAT_HINT = (
    "expected an Electricity Maps export, two columns like 'datetime,carbon_intensity', "
    "or the wide 'datetime_utc,<zone>,...' file"
)


@dataclass
class Trace:
    """An hourly carbon-intensity series (gCO2eq/kWh) starting at `start`, one value per hour,
    and, for a sub-hourly file, its values at their own spacing (`step`, `slots`)."""

    zone: str | None
    start: datetime
    values: np.ndarray
    path: Path
    filled_hours: int = 0
    #: The trace's own spacing when finer than an hour (it divides the hour), else one hour.
    step: timedelta = timedelta(hours=1)
    #: Sub-hourly traces only: slot numbers (epoch seconds // step) and each slot's value.
    slots: np.ndarray | None = None
    slot_values: np.ndarray | None = None

    def value_at(self, moment: datetime) -> float:
        """The value of the `step` slot holding `moment`: the trace's own figure where it has
        one, else the hourly series' (a gap's interpolated hour)."""
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if self.slots is not None and self.slot_values is not None:
            slot = int(aware.timestamp() // self.step.total_seconds())
            index = int(np.searchsorted(self.slots, slot))
            if index < len(self.slots) and self.slots[index] == slot:
                return float(self.slot_values[index])
        return float(self.values[self.index_at(aware)])

    def end(self) -> datetime:
        """The end of the last hour covered (exclusive)."""
        return self.start + timedelta(hours=len(self.values))

    def index_at(self, moment: datetime) -> int:
        """The index of the hour containing `moment` (may be outside `0..len-1`)."""
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return int((aware - self.start).total_seconds() // 3600)


def zone_from_filename(path: Path) -> str | None:
    """Infer the grid zone from a known trace file name, or None when the name says nothing."""
    stem = path.name.split(".")[0]
    match = _ENSEMBLE_NAME.match(stem)
    if match and match.group(1) in _ENSEMBLE_ZONES:
        return _ENSEMBLE_ZONES[match.group(1)]
    match = _LWA_NAME.match(stem)
    if match and match.group(1) in _LWA_ZONES:
        return _LWA_ZONES[match.group(1)]
    match = _ZONE_NAME.match(stem)
    if match:
        return match.group(1)
    return None


def read_trace(path: Path, zone: str | None = None) -> Trace:
    """Read a trace file into an hourly `Trace`.

    Args:
        path: The CSV file.
        zone: The grid zone; required for the wide multi-zone file (it picks the column), and
            otherwise taking precedence over the zone found in the file or its name.

    Returns:
        The hourly series, gaps interpolated.

    Raises:
        UsageError: The file is missing, empty, in an unknown format, holds non-numeric values or
            has too long a gap.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise UsageError(f"trace file not found: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise UsageError(f"trace path is a directory: {path}", hint="give a CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read trace {path}: {exc}", hint=_FORMAT_HINT) from None
    rows = [row for row in rows if row and any(cell.strip() for cell in row)]
    if not rows:
        raise UsageError(f"trace file is empty: {path}", hint=_FORMAT_HINT)
    header = [cell.strip() for cell in rows[0]]
    body = rows[1:]
    if not body:
        raise UsageError(f"trace file has a header but no data: {path}", hint=_FORMAT_HINT)

    time_col, value_col, file_zone = _pick_columns(header, body, path, zone)
    times, values = _parse_rows(body, time_col, value_col, path)
    start, hourly, filled = _to_hourly(times, values, path)
    resolved = zone or file_zone or zone_from_filename(path)
    return Trace(resolved, start, hourly, path, filled, *_sub_hourly(times, values))


def _pick_columns(
    header: list[str], body: list[list[str]], path: Path, zone: str | None
) -> tuple[int, int, str | None]:
    lower = [name.lower().strip() for name in header]
    intensity = [
        i for i, name in enumerate(lower) if name.startswith("carbon intensity") and "gco" in name
    ]
    lifecycle = [i for i in intensity if any(m in lower[i] for m in _LCA_MARKERS)]
    if intensity:
        # An Electricity Maps export: always the lifecycle column, as the embedded model is.
        if not lifecycle:
            raise UsageError(
                f"{path.name} has no lifecycle carbon-intensity column",
                hint="export lifecycle (LCA) values from Electricity Maps",
            )
        zone_in_file: str | None = None
        if "zone id" in lower:
            zone_idx = lower.index("zone id")
            if zone_idx < len(body[0]) and body[0][zone_idx].strip():
                zone_in_file = body[0][zone_idx].strip()
        return _find_time_column(lower, path), lifecycle[0], zone_in_file

    value_candidates = [
        i
        for i, name in enumerate(lower)
        if "carbon_intensity" in name or "carbon intensity" in name or name == "intensity"
    ]
    if value_candidates:
        return _find_time_column(lower, path), value_candidates[0], None

    if len(header) == 2 and ("time" in lower[0] or "date" in lower[0]):
        return 0, 1, None
    if len(header) > 2 and ("time" in lower[0] or "date" in lower[0]):
        zones = header[1:]
        if zone is None:
            shown = ", ".join(zones[:6]) + (", ..." if len(zones) > 6 else "")
            raise UsageError(
                f"{path.name} holds one column per zone ({len(zones)} zones)",
                hint=f"pick one with --zone, e.g. {shown}",
            )
        by_upper = {name.upper(): i + 1 for i, name in enumerate(zones)}
        if zone.upper() not in by_upper:
            shown = ", ".join(zones[:6]) + (", ..." if len(zones) > 6 else "")
            raise UsageError(f"zone {zone!r} is not a column of {path.name}", hint=f"try {shown}")
        return 0, by_upper[zone.upper()], None

    raise UsageError(f"unknown trace format in {path.name}: header {header[:4]}", hint=_FORMAT_HINT)


def _find_time_column(lower: list[str], path: Path) -> int:
    for keyword in ("datetime", "time", "date"):
        for i, name in enumerate(lower):
            if keyword in name:
                return i
    raise UsageError(f"no time column in {path.name}", hint=_FORMAT_HINT)


def _parse_rows(
    body: list[list[str]], time_col: int, value_col: int, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    n = len(body)
    hours = np.empty(n, dtype=np.float64)
    values = np.empty(n, dtype=np.float64)
    for line, row in enumerate(body, start=2):
        if len(row) <= max(time_col, value_col):
            raise UsageError(f"{path.name} line {line}: too few columns", hint=_FORMAT_HINT)
        hours[line - 2] = _epoch_hours(row[time_col], path, line)
        cell = row[value_col].strip()
        if not cell or cell.lower() in {"nan", "null", "none", "na"}:
            values[line - 2] = np.nan
            continue
        try:
            values[line - 2] = float(cell)
        except ValueError:
            raise UsageError(
                f"{path.name} line {line}: non-numeric intensity {cell!r}",
                hint="intensity values must be numbers in gCO2eq/kWh",
            ) from None
    if np.any(values < 0):
        raise UsageError(f"{path.name}: negative intensity values", hint="check the column")
    return hours, values


def _epoch_hours(text: str, path: Path, line: int) -> float:
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"{path.name} line {line}: bad timestamp {text!r}",
            hint="timestamps must be ISO-8601, e.g. 2022-01-01 00:00:00 (UTC)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() / 3600.0


def _to_hourly(
    epoch_hours: np.ndarray, values: np.ndarray, path: Path
) -> tuple[datetime, np.ndarray, int]:
    slots = np.floor(epoch_hours).astype(np.int64)
    known = ~np.isnan(values)
    if not known.any():
        raise UsageError(f"{path.name}: no intensity values", hint=_FORMAT_HINT)
    first, last = int(slots[known].min()), int(slots[known].max())
    size = last - first + 1
    idx = slots[known] - first
    sums = np.bincount(idx, weights=values[known], minlength=size)
    counts = np.bincount(idx, minlength=size)
    have = counts > 0
    hourly = np.full(size, np.nan)
    hourly[have] = sums[have] / counts[have]
    missing = ~have
    filled = int(missing.sum())
    if filled:
        _check_gaps(missing, first, path)
        positions = np.arange(size)
        hourly[missing] = np.interp(positions[missing], positions[have], hourly[have])
    start = datetime.fromtimestamp(first * 3600, tz=UTC)
    return start, hourly, filled


def _sub_hourly(
    epoch_hours: np.ndarray, values: np.ndarray
) -> tuple[timedelta, np.ndarray | None, np.ndarray | None]:
    """The trace's own slots when its median spacing is finer than an hour and divides it:
    (step, slot numbers, slot means); else (one hour, None, None)."""
    known = ~np.isnan(values)
    seconds = np.round(epoch_hours[known] * 3600.0).astype(np.int64)
    distinct = np.unique(seconds)
    gaps = np.diff(distinct)
    step = int(np.median(gaps)) if len(gaps) else 3600
    if step <= 0 or step >= 3600 or 3600 % step:
        return timedelta(hours=1), None, None
    slots, inverse = np.unique(seconds // step, return_inverse=True)
    sums = np.bincount(inverse, weights=values[known], minlength=len(slots))
    counts = np.bincount(inverse, minlength=len(slots))
    return timedelta(seconds=step), slots, sums / counts


def _check_gaps(missing: np.ndarray, first: int, path: Path) -> None:
    padded = np.concatenate(([0], missing.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    runs = edges[1::2] - edges[0::2]
    longest = int(runs.max())
    if longest > MAX_GAP_HOURS:
        at = datetime.fromtimestamp((first + int(edges[0::2][runs.argmax()])) * 3600, tz=UTC)
        raise UsageError(
            f"{path.name}: {longest} hours missing from {at:%Y-%m-%d %H:%M}Z",
            hint=f"gaps up to {MAX_GAP_HOURS} h are interpolated; split the file at the gap",
        )


def read_wide_traces(path: Path) -> list[Trace]:
    """Read every zone column of a wide `datetime_utc,<zone>,...` file (one parse for all).

    Raises:
        UsageError: As `read_trace`.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as exc:
        raise UsageError(f"cannot read trace {path}: {exc}", hint="check the path") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UsageError(f"trace file is empty: {path}", hint=_FORMAT_HINT)
    header = [cell.strip() for cell in rows[0]]
    hours = np.array([_epoch_hours(row[0], path, i + 2) for i, row in enumerate(rows[1:])])
    traces: list[Trace] = []
    for col, zone in enumerate(header[1:], start=1):
        try:
            values = np.array(
                [float(row[col]) if row[col].strip() else np.nan for row in rows[1:]],
                dtype=np.float64,
            )
        except (ValueError, IndexError):
            raise UsageError(
                f"{path.name}: malformed values in column {zone!r}",
                hint="intensity values must be numbers in gCO2eq/kWh",
            ) from None
        start, hourly, filled = _to_hourly(hours, values, path)
        traces.append(Trace(zone, start, hourly, path, filled, *_sub_hourly(hours, values)))
    return traces
