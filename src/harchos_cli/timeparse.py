"""Parsing of durations, deadlines and timestamps (all times are timezone-aware UTC inside)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from harchos_cli.errors import UsageError

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COMPACT = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_DURATION_HINT = "use e.g. 90m, 6h, 1h30m, 2d or ISO-8601 PT6H"
# Bounds that keep every date harchos computes (a deadline, a forecast's last hour) inside what
# `datetime` can hold, far beyond any forecast's use.
MAX_SPAN = timedelta(days=20 * 366)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """Parse `90m`, `6h`, `1h30m`, `2d`, `45s`, a bare number of hours, or ISO-8601 `PT6H`."""
    raw = text.strip()
    if not raw:
        raise UsageError("empty duration", hint=_DURATION_HINT)
    seconds: float | None = None
    iso = _ISO_DURATION.match(raw)
    if iso and raw.upper() not in {"P", "PT"} and any(iso.groupdict().values()):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        seconds = sum(_UNIT_SECONDS[k.lower()] * v for k, v in parts.items())
    elif re.fullmatch(r"\d+(?:\.\d+)?", raw):
        seconds = float(raw) * 3600
    elif re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[smhdw])+\s*", raw, re.IGNORECASE):
        seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _COMPACT.findall(raw))
    if seconds is None:
        raise UsageError(f"bad duration {text!r}", hint=_DURATION_HINT)
    if seconds <= 0:
        raise UsageError(f"duration {text!r} must be positive", hint=_DURATION_HINT)
    if seconds > MAX_SPAN.total_seconds():
        raise UsageError(f"duration {text!r} is longer than 20 years", hint=_DURATION_HINT)
    return timedelta(seconds=seconds)


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 timestamp; a naive one is taken as UTC. Returns aware UTC."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        value = as_utc(datetime.fromisoformat(raw))
    except (ValueError, OverflowError):
        raise UsageError(
            f"bad timestamp {text!r}", hint="use ISO-8601, e.g. 2022-03-01T00:00:00Z"
        ) from None
    if not EARLIEST <= value < LATEST:
        raise UsageError(
            f"timestamp {text!r} is out of range",
            hint=f"give a time between {EARLIEST.year} and {LATEST.year - 1}",
        )
    return value


def parse_deadline(text: str, now: datetime) -> datetime:
    """A deadline is either a duration from `now` (`12h`) or an ISO timestamp."""
    raw = text.strip()
    if re.match(r"^\d{4}-\d{2}-\d{2}", raw):
        deadline = parse_instant(raw)
        if deadline - now > MAX_SPAN:
            raise UsageError(
                f"deadline {text!r} is more than 20 years ahead",
                hint="give a duration from now (12h, 2d) or a nearer ISO timestamp",
            )
        return deadline
    try:
        return now + parse_duration(raw)
    except UsageError:
        raise UsageError(
            f"bad deadline {text!r}",
            hint="give a duration from now (12h, 2d) or an ISO timestamp (2022-03-01T18:00Z)",
        ) from None


def as_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def iso(value: datetime) -> str:
    """UTC ISO-8601 with a `Z` suffix, to the second."""
    return as_utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def format_duration(delta: timedelta) -> str:
    """Short human form: `6h`, `1h30m`, `2d3h`, `45s`."""
    total = round(delta.total_seconds())
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
