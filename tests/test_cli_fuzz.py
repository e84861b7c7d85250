"""Every command of `harchos`, driven with hostile values for each option and argument.

The commands are read from the Typer app, so a new command or option is fuzzed without touching
this file. Whatever the values, a run ends in a documented exit code, never in an internal error
or a traceback; an error is one `harchos: error:` line (and its hint) on stderr.

The default profile keeps the suite fast (a few derandomised examples per command);
`nox -s fuzz` runs the long one (`HARCHOS_FUZZ_PROFILE=long`, many random examples per command).
Nothing starts background work: `run train|batch` always get `--dry-run`, every example has its own
empty `HARCHOS_HOME` and working folder (no project, no hub, no job), and no generated value is a
URL, so `serve router` and `new` never reach a server.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from clirunner import Result, harchos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harchos_cli.cli.app import app

settings.register_profile(
    "harchos-cli-quick",
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "harchos-cli-long",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROFILE = settings.get_profile(f"harchos-cli-{os.environ.get('HARCHOS_FUZZ_PROFILE', 'quick')}")

# Commands that would launch work get a flag that makes them only describe it.
SAFE_FLAGS: dict[tuple[str, ...], list[str]] = {
    ("run", "train"): ["--dry-run"],
    ("run", "batch"): ["--dry-run"],
    # Without them it serves until Ctrl-C.
    ("metrics", "serve"): ["--once", "--textfile", "harchos.prom"],
}
DOCUMENTED = {0, 1, 2, 3, 4}
# The root's --debug shows tracebacks on purpose, and its --version is tested elsewhere.
SKIPPED_OPTIONS = {"debug", "version", "install_completion", "show_completion"}

HOSTILE = [
    "",
    " ",
    "\t",
    "\n",
    "0",
    "-1",
    "-5",
    "1",
    "1.5",
    "1e309",
    "-1e309",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "9" * 40,
    "18446744073709551617",
    "0x10",
    "1_000",
    "é",
    "日本語",
    "🙂",
    "\u202eevil",
    "\udcff",
    "\x1b[31mred",
    "a\rb",
    "\x07",
    "--",
    "-",
    "--json",
    "--x",
    "-h",
    "--help=1",
    ",,",
    " , ",
    "eu-west,,",
    "/proc/nope",
    "/nonexistent/dir/file",
    "/",
    "/dev/null",
    ".",
    "..",
    "~",
    "~nosuchuser/x",
    "a" * 5000,
    "PT",
    "P1D",
    "99999999h",
    "0h",
    "-1h",
    "9999-12-31T23:00Z",
    "0001-01-01T00:00+05:00",
    "2022-02-30",
    "1:2",
    "2:1",
    "0:0",
    "a,a",
    "auto",
    "off",
    "local",
    "eu-west",
    "DE",
    "xx-nowhere-1",
    "replay:/dev/null",
    "replay:",
    "key=value",
    "=",
    "a=",
    "root@[::1]:22",
    "me@host:99999",
    "user@",
    "@host",
]
# No NUL (an operating system never passes one in argv) and no URL (nothing may be fetched).
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=40,
).filter(lambda s: "://" not in s and not s.startswith(("gh:", "gl:", "git@")))
VALUES = st.one_of(st.sampled_from(HOSTILE), TEXT, st.integers().map(str), st.floats().map(str))


def commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, click command) for every command that runs something, groups that run on their
    own (`harchos forecast`) included."""
    root = typer.main.get_command(app)

    def walk(path: tuple[str, ...], command: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None or (path and getattr(command, "invoke_without_command", False)):
            yield path, command
        for name, sub in sorted((subcommands or {}).items()):
            yield from walk((*path, name), sub)

    yield from walk((), root)


COMMANDS = {" ".join(path): command for path, command in commands() if path}


def test_every_command_is_fuzzed() -> None:
    assert {"forecast", "forecast backtest", "run train", "run batch", "run serve", "jobs cancel",
            "serve status", "serve router", "new", "hubs add"} <= set(COMMANDS)  # fmt: skip


@st.composite
def argv_for(draw: st.DrawFn, path: tuple[str, ...], command: Any) -> list[str]:
    argv = [*path, *SAFE_FLAGS.get(path, [])]
    options = [
        p for p in command.params
        if p.param_type_name == "option" and p.name not in SKIPPED_OPTIONS
    ]  # fmt: skip
    chosen = (
        draw(st.lists(st.sampled_from(options), max_size=5, unique_by=lambda p: p.name))
        if options
        else []
    )
    # A required option is always given, so that the values of the others are reached.
    chosen += [p for p in options if p.required and p not in chosen]
    for option in chosen:
        name = draw(st.sampled_from([*option.opts, *option.secondary_opts]))
        if option.is_flag or option.count:
            argv.append(name)
            continue
        for _ in range(draw(st.integers(1, 2)) if option.multiple else 1):
            argv.append(name)
            argv.extend(draw(VALUES) for _ in range(max(option.nargs, 1)))
    for argument in (p for p in command.params if p.param_type_name == "argument"):
        if argument.nargs == -1:
            values = draw(st.lists(VALUES, max_size=3))
            separate: bool = draw(st.booleans())
            if values and separate:
                argv.append("--")
            argv.extend(values)
            continue
        given: bool = draw(st.booleans())
        if argument.required or given:
            argv.extend(draw(VALUES) for _ in range(argument.nargs))
    return argv


def check(result: Result, argv: list[str]) -> None:
    where = f"harchos {argv!r}\nstdout: {result.out[-2000:]!r}\nstderr: {result.err[-2000:]!r}"
    assert result.code in DOCUMENTED, where
    assert "Traceback" not in result.err, where
    assert "internal error" not in result.err, where
    errors = [line for line in result.err.splitlines() if line.startswith("harchos: error:")]
    if result.code in (2, 3):
        assert len(errors) == 1 or "Usage:" in result.out + result.err, where
    assert len(errors) <= 1, where


@pytest.fixture
def fuzz_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider may wait on the network: it fails fast and harchos falls back."""
    monkeypatch.setenv("HARCHOS_HTTP_TIMEOUT", "0.5")
    monkeypatch.setenv("HARCHOS_HTTP_RETRIES", "0")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_hostile_values_end_in_a_documented_exit_code(
    capsys: pytest.CaptureFixture[str], fuzz_env: None, name: str
) -> None:
    path = tuple(name.split(" "))

    @settings(PROFILE)
    @given(argv=argv_for(path, COMMANDS[name]))
    def run(argv: list[str]) -> None:
        before = (os.getcwd(), os.environ.get("HARCHOS_HOME"))
        with tempfile.TemporaryDirectory(prefix="harchos-fuzz-") as scratch:
            home, work = Path(scratch, "home"), Path(scratch, "work")
            work.mkdir()
            os.environ["HARCHOS_HOME"] = str(home)
            os.chdir(work)
            try:
                check(harchos(capsys, *argv), argv)
            finally:
                os.chdir(before[0])
                if before[1] is None:
                    os.environ.pop("HARCHOS_HOME", None)
                else:
                    os.environ["HARCHOS_HOME"] = before[1]

    run()


def test_hostile_history_reaches_the_backtest_of_a_readable_trace(
    capsys: pytest.CaptureFixture[str], fuzz_env: None, tmp_path: Path
) -> None:
    # Above, TRACE is hostile too, so a --history that parses never reaches the model.
    trace = tmp_path / "t.csv"
    rows = [f"2030-01-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z,{300 + hour % 24}"
            for hour in range(20 * 24)]  # fmt: skip
    trace.write_text("datetime,carbon_intensity\n" + "\n".join(rows) + "\n")

    @settings(PROFILE)
    @given(value=VALUES)
    def run(value: str) -> None:
        argv = ["forecast", "backtest", str(trace), "--zone", "DE", "--history", value, "--json"]
        check(harchos(capsys, *argv), argv)

    run()
