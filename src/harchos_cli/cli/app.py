"""The `harchos` root command and the one place where errors become exit codes."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

import typer

from harchos_cli import __version__
from harchos_cli.cli import config_cmd, forecast, hubs, jobs, new, plan, regions
from harchos_cli.cli import run as run_cmd
from harchos_cli.errors import ExitCode, HarchosError

app = typer.Typer(
    name="harchos",
    help="Carbon-aware AI workloads: forecast grid carbon intensity, and run training and "
    "serving when and where the grid is greenest.",
    no_args_is_help=True,
    # Plain help: rich-formatted help would cost ~0.1 s of imports on every `--help`.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("new")(new.new)
app.command("update")(new.update)
app.add_typer(forecast.app, name="forecast")
app.add_typer(regions.app, name="regions")
app.add_typer(run_cmd.app, name="run")
app.add_typer(hubs.app, name="hubs")
app.add_typer(jobs.app, name="jobs")
app.add_typer(plan.app, name="plan")
app.add_typer(config_cmd.app, name="config")


class Interrupted(BaseException):
    """Ctrl-C, raised instead of KeyboardInterrupt so that click does not turn it into exit 1."""


class _State:
    debug = False


_state = _State()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"harchos {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar="HARCHOS_DEBUG",
        help="Show tracebacks for errors.",
        show_envvar=True,
    ),
) -> None:
    """Carbon-aware AI workloads."""
    del version  # handled eagerly by its callback
    _state.debug = debug


def _on_sigint(_signum: int, _frame: FrameType | None) -> None:
    raise Interrupted()


def _error_line(exc: HarchosError) -> str:
    line = f"harchos: error: {exc.message}"
    return f"{line}\n  hint: {exc.hint}" if exc.hint else line


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` and return the exit code (the documented contract)."""
    _state.debug = os.environ.get("HARCHOS_DEBUG", "").lower() in {"1", "true", "yes"}
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(args=list(argv) if argv is not None else None, prog_name="harchos")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except HarchosError as exc:
        if _state.debug:
            traceback.print_exc()
        print(_error_line(exc), file=sys.stderr)
        return int(exc.exit_code)
    except Interrupted:
        print("harchos: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if _state.debug:
            traceback.print_exc()
        else:
            print(
                f"harchos: internal error: {type(exc).__name__}: {exc}\n"
                "  hint: run again with --debug for the traceback, and please report it",
                file=sys.stderr,
            )
        return int(ExitCode.WORK_FAILED)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
