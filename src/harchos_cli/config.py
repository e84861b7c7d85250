"""Configuration: one table of settings, resolved by the documented precedence.

flag > `HARCHOS_*` (or the ecosystem's) environment variable > project `harchos.toml` >
user config file > default. Secrets are read only from the environment or the user config file.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harchos_cli import paths
from harchos_cli.errors import UsageError
from harchos_cli.secrets import MASK as _MASK

ValueType = Literal["str", "float", "int", "bool"]
Origin = Literal["flag", "env", "project", "user", "default"]


@dataclass(frozen=True)
class Setting:
    key: str
    default: str | float | int | bool | None
    env: str
    type: ValueType
    description: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "provider",
        "auto",
        "HARCHOS_PROVIDER",
        "str",
        "Carbon data: auto, embedded, electricitymaps, watttime, ukgrid, entsoe or replay:PATH.",
    ),
    Setting(
        "http.timeout",
        10.0,
        "HARCHOS_HTTP_TIMEOUT",
        "float",
        "Seconds before a provider request is abandoned (then harchos falls back).",
    ),
    Setting(
        "http.retries",
        2,
        "HARCHOS_HTTP_RETRIES",
        "int",
        "Retries, with exponential backoff, on HTTP 429 and 5xx.",
    ),
    Setting(
        "cache.enabled",
        True,
        "HARCHOS_CACHE",
        "bool",
        "Reuse provider answers within the same half hour.",
    ),
    Setting(
        "electricitymaps.base_url",
        "https://api.electricitymap.org/v3/",
        "HARCHOS_ELECTRICITYMAPS_URL",
        "str",
        "Electricity Maps API base URL.",
    ),
    Setting(
        "electricitymaps.token",
        None,
        "ELECTRICITYMAPS_API_TOKEN",
        "str",
        "Electricity Maps API token.",
        secret=True,
    ),
    Setting(
        "electricitymaps.emission_factor",
        "lifecycle",
        "HARCHOS_ELECTRICITYMAPS_EMISSION_FACTOR",
        "str",
        "Electricity Maps emission factors: lifecycle or direct.",
    ),
    Setting(
        "watttime.base_url",
        "https://api.watttime.org",
        "HARCHOS_WATTTIME_URL",
        "str",
        "WattTime API base URL.",
    ),
    Setting(
        "meter.interval",
        10.0,
        "HARCHOS_METER_INTERVAL",
        "float",
        "Seconds between the energy meter's samples beside each job on its hub (0: no meter).",
    ),
    Setting(
        "cost.currency",
        "USD",
        "HARCHOS_CURRENCY",
        "str",
        "Currency of prices that do not name one (a hub's, carbon_price_per_tonne).",
    ),
    Setting(
        "cost.carbon_price_per_tonne",
        None,
        "HARCHOS_CARBON_PRICE",
        "float",
        "Money per tonne of CO2eq, for --objective balanced (money plus priced carbon).",
    ),
    Setting(
        "plan.min_saving_percent",
        2.0,
        "HARCHOS_MIN_SAVING",
        "float",
        "A job waits for a greener window only when that saves at least this percent against "
        "starting at once (0: any saving).",
    ),
    Setting(
        "replay.any_zone",
        False,
        "HARCHOS_REPLAY_ANY_ZONE",
        "bool",
        "Apply a replayed trace to a hub whose region is another zone (refused otherwise).",
    ),
    Setting(
        "jobs.retention",
        None,
        "HARCHOS_JOBS_RETENTION",
        "str",
        "Forget finished jobs older than this (30d), at most hourly (harchos run, jobs list).",
    ),
    Setting("watttime.username", None, "WATTTIME_USER", "str", "WattTime user name."),
    Setting(
        "watttime.password", None, "WATTTIME_PASSWORD", "str", "WattTime password.", secret=True
    ),
    Setting(
        "watttime.signal",
        "co2_moer",
        "HARCHOS_WATTTIME_SIGNAL",
        "str",
        "WattTime signal: co2_moer (marginal) or co2_aoer (average).",
    ),
    Setting(
        "ukgrid.base_url",
        "https://api.carbonintensity.org.uk",
        "HARCHOS_UKGRID_URL",
        "str",
        "UK Carbon Intensity API base URL (no key needed).",
    ),
    Setting(
        "entsoe.base_url",
        "https://web-api.tp.entsoe.eu",
        "HARCHOS_ENTSOE_URL",
        "str",
        "ENTSO-E Transparency Platform base URL (requests go to its /api).",
    ),
    Setting(
        "entsoe.token",
        None,
        "ENTSOE_SECURITY_TOKEN",
        "str",
        "ENTSO-E Transparency Platform security token (free; see docs/providers.md).",
        secret=True,
    ),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
MASK = _MASK


def _coerce(setting: Setting, raw: Any, origin: str) -> str | float | int | bool:
    if isinstance(raw, (list, dict)):
        raise UsageError(
            f"bad value {raw!r} for setting {setting.key} (from {origin})",
            hint=f"expected a {setting.type}",
        )
    try:
        if setting.type == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if setting.type == "float":
            return float(raw)
        if setting.type == "int":
            return int(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise UsageError(
            f"bad value {raw!r} for setting {setting.key} (from {origin})",
            hint=f"expected a {setting.type}",
        ) from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


# Parsed files by path, with the (mtime, size) they were parsed at: a long-lived process (the
# scheduler plans many jobs of one project) reads a file again only when it changed.
_PARSED: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's tables ({} when it does not exist); the result is shared: read it only."""
    try:
        info = path.stat()
        known = _PARSED.get(path)
        if known is not None and known[0] == (info.st_mtime_ns, info.st_size):
            return known[1]
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        _PARSED[path] = ((info.st_mtime_ns, info.st_size), data)
        return data
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"{path} is not valid TOML: {exc}", hint="fix or remove the file"
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)
    except OSError:
        return False


def find_project_file(start: Path | None = None) -> Path | None:
    """The nearest `harchos.toml` in `start` or a parent directory."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "harchos.toml"
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Resolved:
    value: str | float | int | bool | None
    origin: Origin


class Config:
    """Resolved settings. Build with `Config.load()`; pass command-line flags as `flags`."""

    def __init__(
        self,
        values: dict[str, Resolved],
        project_file: Path | None,
        user_file: Path,
        warnings: list[str] | None = None,
    ) -> None:
        self._values = values
        self.project_file = project_file
        self.user_file = user_file
        self.warnings = warnings or []

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        project_file: Path | None = None,
        user_file: Path | None = None,
    ) -> Config:
        env = os.environ if environ is None else environ
        user_path = user_file or paths.config_file()
        project_path = project_file if project_file is not None else find_project_file()
        user = _flatten(_read_toml(user_path))
        project_table = _read_toml(project_path) if project_path else {}
        # A project's harchos.toml may carry a [settings] table; the rest belongs to jobs.
        settings_table = project_table.get("settings", {})
        if not isinstance(settings_table, dict):
            raise UsageError(
                f"{project_path}: settings must be a table",
                hint='write it as [settings] with keys under it, e.g. provider = "embedded"',
            )
        project = _flatten(settings_table)
        for key in project:
            if key in BY_KEY and BY_KEY[key].secret:
                raise UsageError(
                    f"{project_path} sets the secret {key}",
                    hint=f"secrets belong in the environment ({BY_KEY[key].env}) "
                    f"or in {user_path}, never in a project file",
                )
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        values: dict[str, Resolved] = {}
        for setting in SETTINGS:
            values[setting.key] = cls._resolve(setting, given, env, project, user)
        warnings = []
        if any(BY_KEY[k].secret for k in user if k in BY_KEY) and _readable_by_others(user_path):
            warnings.append(
                f"{user_path} holds secrets but others can read it; run: chmod 600 {user_path}"
            )
        return cls(values, project_path, user_path, warnings)

    @staticmethod
    def _resolve(
        setting: Setting,
        flags: Mapping[str, Any],
        env: Mapping[str, str],
        project: Mapping[str, Any],
        user: Mapping[str, Any],
    ) -> Resolved:
        if setting.key in flags:
            return Resolved(_coerce(setting, flags[setting.key], "flag"), "flag")
        if env.get(setting.env):
            return Resolved(_coerce(setting, env[setting.env], setting.env), "env")
        if setting.key in project:
            return Resolved(_coerce(setting, project[setting.key], "harchos.toml"), "project")
        if setting.key in user:
            return Resolved(_coerce(setting, user[setting.key], "user config"), "user")
        return Resolved(setting.default, "default")

    def get(self, key: str) -> Any:
        return self._values[key].value

    def origin(self, key: str) -> Origin:
        return self._values[key].origin

    def describe(self) -> list[dict[str, Any]]:
        """Every setting with its value (secrets masked), origin and environment variable."""
        rows = []
        for setting in SETTINGS:
            resolved = self._values[setting.key]
            value = resolved.value
            if setting.secret and value is not None:
                value = MASK
            rows.append(
                {
                    "key": setting.key,
                    "value": value,
                    "origin": resolved.origin,
                    "env": setting.env,
                    "secret": setting.secret,
                    "description": setting.description,
                }
            )
        return rows
