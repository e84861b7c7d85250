"""`harchos new` and `harchos update`: start a project from a blueprint, and keep it current."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from harchos_cli.cli import completion


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _shown(dest: Path) -> str:
    """`dest` as the user would type it: relative to the current folder when below it."""
    try:
        return os.path.relpath(dest) if dest.is_relative_to(Path.cwd()) else str(dest)
    except ValueError:
        return str(dest)


def new(
    blueprint: str | None = typer.Argument(
        None,
        help="A built-in blueprint (see --list), a local path or a git URL.",
        autocompletion=completion.blueprints,
    ),
    dest: Path | None = typer.Argument(
        None, help="The project folder to create (default: the blueprint's name)."
    ),
    list_: bool = typer.Option(False, "--list", help="List the built-in blueprints."),
    defaults: bool = typer.Option(
        False, "--defaults", help="Never prompt: take the default answer to every question."
    ),
    data: list[str] | None = typer.Option(
        None, "--data", "-d", help="Answer a question: key=value (repeatable)."
    ),
    trust: bool = typer.Option(
        False, "--trust", help="Allow the blueprint's tasks and extensions to run code here."
    ),
    force: bool = typer.Option(
        False, "--force", help="Render into a non-empty folder, overwriting the blueprint's files."
    ),
    vcs_ref: str | None = typer.Option(
        None, "--vcs-ref", help="A tag or commit of the blueprint instead of the newest."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a project from a blueprint."""
    from harchos_cli import blueprints
    from harchos_cli.errors import UsageError

    if list_:
        listing = blueprints.list_blueprints()
        if json_:
            _print_json(listing)
        else:
            width = max(len(item["name"]) for item in listing)
            for item in listing:
                typer.echo(f"{item['name']:<{width}}  {item['description']}")
        return
    if blueprint is None:
        raise UsageError("which blueprint?", hint="harchos new --list shows the built-in ones")
    answers_given = blueprints.parse_data(data or [])
    target = dest if dest is not None else blueprints.default_dest(blueprint)
    try:
        made = blueprints.create(
            blueprint,
            target,
            data=answers_given,
            defaults=defaults,
            trust=trust,
            force=force,
            vcs_ref=vcs_ref,
        )
    except KeyboardInterrupt:
        from harchos_cli.cli.app import Interrupted

        raise Interrupted() from None
    recorded = blueprints.answers(made)
    steps = [f"cd {_shown(made)}", *blueprints.next_steps(made)]
    if json_:
        _print_json(
            {
                "blueprint": blueprint,
                "source": recorded.get("_src_path"),
                "version": recorded.get("_commit"),
                "dest": str(made),
                "answers": {k: v for k, v in recorded.items() if not k.startswith("_")},
                "next_steps": steps,
            }
        )
        return
    version = recorded.get("_commit")
    typer.echo(
        f"Created {_shown(made)} from the {blueprint} blueprint"
        + (f" (version {version})." if version else ".")
    )
    typer.echo("\nNext steps:")
    for step in steps:
        typer.echo(f"  {step}")


def update(
    dest: Path = typer.Argument(
        Path("."), help="The project folder made by harchos new (default: here)."
    ),
    defaults: bool = typer.Option(
        False, "--defaults", help="Never prompt: keep your answers, defaults for new questions."
    ),
    trust: bool = typer.Option(
        False, "--trust", help="Allow the blueprint's tasks and migrations to run code here."
    ),
    vcs_ref: str | None = typer.Option(
        None, "--vcs-ref", help="Update to this tag or commit instead of the newest."
    ),
    json_: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Update a project to its blueprint's newest version.

    Your edits and answers are kept."""
    from harchos_cli import blueprints

    before = blueprints.answers(dest).get("_commit")
    try:
        made = blueprints.update(dest, defaults=defaults, trust=trust, vcs_ref=vcs_ref)
    except KeyboardInterrupt:
        from harchos_cli.cli.app import Interrupted

        raise Interrupted() from None
    after = blueprints.answers(made).get("_commit")
    clashes = blueprints.conflicts(made)
    if json_:
        _print_json(
            {"dest": str(made), "from_version": before, "to_version": after, "conflicts": clashes}
        )
        return
    if before == after:
        typer.echo(f"{_shown(made)} is already on blueprint version {after}.")
    else:
        typer.echo(f"Updated {_shown(made)} from blueprint version {before} to {after}.")
    if clashes:
        typer.echo(
            f"{len(clashes)} file(s) with conflicts: edit the parts between "
            "'<<<<<<< before updating' and '>>>>>>> after updating', then git add them:"
        )
        for path in clashes:
            typer.echo(f"  conflict: {path}")
    else:
        typer.echo("No conflicts. Review with: git diff")
