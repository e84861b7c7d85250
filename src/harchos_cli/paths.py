"""Where harchos keeps user state. `HARCHOS_HOME` moves all of it.

The folders harchos makes for its state are private to the user (0700): the state database, the
supervisors' logs and the job folders inside them hold the jobs' environments, which may carry
secrets. A folder that already exists keeps its mode (it may be one the user chose to share).
"""

from __future__ import annotations

import os
from pathlib import Path

from harchos_cli.errors import UsageError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def _home_override() -> Path | None:
    value = os.environ.get("HARCHOS_HOME")
    # os.path's expanduser leaves `~nosuchuser` as it is, where Path's raises.
    return Path(os.path.expanduser(value)) if value else None


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


def supervisor_dir() -> Path:
    """The folder of the supervisors' per-job folders (lock, diagnostics, local log copy)."""
    return data_dir() / "supervisor"


def private_dir(path: Path) -> Path:
    """Make `path` (and any missing parent) a folder only this user can enter (0700).

    Raises:
        UsageError: `path` or a parent is a file, or cannot be made (exit 2).
    """
    missing: list[Path] = []
    here = path
    while not here.is_dir():
        if here.exists() or here.is_symlink():
            raise _not_a_folder(here, path)
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise _not_a_folder(folder, path) from None
        except OSError as exc:
            raise UsageError(
                f"cannot create harchos's state folder {folder}: {exc.strerror}",
                hint="check that HARCHOS_HOME (or your user data folder) is writable",
            ) from None
    return path


def _not_a_folder(blocker: Path, wanted: Path) -> UsageError:
    return UsageError(
        f"{blocker} is a file, so harchos cannot make its state folder {wanted}",
        hint=f"move {blocker} aside, or set HARCHOS_HOME to a folder you can write",
    )


def private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 if it is missing; tighten it to 0600 if others can
    read it. Returns `path`.

    An existing file is changed by its path only, never opened: closing any descriptor of a file
    drops every POSIX lock this process holds on it, and SQLite's connections rely on theirs.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))
        return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(
            f"cannot create {path}: {exc.strerror}",
            hint="check that HARCHOS_HOME (or your user data folder) is writable",
        ) from None
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(PRIVATE_FILE)
    except OSError:
        pass  # not ours to change (a shared file): leave it as it is
    return path
