"""The `harchos` root command and the one place where errors become exit codes."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any

import typer

from harchos_cli import __version__
from harchos_cli.cli import (
    config_cmd,
    forecast,
    hubs,
    jobs,
    metrics,
    new,
    output,
    plan,
    regions,
    report,
    serve,
)
from harchos_cli.cli import run as run_cmd
from harchos_cli.errors import ExitCode, HarchosError, UsageError

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
app.add_typer(serve.app, name="serve")
app.add_typer(config_cmd.app, name="config")
app.command("report", short_help="Energy, emissions, cost and saving per job, and in total.")(
    report.report
)
app.add_typer(metrics.app, name="metrics", short_help="Export harchos's Prometheus metrics.")


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


class _PlainArgument(typer.core.TyperArgument):
    """An argument as click shows it: `NAME` (optional: `[NAME]`, several: `NAME...`), without
    typer's braces and Python type (`{NAME}`, `NAME <list[str]>`)."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return f"{name}..." if self.nargs != 1 else name

    def display_type_rich(self, ctx: Any) -> str | None:  # noqa: ARG002 (typer's signature)
        return None


def _tidy_help(command: Any) -> None:
    """Name every value in help and errors after what it is (`--hub HUB`, `TRACE`) rather than
    its Python type (`<str>`), for every command, present and future."""
    for param in command.params:
        if isinstance(param, typer.core.TyperArgument):
            param.__class__ = _PlainArgument
        if param.metavar is not None or not param.name:
            continue
        if param.param_type_name == "argument" or not (param.is_flag or param.count):
            param.metavar = param.name.upper()
    for sub in (getattr(command, "commands", None) or {}).values():
        _tidy_help(sub)


def _kinds(exc: BaseException) -> set[str]:
    """The class names of `exc`: click's errors are matched by name, so that click's own and the
    copy that typer may vendor are both recognised."""
    return {cls.__name__ for cls in type(exc).__mro__}


def _usage_error(exc: Exception) -> HarchosError:
    """A click error (bad option value, unknown option, missing argument) as harchos's own
    one-line error: click's message, its "did you mean" as the hint, else where help is."""
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    message = " ".join(str(text).split())
    hint = None
    for marker in (" (Possible options: ", " Did you mean"):
        head, sep, tail = message.partition(marker)
        if sep:
            message = head
            choices = (sep + tail).strip().strip("()?").split(":", 1)[-1]
            choices = choices.removeprefix("Did you mean").strip()
            hint = f"did you mean {' or '.join(c.strip() for c in choices.split(','))}?"
    message = message.rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "harchos"
    return UsageError(message, hint or f"see: {where} --help")


def _report(exc: HarchosError) -> int:
    if _state.debug:
        traceback.print_exc()
    print(_error_line(exc), file=sys.stderr)
    return int(exc.exit_code)


def _check_text(args: Sequence[str]) -> None:
    """Refuse an argument that is not UTF-8 (Python holds its bytes as lone surrogates): names,
    ids, regions and paths go into the state database and the output, which are UTF-8."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise UsageError(
                f"the argument '{shown}' is not UTF-8 text",
                hint="give names, ids and paths in UTF-8 (rename a file whose name is not)",
            ) from None


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` and return the exit code (the documented contract)."""
    _state.debug = os.environ.get("HARCHOS_DEBUG", "").lower() in {"1", "true", "yes"}
    output.reset()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        _check_text(args)
        command = typer.main.get_command(app)
        _tidy_help(command)
        # Not standalone: click's own errors come here, to be printed as harchos's.
        code = command.main(args=args, prog_name="harchos", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except HarchosError as exc:
        return _report(exc)
    except (Interrupted, KeyboardInterrupt):
        print("harchos: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        kinds = _kinds(exc)
        if "NoArgsIsHelpError" in kinds:
            getattr(exc, "show")()  # noqa: B009 (a group run without a command: its help)
            return int(ExitCode.USAGE)
        if "ClickException" in kinds:
            return _report(_usage_error(exc))
        if "Abort" in kinds:
            if isinstance(exc.__context__, KeyboardInterrupt):
                print("harchos: interrupted", file=sys.stderr)
                return int(ExitCode.INTERRUPTED)
            return _report(UsageError("no answer: the input ended", hint="run it in a terminal"))
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


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
