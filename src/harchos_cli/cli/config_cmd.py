"""`harchos config`: the resolved settings and where they live."""

from __future__ import annotations

import typer

app = typer.Typer(help="Show the configuration and where it lives.", rich_markup_mode=None)


@app.command(short_help="Every setting, its value and where it came from.")
def show(json_: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every setting, its value (secrets masked) and where the value came from."""
    from harchos_cli.cli import output
    from harchos_cli.config import Config

    config = Config.load()
    if json_:
        output.warn_all(config.warnings)
        output.print_json(
            {
                "user_file": str(config.user_file),
                "project_file": str(config.project_file) if config.project_file else None,
                "settings": config.describe(),
            }
        )
    else:
        from harchos_cli.cli import render

        render.print_config(config)


@app.command(short_help="Where the user configuration file is.")
def path(json_: bool = typer.Option(False, "--json", help="Print JSON with every path.")) -> None:
    """The user configuration file (with --json: also the state database and project file)."""
    from harchos_cli import paths
    from harchos_cli.config import find_project_file

    if json_:
        from harchos_cli.cli import output

        project = find_project_file()
        output.print_json(
            {
                "config": str(paths.config_file()),
                "state": str(paths.state_db()),
                "project": str(project) if project else None,
            }
        )
    else:
        typer.echo(str(paths.config_file()))
