"""Where harchos keeps user state. `HARCHOS_HOME` moves all of it."""

from __future__ import annotations

import os
from pathlib import Path


def _home_override() -> Path | None:
    value = os.environ.get("HARCHOS_HOME")
    return Path(value).expanduser() if value else None


def config_file() -> Path:
    """The user configuration file (TOML, mode 0600 because it may hold tokens)."""
    home = _home_override()
    if home is not None:
        return home / "config.toml"
    from platformdirs import user_config_path

    return user_config_path("harchos", appauthor=False) / "config.toml"


def data_dir() -> Path:
    """The user data directory holding the state database."""
    home = _home_override()
    if home is not None:
        return home
    from platformdirs import user_data_path

    return user_data_path("harchos", appauthor=False)


def state_db() -> Path:
    return data_dir() / "harchos.db"
