"""The region catalog: curated mappings, trace coverage, lookup rules and error hints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harchos_cli.carbon import regions
from harchos_cli.carbon.types import Region
from harchos_cli.errors import ExitCode, UsageError

REPO = Path(__file__).resolve().parents[1]

# From reference/carbon-data.md: names checked against other tools and the providers' own pages.
CROSS_CHECKED = [
    ("aws:eu-west-1", "IE"),
    ("aws:eu-central-1", "DE"),
    ("aws:eu-north-1", "SE-SE3"),
    ("aws:us-east-1", "US-MIDA-PJM"),
    ("aws:us-west-2", "US-NW-BPAT"),
    ("gcp:europe-west1", "BE"),
    ("gcp:europe-west4", "NL"),
    ("gcp:europe-north1", "FI"),
    ("gcp:us-central1", "US-MIDW-MISO"),
    ("azure:westeurope", "NL"),
    ("azure:northeurope", "IE"),
    ("azure:swedencentral", "SE-SE3"),
    ("azure:eastus", "US-MIDA-PJM"),
]

ALIASES = {
    "eu-west": "IE",
    "eu-central": "DE",
    "eu-north": "SE-SE3",
    "eu-south": "IT-NO",
    "uk-south": "GB",
    "us-east": "US-MIDA-PJM",
    "us-west": "US-NW-BPAT",
    "us-central": "US-MIDW-MISO",
    "ca-central": "CA-QC",
    "sa-east": "BR-CS",
    "ap-southeast": "SG",
    "ap-northeast": "JP-TK",
    "ap-south": "IN-WE",
    "au-southeast": "AU-NSW",
}

UK_REGIONS = {
    1: "North Scotland",
    2: "South Scotland",
    3: "North West England",
    4: "North East England",
    5: "Yorkshire",
    6: "North Wales",
    7: "South Wales",
    8: "West Midlands",
    9: "East Midlands",
    10: "East England",
    11: "South West England",
    12: "South England",
    13: "London",
    14: "South East England",
    15: "England",
    16: "Scotland",
    17: "Wales",
}

# How the traces without Electricity Maps ids name their regions.
ENSEMBLECI_ZONES = {
    "CISO": "US-CAL-CISO",
    "ERCO": "US-TEX-ERCO",
    "PJM": "US-MIDA-PJM",
    "ISNE": "US-NE-ISNE",
    "MISO": "US-MIDW-MISO",
    "EPE": "US-SW-EPE",
}
LETS_WAIT_AWHILE_ZONES = {"ger": "DE", "gb": "GB", "fr": "FR"}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARCHOS_HOME", str(tmp_path / "home"))


def _traces() -> Path:
    return Path(os.environ.get("HARCHOS_TRACES", REPO.parent / "shared" / "traces"))


def _trace_zones() -> set[str]:
    """Every zone named by the trace files, read from the files themselves."""
    root = _traces()
    derived = root / "derived" / "sukprasert_2022_123zones_hourly_lca.csv"
    with derived.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert header[0] == "datetime_utc"
    zones = set(header[1:])
    assert len(zones) == 123
    for folder in ("decarbonization-potential", "eco4cast"):
        for path in (root / folder).glob("*_hourly.csv"):
            zones.add(re.sub(r"_\d{4}_hourly$", "", path.stem))
    for path in (root / "EnsembleCI").glob("*_lifecycle_emissions.csv"):
        zones.add(ENSEMBLECI_ZONES[path.stem.split("_")[0]])
    for path in (root / "lets-wait-awhile").glob("*_ci.csv"):
        zones.add(LETS_WAIT_AWHILE_ZONES[path.stem.removesuffix("_ci")])
    return zones


@pytest.mark.parametrize(("name", "zone"), CROSS_CHECKED)
def test_cross_checked_cloud_regions(name: str, zone: str) -> None:
    region = regions.resolve(name)
    assert region.zone == zone
    assert region.kind == "cloud"
    assert region.name == name


@pytest.mark.parametrize(("alias", "zone"), sorted(ALIASES.items()))
def test_alias_maps_to_its_zone(alias: str, zone: str) -> None:
    region = regions.resolve(alias)
    assert (region.zone, region.kind, region.name) == (zone, "alias", alias)
    assert region.display_name == regions.zone_display_name(zone)


def test_each_alias_names_cloud_regions_on_its_own_zone() -> None:
    aliases = [r for r in regions.all_regions() if r.kind == "alias"]
    assert {r.name for r in aliases} >= set(ALIASES)
    for alias in aliases:
        named = re.findall(r"\b(?:aws|gcp|azure):[a-z0-9-]*[a-z0-9]", alias.note)
        assert named, f"{alias.name} does not say which cloud regions it stands for"
        for cloud in named:
            assert regions.resolve(cloud).zone == alias.zone, (alias.name, cloud)


def test_uk_south_uses_the_london_region() -> None:
    region = regions.resolve("uk-south")
    assert region.ukgrid_region == 13
    assert "ukgrid" in region.providers
    assert "London" in region.note


def test_at_least_fifteen_regions_per_cloud() -> None:
    counts: dict[str, int] = {}
    for region in regions.all_regions():
        if region.kind == "cloud":
            provider = region.name.partition(":")[0]
            counts[provider] = counts.get(provider, 0) + 1
    assert set(counts) == {"aws", "gcp", "azure"}
    assert min(counts.values()) >= 15, counts


def test_catalog_zones_are_exactly_the_trace_zones() -> None:
    zones = _trace_zones()
    assert {"BR", "NO", "US-SW-EPE", "US-NE-ISNE", "DE", "GB", "FR"} <= zones
    assert regions.zone_ids() == sorted(zones)


def test_every_trace_zone_resolves_with_a_human_name() -> None:
    for zone in _trace_zones():
        region = regions.resolve(zone)
        assert (region.zone, region.kind) == (zone, "zone")
        assert region.display_name not in ("", zone)
        assert regions.zone_display_name(zone) == region.display_name


@pytest.mark.parametrize(
    ("zone", "display_name"),
    [
        ("US-MIDA-PJM", "PJM Interconnection (US Mid-Atlantic)"),
        ("SE-SE3", "Sweden SE3 (Stockholm)"),
        ("IT-NO", "Italy North"),
        ("us-cal-ciso", "California ISO (US California)"),
    ],
)
def test_zone_display_name(zone: str, display_name: str) -> None:
    assert regions.zone_display_name(zone) == display_name


def test_zone_display_name_of_an_unknown_zone_is_the_id() -> None:
    assert regions.zone_display_name("XX-NOWHERE") == "XX-NOWHERE"


def test_every_entry_points_at_a_catalog_zone() -> None:
    zones = set(regions.zone_ids())
    for region in regions.all_regions():
        assert region.zone in zones, region.name
        assert region.display_name, region.name


def test_non_obvious_cloud_mappings_say_why() -> None:
    for name in ("aws:us-east-1", "aws:us-west-2", "gcp:us-central1", "azure:westus2"):
        assert regions.resolve(name).note, name


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("EU-WEST", "eu-west"),
        ("Eu-West", "eu-west"),
        ("  eu-west ", "eu-west"),
        ("AWS:EU-WEST-1", "aws:eu-west-1"),
        ("Azure:WestEurope", "azure:westeurope"),
        ("de", "DE"),
        ("us-cal-ciso", "US-CAL-CISO"),
        ("ukgrid:London", "ukgrid:13"),
        ("UKGRID:south east england", "ukgrid:14"),
        ("ukgrid:North Wales & Merseyside", "ukgrid:6"),
        ("watttime:caiso_north", "watttime:CAISO_NORTH"),
    ],
)
def test_lookup_is_case_insensitive(typed: str, canonical: str) -> None:
    assert regions.resolve(typed).name == canonical


@pytest.mark.parametrize(
    ("typed", "near"),
    [
        ("eu-wset", "eu-west"),
        ("atlantis", None),
        ("aws:eu-west-9", "aws:eu-west-1"),
        ("eu-west-1", "aws:eu-west-1"),
        ("westeurope", "azure:westeurope"),
        ("ukgrid:londn", "ukgrid:london"),
        ("gcp:europe-nort1", "gcp:europe-north1"),
    ],
)
def test_unknown_name_is_a_usage_error_with_suggestions(typed: str, near: str | None) -> None:
    with pytest.raises(UsageError) as caught:
        regions.resolve(typed)
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert int(error.exit_code) == 2
    assert error.message == f"unknown region {typed!r}"
    assert error.hint is not None
    assert "harchos regions list" in error.hint
    if near is not None:
        suggested = error.hint.removeprefix("did you mean: ").split("?")[0].split(", ")
        assert near in suggested, error.hint


def test_empty_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        regions.resolve("  ")


@pytest.mark.parametrize(("region_id", "name"), sorted(UK_REGIONS.items()))
def test_ukgrid_regions(region_id: int, name: str) -> None:
    region = regions.resolve(f"ukgrid:{region_id}")
    assert (region.name, region.zone, region.kind) == (f"ukgrid:{region_id}", "GB", "ukgrid")
    assert region.ukgrid_region == region_id
    assert region.display_name.startswith(name)
    assert "ukgrid" in region.providers
    slug = name.lower().replace(" ", "-")
    assert regions.resolve(f"ukgrid:{slug}") == region


def test_gb_has_national_ukgrid_coverage() -> None:
    gb = regions.resolve("GB")
    assert gb.ukgrid_region is None
    assert "ukgrid" in gb.providers
    assert "ukgrid" not in regions.resolve("GB-NIR").providers


def test_watttime_regions() -> None:
    caiso = regions.resolve("watttime:CAISO_NORTH")
    assert (caiso.zone, caiso.watttime_region, caiso.kind) == (
        "US-CAL-CISO",
        "CAISO_NORTH",
        "watttime",
    )
    assert regions.resolve("US-CAL-CISO").watttime_region == "CAISO_NORTH"
    assert regions.resolve("aws:us-east-1").watttime_region == "PJM_DC"
    for region in regions.all_regions():
        if region.kind == "watttime":
            assert region.name == f"watttime:{region.watttime_region}"


def test_providers_follow_coverage() -> None:
    for region in regions.all_regions():
        assert region.providers[:2] == ("embedded", "electricitymaps"), region.name
        assert ("watttime" in region.providers) == (region.watttime_region is not None)
        assert ("ukgrid" in region.providers) == (region.zone == "GB"), region.name
        if region.ukgrid_region is not None:
            assert region.zone == "GB"
            assert 1 <= region.ukgrid_region <= 17
        assert len(set(region.providers)) == len(region.providers)


def test_canonical_names_are_unique_and_resolve_to_themselves() -> None:
    entries = regions.all_regions()
    names = [r.name for r in entries]
    assert len(names) == len(set(names))
    assert len({n.casefold() for n in names}) == len(names)
    for region in entries:
        assert regions.resolve(region.name) == region


def test_all_regions_order_is_stable_and_grouped() -> None:
    first = regions.all_regions()
    assert first == regions.all_regions()
    kinds = [r.kind for r in first]
    order = ["alias", "cloud", "zone", "ukgrid", "watttime"]
    assert kinds == sorted(kinds, key=order.index)
    assert set(kinds) == set(order)
    zones = [r.name for r in first if r.kind == "zone"]
    assert zones == sorted(zones)
    assert isinstance(first[0], Region)


def test_docs_list_every_alias_and_cloud_region() -> None:
    text = (REPO / "docs" / "regions.md").read_text(encoding="utf-8")
    for region in regions.all_regions():
        if region.kind in ("alias", "cloud"):
            assert f"`{region.name}`" in text, region.name


def test_import_does_not_load_the_table() -> None:
    code = (
        "import sys\n"
        "import harchos_cli.carbon.regions as r\n"
        "assert r._catalog.cache_info().currsize == 0\n"
        "assert 'difflib' not in sys.modules\n"
        "r.resolve('eu-west')\n"
        "assert r._catalog.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
