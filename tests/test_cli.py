"""The CLI surface: help, version, exit codes, errors, config commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli import __version__

# pydantic is not here: typer itself imports it to build a subcommand's parameters.
HEAVY = ("httpx", "copier", "numpy", "torch", "accelerate", "rich")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["forecast", "--help"], ["regions", "--help"], ["plan", "evaluate", "--help"]],
)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    probe = (
        "import sys\n"
        "from harchos_cli.cli.app import run\n"
        f"code = run({argv!r})\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "--version")
    assert result.code == 0
    assert result.out.strip() == f"harchos {__version__}"


def test_python_dash_m_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harchos_cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert __version__ in done.stdout


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "frobnicate")
    assert result.code == 2
    assert result.err.splitlines() == [
        "harchos: error: no such command 'frobnicate'",
        "  hint: see: harchos --help",
    ]


def test_unknown_region_exits_2_with_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "regions", "show", "eu-wset")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert lines[0] == "harchos: error: unknown region 'eu-wset'"
    assert "eu-west" in lines[1]
    assert "Traceback" not in result.err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "--debug", "regions", "show", "atlantis")
    assert result.code == 2
    assert "Traceback" in result.err


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("eu-west", "IE"),
        ("aws:eu-central-1", "DE"),
        ("azure:westeurope", "NL"),
        ("gcp:europe-west1", "BE"),
    ],
)
def test_regions_show_json(capsys: pytest.CaptureFixture[str], name: str, zone: str) -> None:
    result = harchos(capsys, "regions", "show", name, "--json")
    assert result.code == 0
    assert result.json()["zone"] == zone


def test_regions_list_json_and_kind_filter(capsys: pytest.CaptureFixture[str]) -> None:
    every = harchos(capsys, "regions", "list", "--json").json()
    aliases = harchos(capsys, "regions", "list", "--kind", "alias", "--json").json()
    assert {"eu-west", "us-east", "au-southeast"} <= {r["name"] for r in aliases}
    assert all(r["kind"] == "alias" for r in aliases)
    assert len(every) > len(aliases)
    assert harchos(capsys, "regions", "list", "--kind", "planet").code == 2


def test_regions_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "regions", "list")
    assert result.code == 0
    assert "azure:westeurope" in result.out
    assert "Netherlands" in result.out


def test_config_show_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "tok-123456")
    result = harchos(capsys, "config", "show", "--json")
    assert result.code == 0
    settings = {row["key"]: row for row in result.json()["settings"]}
    assert settings["electricitymaps.token"]["value"] == "********"
    assert settings["electricitymaps.token"]["origin"] == "env"
    table = harchos(capsys, "config", "show")
    assert "tok-123456" not in table.out + table.err
    assert "electricitymaps.token" in table.out


def test_config_path_follows_harchos_home(
    capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    result = harchos(capsys, "config", "path")
    assert Path(result.out.strip()) == isolated_home / "config.toml"
    paths = harchos(capsys, "config", "path", "--json").json()
    assert paths["state"] == str(isolated_home / "harchos.db")


def test_bad_setting_in_environment_is_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARCHOS_HTTP_TIMEOUT", "forever")
    result = harchos(capsys, "config", "show")
    assert result.code == 2
    assert "HARCHOS_HTTP_TIMEOUT" in result.err


def test_sigint_exits_130(tmp_path: Path) -> None:
    # A real Ctrl-C: the CLI waits on a fifo for a trace; SIGINT must give 130 and one line.
    fifo = tmp_path / "trace.csv"
    os.mkfifo(fifo)
    env = {**os.environ, "HARCHOS_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harchos_cli", "forecast", "backtest", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    # Opening the write end succeeds only once the CLI has opened the read end, i.e. it is
    # past start-up and blocked reading the trace.
    deadline = time.monotonic() + 30
    writer = None
    while writer is None and time.monotonic() < deadline:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.05)
    assert writer is not None, "the CLI never opened the trace"
    try:
        time.sleep(0.2)
        proc.send_signal(2)
        _out, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err


def test_json_is_valid_for_regions_show(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "regions", "show", "ukgrid:13", "--json")
    data = json.loads(result.out)
    assert data["zone"] == "GB"
    assert data["ukgrid_region"] == 13
    assert "ukgrid" in data["providers"]


def test_a_damaged_state_database_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "harchos.db").write_text("this is not a database")
    result = harchos(capsys, "hubs", "list")
    assert result.code == 2
    assert "cannot open the state database" in result.err
    assert "Traceback" not in result.err
    # The forecast does not need the state: its cache just switches off.
    assert harchos(capsys, "forecast", "-r", "DE", "--json").code == 0


def test_an_unwritable_home_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HARCHOS_HOME", str(blocker / "home"))
    for args in (["hubs", "list"], ["new", "data-pipeline", str(tmp_path / "p"), "--defaults"]):
        result = harchos(capsys, *args)
        assert result.code == 2, (args, result.err)
        assert "HARCHOS_HOME" in result.err
        assert "Traceback" not in result.err
