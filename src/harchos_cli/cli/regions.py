"""`harchos regions`: the catalog of region names and the grid zones they mean."""

from __future__ import annotations

import typer

app = typer.Typer(help="List and look up regions and their grid zones.", rich_markup_mode=None)


@app.command("list")
def list_(
    kind: str | None = typer.Option(
        None, "--kind", help="Only this kind: alias, cloud, zone, ukgrid or watttime."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every region name harchos knows, with its zone."""
    from harchos_cli.carbon import regions
    from harchos_cli.cli import output
    from harchos_cli.errors import UsageError

    kinds = ("alias", "cloud", "zone", "ukgrid", "watttime")
    if kind is not None and kind.lower() not in kinds:
        raise UsageError(f"unknown kind {kind!r}", hint=f"choose one of: {', '.join(kinds)}")
    entries = [r for r in regions.all_regions() if kind is None or r.kind == kind.lower()]
    if json_:
        output.print_json([r.as_json() for r in entries])
    else:
        from harchos_cli.cli import render

        render.print_regions(entries)


@app.command()
def show(
    region: str = typer.Argument(..., help="A region name: eu-west, aws:eu-central-1, DE, …"),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What one region name resolves to."""
    from harchos_cli.carbon import regions
    from harchos_cli.cli import output

    resolved = regions.resolve(region)
    if json_:
        output.print_json(resolved.as_json())
    else:
        from harchos_cli.cli import render

        render.print_region(resolved)
