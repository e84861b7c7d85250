"""Shell completion of values: regions, blueprints, hubs and job ids.

Each runs on every <TAB>, so each reads only what is on this machine (the region catalogue, the
hub inventory, the job store), never the network, and never raises: a completion that fails
offers nothing rather than printing a traceback into the user's prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Completer = Callable[[str], list[str]]


def _safely(values: Callable[[], Iterable[str]], incomplete: str) -> list[str]:
    try:
        return sorted({value for value in values() if value.startswith(incomplete)})
    except Exception:
        return []


def regions(incomplete: str) -> list[str]:
    """Region names; after a comma (`--region DE,FR`), the next name of the list."""
    from harchos_cli.carbon import regions as catalogue

    return _listed(lambda: (r.name for r in catalogue.all_regions()), incomplete)


def _listed(values: Callable[[], Iterable[str]], incomplete: str) -> list[str]:
    """Complete the last name of a comma-separated list, keeping the names before it."""
    head, comma, last = incomplete.rpartition(",")
    return [f"{head}{comma}{name}" for name in _safely(values, last)]


def blueprints(incomplete: str) -> list[str]:
    """The built-in blueprints' names."""
    from harchos_cli.blueprints import list_blueprints

    return _safely(lambda: (b["name"] for b in list_blueprints()), incomplete)


def _stored() -> bool:
    """Whether the state database exists: completing never creates it."""
    from harchos_cli import paths

    return paths.state_db().exists()


def _names(table: str) -> list[str]:
    """The `name` or `id` column of a store table: no row is decoded (listing hubs the usual
    way runs nvidia-smi for `local`)."""
    from harchos_cli import state

    if not _stored():
        return []
    column = "name" if table == "hubs" else "id"
    try:
        db = state.connect()
        try:
            return [row[0] for row in db.execute(f"SELECT {column} FROM {table}").fetchall()]
        finally:
            db.close()
    except Exception:  # a damaged store: `harchos jobs list` says so, not <TAB>
        return []


def _hub_names() -> list[str]:
    from harchos_cli.hubs.base import LOCAL

    return [LOCAL, *_names("hubs")]


def hubs(incomplete: str) -> list[str]:
    """`local` and the hubs in the inventory."""
    return _safely(_hub_names, incomplete)


def hubs_or_auto(incomplete: str) -> list[str]:
    """`--hub`: a hub, or `auto` (the greenest hub)."""
    return _safely(lambda: ["auto", *_hub_names()], incomplete)


def hub_list(incomplete: str) -> list[str]:
    """`--hubs A,B`: the next hub of the list."""
    return _listed(_hub_names, incomplete)


def job_ids(incomplete: str) -> list[str]:
    """Ids of the jobs in the store."""
    return _safely(lambda: _names("jobs"), incomplete)
