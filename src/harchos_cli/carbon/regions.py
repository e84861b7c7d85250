"""The region catalog: every name a user may type, resolved to one grid zone.

Names come in five kinds, all case-insensitive:

- short aliases (`eu-west`, `us-east`), each standing for a group of cloud regions;
- cloud regions written `provider:region` (`aws:eu-west-1`, `gcp:europe-west1`,
  `azure:westeurope`);
- Electricity Maps zone ids (`DE`, `US-CAL-CISO`);
- UK Carbon Intensity regions (`ukgrid:13`, or by slug: `ukgrid:london`);
- WattTime regions (`watttime:CAISO_NORTH`).

The table ships as package data (`data/regions.json`) and is parsed once, on first use, so that
importing this module stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from harchos_cli.carbon.types import Region
from harchos_cli.errors import UsageError

__all__ = ["all_regions", "entsoe_eic", "resolve", "zone_display_name", "zone_ids"]

RegionKind = Literal["alias", "cloud", "zone", "ukgrid", "watttime"]

_CLOUD_LABELS = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}
_LIST_HINT = "harchos regions list shows all"


@dataclass(frozen=True)
class _Catalog:
    regions: tuple[Region, ...]
    # lookup key (normalised) -> region; `spelling` keeps the form shown in suggestions.
    index: dict[str, Region]
    spelling: dict[str, str]
    zone_names: dict[str, str]


def _normalise(name: str) -> str:
    key = name.strip().casefold()
    prefix, sep, rest = key.partition(":")
    if not sep:
        return key
    prefix, rest = prefix.strip(), rest.strip()
    if prefix == "ukgrid":
        rest = re.sub(r"[\s_-]+", "-", rest.replace("&", " and ")).strip("-")
    elif prefix == "watttime":
        rest = rest.replace("-", "_")
    return f"{prefix}:{rest}"


def _providers(
    zone: str, watttime_region: str | None, ukgrid_region: int | None
) -> tuple[str, ...]:
    # Order is informational only; the forecast service decides which provider to try first.
    out = ["embedded", "electricitymaps"]
    if zone == "GB" or ukgrid_region is not None:
        out.append("ukgrid")
    if watttime_region is not None:
        out.append("watttime")
    if zone in _eic_codes():
        out.append("entsoe")
    return tuple(out)


def _region(
    *,
    name: str,
    zone: str,
    display_name: str,
    kind: RegionKind,
    watttime_region: str | None,
    ukgrid_region: int | None,
    note: str,
) -> Region:
    return Region(
        name=name,
        zone=zone,
        display_name=display_name,
        kind=kind,
        providers=_providers(zone, watttime_region, ukgrid_region),
        watttime_region=watttime_region,
        ukgrid_region=ukgrid_region,
        note=note,
    )


@cache
def _read_data() -> dict[str, Any]:
    # Imported here: importlib.resources pulls in pathlib and tempfile, json is only for the load.
    import json
    from importlib import resources

    text = resources.files("harchos_cli.carbon").joinpath("data", "regions.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def _eic_codes() -> dict[str, str]:
    return {
        str(row["zone"]): str(row["entsoe_eic"])
        for row in _read_data()["zones"]
        if row.get("entsoe_eic")
    }


def entsoe_eic(zone: str) -> str | None:
    """The EIC code of the ENTSO-E area for a grid zone (`DE` gives `10Y1001A1001A83F`).

    Args:
        zone: An Electricity Maps zone id, any case.

    Returns:
        The code the Transparency Platform names the zone's bidding zone or control area by;
        None where harchos knows none or ENTSO-E publishes no data for the zone.
    """
    return _eic_codes().get(zone.strip().upper())


@cache
def _catalog() -> _Catalog:
    data = _read_data()
    zone_rows: list[dict[str, Any]] = data["zones"]
    zone_names = {row["zone"]: row["display_name"] for row in zone_rows}
    zone_wt = {row["zone"]: row.get("watttime_region") for row in zone_rows}

    def check_zone(zone: str, where: str) -> str:
        if zone not in zone_names:
            raise RuntimeError(f"regions.json: {where} maps to unknown zone {zone!r}")
        return zone

    regions: list[Region] = []
    keys: dict[str, tuple[Region, str]] = {}

    def add(region: Region, *extra_spellings: str) -> None:
        regions.append(region)
        for spelled in (region.name, *extra_spellings):
            key = _normalise(spelled)
            if key in keys:
                raise RuntimeError(f"regions.json: {spelled!r} is defined twice")
            keys[key] = (region, spelled)

    for row in data["aliases"]:
        zone = check_zone(row["zone"], row["name"])
        wt = row.get("watttime_region", zone_wt[zone])
        stands_for = ", ".join(row["stands_for"])
        add(
            _region(
                name=row["name"],
                zone=zone,
                display_name=row.get("display_name", zone_names[zone]),
                kind="alias",
                watttime_region=wt,
                ukgrid_region=row.get("ukgrid_region"),
                note=f"{row['note']} Stands for {stands_for}.",
            )
        )
    for row in data["cloud"]:
        zone = check_zone(row["zone"], row["name"])
        provider, _, cloud_region = row["name"].partition(":")
        add(
            _region(
                name=row["name"],
                zone=zone,
                display_name=f"{_CLOUD_LABELS[provider]} {cloud_region} ({row['location']})",
                kind="cloud",
                watttime_region=row.get("watttime_region", zone_wt[zone]),
                ukgrid_region=row.get("ukgrid_region"),
                note=row.get("note", ""),
            )
        )
    for row in sorted(zone_rows, key=lambda r: str(r["zone"])):
        add(
            _region(
                name=row["zone"],
                zone=row["zone"],
                display_name=row["display_name"],
                kind="zone",
                watttime_region=row.get("watttime_region"),
                ukgrid_region=None,
                note=row.get("note", ""),
            )
        )
    for row in data["ukgrid"]:
        region_id = int(row["id"])
        add(
            _region(
                name=f"ukgrid:{region_id}",
                zone=check_zone("GB", f"ukgrid:{region_id}"),
                display_name=f"{row['name']} (UK Carbon Intensity region {region_id})",
                kind="ukgrid",
                watttime_region=None,
                ukgrid_region=region_id,
                note="Regional forecast from the UK Carbon Intensity API; other providers see "
                "Great Britain as one zone (GB).",
            ),
            *(f"ukgrid:{slug}" for slug in row["slugs"]),
        )
    for row in data["watttime"]:
        zone = check_zone(row["zone"], f"watttime:{row['region']}")
        add(
            _region(
                name=f"watttime:{row['region']}",
                zone=zone,
                display_name=f"{row['display_name']} (WattTime {row['region']})",
                kind="watttime",
                watttime_region=row["region"],
                ukgrid_region=None,
                note=row.get("note", ""),
            )
        )
    return _Catalog(
        regions=tuple(regions),
        index={key: region for key, (region, _) in keys.items()},
        spelling={key: spelled for key, (_, spelled) in keys.items()},
        zone_names=zone_names,
    )


def _suggestions(key: str, catalog: _Catalog) -> list[str]:
    import difflib

    keys = list(catalog.index)
    prefix, sep, rest = key.partition(":")
    family = [k for k in keys if k.startswith(f"{prefix}:")] if sep else []
    if family:
        # Within one provider, compare what follows the prefix so the shared prefix doesn't
        # make every entry look close.
        by_rest = {k.partition(":")[2]: k for k in family}
        near = difflib.get_close_matches(rest, list(by_rest), n=5, cutoff=0.6)
        close = [by_rest[r] for r in near]
    else:
        # A bare cloud region (`eu-west-1`) most likely lacks its provider prefix.
        close = [k for k in keys if not sep and k.partition(":")[2] == key]
        close += difflib.get_close_matches(key, keys, n=5, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.4)
    seen: dict[str, None] = {}
    for k in close:
        seen.setdefault(catalog.spelling[k], None)
    return list(seen)[:5]


def resolve(name: str) -> Region:
    """Resolve a region name to its catalog entry.

    Args:
        name: An alias (`eu-west`), cloud region (`aws:eu-west-1`), zone id (`DE`), UK region
            (`ukgrid:13`, `ukgrid:london`) or WattTime region (`watttime:CAISO_NORTH`); any case.

    Returns:
        The `Region`, whose `name` is the canonical spelling (`ukgrid:london` gives `ukgrid:13`).

    Raises:
        UsageError: The name is not in the catalog; the hint lists the closest names.
    """
    catalog = _catalog()
    key = _normalise(name)
    region = catalog.index.get(key)
    if region is not None:
        return region
    if not key:
        raise UsageError("empty region name", hint=f"e.g. eu-west or aws:eu-west-1 ({_LIST_HINT})")
    near = _suggestions(key, catalog)
    hint = f"did you mean: {', '.join(near)}? ({_LIST_HINT})" if near else _LIST_HINT
    raise UsageError(f"unknown region {name.strip()!r}", hint=hint)


def all_regions() -> list[Region]:
    """Every catalog entry, in a stable order.

    Returns:
        Aliases, then cloud regions (AWS, GCP, Azure), then zones sorted by id, then UK regions
        1..17, then WattTime regions.
    """
    return list(_catalog().regions)


def zone_ids() -> list[str]:
    """Every grid zone in the catalog.

    Returns:
        Electricity Maps zone ids, sorted; the same zones the embedded model covers.
    """
    return sorted(_catalog().zone_names)


def zone_display_name(zone: str) -> str:
    """The human name of a grid zone.

    Args:
        zone: An Electricity Maps zone id, any case.

    Returns:
        The display name (`US-MIDA-PJM` gives "PJM Interconnection (US Mid-Atlantic)"); the id
        itself when the zone is not in the catalog, so that rendering never fails.
    """
    names = _catalog().zone_names
    wanted = zone.strip().upper()
    return names.get(wanted, zone)
