"""Issue 11: inputs that ended in "internal error", misleading output, click's own errors, Ctrl-C
at start-up, and state that harchos must refuse rather than use."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clirunner import Result, harchos
from conftest import REPO
from test_forecast_cli import write_trace

from harchos_cli import paths, state
from harchos_cli.carbon.windows import saving_text
from harchos_cli.errors import UsageError
from harchos_cli.jobs.store import Job, JobStore, new_id

BEYOND = "not a forecast of those days"


def one_error(result: Result, code: int = 2) -> str:
    """The run ended with `code` and exactly one `harchos: error:` line (and its hint)."""
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    assert "internal error" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("harchos: error: ")]
    assert len(errors) == 1, result.err
    return result.err


def batch_project(where: Path, extra: str = "") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "harchos.toml").write_text(
        f'[job]\nkind = "batch"\ncommand = "true"\n[carbon]\nregion = "eu-west"\n{extra}',
        encoding="utf-8",
    )
    os.chdir(where)
    return where


# -- inputs that ended in "internal error" --------------------------------------------------------


@pytest.mark.parametrize("spec", [",,", " , ", ","])
def test_a_region_list_of_only_commas_is_no_region(
    capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    err = one_error(harchos(capsys, "forecast", "--region", spec))
    assert "no region given" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "NaN"])
@pytest.mark.parametrize(
    "command",
    [
        ["forecast", "--region", "eu-west"],
        ["forecast", "--region", "eu-west", "--json"],
        ["run", "batch", "--dry-run"],
        ["run", "batch", "--dry-run", "--json"],
    ],
)
def test_thresholds_that_are_no_intensity_are_refused_everywhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str], value: str
) -> None:
    batch_project(tmp_path / "p")
    result = harchos(capsys, *command, f"--threshold={value}")
    assert "is not an intensity" in one_error(result)
    assert result.out == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-1.0"])
def test_a_threshold_in_harchos_toml_that_is_no_intensity_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    batch_project(tmp_path / "p", f"threshold = {value}\n")
    err = one_error(harchos(capsys, "run", "batch", "--defer-until-green", "--dry-run"))
    assert "carbon.threshold" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--at", "9999-12-31T23:00Z"],
        ["--at", "0001-01-01T00:00+05:00"],
        ["--deadline", "99999999h"],
        ["--deadline", "9999-12-31T00:00Z"],
        ["--duration", "1" + "0" * 400 + "h"],
    ],
)
def test_dates_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    one_error(harchos(capsys, "forecast", "--region", "eu-west", *args))


def test_a_harchos_toml_that_is_not_utf8_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = batch_project(tmp_path / "p")
    (project / "harchos.toml").write_bytes(b'[job]\nname = "caf\xe9"\n')
    for command in (["run", "batch", "--dry-run"], ["forecast", "--region", "eu-west"]):
        err = one_error(harchos(capsys, *command))
        assert "harchos.toml" in err
        assert "UTF-8" in err


def test_a_config_toml_that_is_not_utf8_names_the_file(
    capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_bytes(b"provider = '\xff\xfe'\n")
    err = one_error(harchos(capsys, "config", "show"))
    assert str(isolated_home / "config.toml") in err
    assert "UTF-8" in err


def test_new_into_a_folder_that_cannot_be_made_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = one_error(harchos(capsys, "new", "pytorch-training", "/proc/nope", "--defaults"))
    assert "/proc/nope" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_error(harchos(capsys, "new", "data-pipeline", str(blocker / "a" / "b"), "--defaults"))
    assert blocker.read_text() == ""


def test_a_file_where_the_supervisor_folder_goes_leaves_no_job_to_run_later(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_home: Path
) -> None:
    batch_project(tmp_path / "p")
    isolated_home.mkdir(parents=True)
    (isolated_home / "supervisor").write_text("not a folder")
    for detach in (["--detach"], []):
        err = one_error(harchos(capsys, "run", "batch", *detach))
        assert "supervisor" in err
        assert "aside" in err
    listed = harchos(capsys, "jobs", "list", "--json")
    assert (listed.code, listed.json()) == (0, []), listed.err
    # Once the file is gone, nothing that was reported as failed starts.
    (isolated_home / "supervisor").unlink()
    again = harchos(capsys, "jobs", "list", "--json")
    assert (again.code, again.json()) == (0, []), again.err
    assert "restarted" not in again.err


def test_a_job_row_with_bad_json_is_refused_with_the_move_aside_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = JobStore()
    try:
        job = store.create(Job(id=new_id(), kind="batch", name="p", project_dir="/p",
                               state="done", request={"kind": "batch"}))  # fmt: skip
        store.db.execute("UPDATE jobs SET request = '{not json' WHERE id = ?", (job.id,))
    finally:
        store.close()
    for command in (["jobs", "list"], ["jobs", "show", job.id], ["jobs", "logs", job.id]):
        err = one_error(harchos(capsys, *command))
        assert "move harchos.db aside" in err
        assert job.id in err


def test_a_database_from_a_newer_harchos_is_refused_and_left_as_it_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    state.connect().close()
    newer = len(state.MIGRATIONS) + 1
    db = sqlite3.connect(paths.state_db())
    db.execute(f"PRAGMA user_version = {newer}")
    db.close()
    err = one_error(harchos(capsys, "jobs", "list"))
    assert "move harchos.db aside" in err
    assert "newer" in err
    with pytest.raises(UsageError):
        state.connect()
    db = sqlite3.connect(paths.state_db())
    assert db.execute("PRAGMA user_version").fetchone()[0] == newer
    db.close()


# -- dangerous or misleading ----------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["", " ", "\t"])
def test_an_empty_job_id_is_a_usage_error_not_every_job(
    capsys: pytest.CaptureFixture[str], job_id: str
) -> None:
    store = JobStore()
    try:
        store.create(Job(id=new_id(), kind="batch", name="p", project_dir="/p", state="done",
                         request={"kind": "batch"}))  # fmt: skip
    finally:
        store.close()
    for command in ("cancel", "show", "logs", "pause"):
        assert "no job id given" in one_error(harchos(capsys, "jobs", command, job_id))


def test_new_refuses_a_plain_folder_before_writing_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    dest = tmp_path / "dest"
    err = one_error(harchos(capsys, "new", str(plain), str(dest), "--defaults"))
    assert "not a blueprint" in err
    assert not dest.exists()
    assert not list(tmp_path.glob(".dest*"))
    assert [p.name for p in plain.iterdir()] == ["notes.txt"]


def test_times_not_in_this_year_show_their_year(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from harchos_cli.cli.render import local

    now = datetime.now(UTC)
    assert str(now.year) not in local(now)
    assert "2022" in local(datetime(2022, 2, 1, 12, tzinfo=UTC))
    trace = tmp_path / "trace.csv"
    write_trace(trace)
    result = harchos(capsys, "forecast", "--provider", f"replay:{trace}", "--region", "DE",
                     "--no-plot", "--hours", "3")  # fmt: skip
    assert result.code == 0, result.err
    assert "Greenest start" in result.out
    table = [line for line in result.out.splitlines() if " 2022 " in line]
    assert len(table) >= 4  # three hours, the greenest start, and the deadline
    far = harchos(capsys, "forecast", "--region", "eu-west", "--deadline", "99999h",
                  "--no-plot", "--hours", "1")  # fmt: skip
    assert far.code == 0, far.err
    year = (now + timedelta(hours=99999)).year
    assert f" {year} " in far.out.split("finishing by", 1)[1].splitlines()[0]


def test_a_search_beyond_what_the_forecast_knows_is_warned(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    near = harchos(capsys, "forecast", "--region", "eu-west", "--deadline", "24h", "--json")
    assert near.code == 0, near.err
    assert BEYOND not in near.err
    far = harchos(capsys, "forecast", "--region", "eu-west", "--deadline", "10d", "--json")
    assert far.code == 0, far.err
    assert BEYOND in far.err
    batch_project(tmp_path / "p")
    plan = harchos(capsys, "run", "batch", "--defer-until-green", "--deadline", "10d",
                   "--dry-run", "--json")  # fmt: skip
    assert plan.code == 0, plan.err
    assert any(BEYOND in warning for warning in plan.json()["warnings"])
    # A replayed trace knows every hour it holds.
    trace = tmp_path / "trace.csv"
    write_trace(trace)
    replay = harchos(capsys, "forecast", "--provider", f"replay:{trace}", "--region", "DE",
                     "--deadline", "10d", "--json")  # fmt: skip
    assert replay.code == 0, replay.err
    assert BEYOND not in replay.err


def test_savings_are_rounded_to_what_the_band_supports() -> None:
    assert saving_text(0.12345, 0.0) == "12.3%"
    assert saving_text(0.12345, 0.05) == "12%"
    assert saving_text(0.12345, 0.35) == "~10%"
    assert saving_text(0.44, 0.35) == "~45%"
    assert saving_text(0.12345, None) == "12%"


def test_text_rounds_the_saving_and_json_keeps_it_exact(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = harchos(capsys, "forecast", "--region", "eu-west", "--duration", "3h", "--json").json()
    text = harchos(capsys, "forecast", "--region", "eu-west", "--duration", "3h", "--no-plot")
    saving = data["best_window"]["saving_vs_now"]
    assert saving == round(saving, 4)
    assert f"~{round(saving * 20) * 5}% less than starting now" in text.out
    batch_project(tmp_path / "p")
    plan = harchos(capsys, "run", "batch", "--defer-until-green", "--dry-run", "--json").json()
    assert 0.05 < plan["uncertainty"] < 1
    shown = harchos(capsys, "run", "batch", "--defer-until-green", "--dry-run").out
    assert f"~{round(plan['saving_vs_now'] * 20) * 5}% less than starting now" in shown


# -- what the property-based CLI test found (tests/test_cli_fuzz.py) -------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "show", "\udcff"],  # a non-UTF-8 byte in argv, as Python holds it
        ["hubs", "remove", "caf\udce9"],
        ["serve", "stop", "--deployment", "\udcff"],
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert "is not UTF-8 text" in one_error(harchos(capsys, *args))


@pytest.mark.parametrize(
    "args",
    [
        ["new", "a" * 5000],
        ["new", "pytorch-training", "b" * 5000, "--defaults"],
        ["update", "c" * 5000],
        ["new", "~nosuchuser/x"],
    ],
)
def test_paths_the_system_refuses_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    one_error(harchos(capsys, *args))


@pytest.mark.parametrize(
    "args",
    [
        ["--pue", "nan"],
        ["--pue", "inf"],
        ["--price-per-gpu-hour", "nan"],
        ["--price-per-gpu-hour", "inf"],
        ["--identity", "~nosuchuser/key"],
    ],
)
def test_hubs_add_refuses_values_that_are_no_number_or_no_path(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    one_error(harchos(capsys, "hubs", "add", "box", "--ssh", "me@192.0.2.7", *args, "--json"))
    assert harchos(capsys, "hubs", "show", "box").code == 2  # nothing was stored


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-2"])
@pytest.mark.parametrize("kind", ["train", "batch", "serve"])
def test_a_speedup_that_is_no_positive_number_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, value: str
) -> None:
    batch_project(tmp_path / "p")
    assert "--speedup" in one_error(harchos(capsys, "run", kind, f"--speedup={value}"))


# -- help and errors ------------------------------------------------------------------------------


def test_help_names_values_after_what_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    train = harchos(capsys, "run", "train", "--help").out
    assert "Usage: harchos run train [OPTIONS] [ARGS]..." in train
    assert "--hub HUB " in train
    assert "<str>" not in train
    assert "[[--" not in train
    assert (
        "Usage: harchos forecast [OPTIONS] [backtest TRACE | history]"
        in harchos(capsys, "forecast", "--help").out
    )
    assert "{trace}" not in harchos(capsys, "forecast", "backtest", "--help").out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["forecast", "--threshold", "abc"], "invalid value for '--threshold'"),
        (["forecast", "--hours", "0"], "invalid value for '--hours'"),
        (["forecast", "--regoin", "DE"], "no such option: --regoin"),
        (["jobs", "show"], "missing argument 'JOB_ID'"),
        (["run", "train", "--hub"], "option '--hub' requires an argument"),
        (["frobnicate"], "no such command 'frobnicate'"),
    ],
)
def test_click_errors_are_one_line_with_a_hint(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    result = harchos(capsys, *args)
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 2, result.err
    assert lines[0].startswith(f"harchos: error: {message}")
    assert lines[1].startswith("  hint: ")
    assert "Usage:" not in result.err


def test_a_group_without_its_command_still_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "jobs")
    assert result.code == 2
    assert "Usage:" in result.out + result.err


def test_the_console_script_is_the_light_entry_point() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["harchos"] == "harchos_cli.cli.entry:main"


def _entry(code: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def test_ctrl_c_while_the_cli_is_imported_prints_no_traceback() -> None:
    # Deterministic: the interrupt lands while the entry point imports typer.
    code = (
        "import sys\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Stop())\n"
        "sys.argv = ['harchos', '--version']\n"
        "from harchos_cli.cli.entry import main\n"
        "main()\n"
    )
    process = _entry(code)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err == "harchos: interrupted\n"


def test_a_real_ctrl_c_at_start_up_prints_no_traceback() -> None:
    # A real SIGINT, while `main` imports the CLI: the child says "go" from inside that import
    # and lingers there until the signal ends the sleep, so it cannot land before `main` began or
    # after it ended.
    code = (
        "import signal, sys, time\n"
        # As a terminal starts it: Ctrl-C neither ignored nor blocked, whatever this test
        # process inherited (CI once ran it where SIGINT never reached the child).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        "class Go:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'harchos_cli.cli.app':\n"
        "            sys.stderr.write('go\\n'); sys.stderr.flush(); time.sleep(60)\n"
        "sys.meta_path.insert(0, Go())\n"
        "sys.argv = ['harchos', 'forecast', '--region', 'eu-west', '--json']\n"
        "from harchos_cli.cli.entry import main\n"
        "main()\n"
    )
    process = _entry(code)
    assert process.stderr is not None
    assert process.stderr.readline() == "go\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip() == "harchos: interrupted"
    assert out == ""


def test_the_readme_says_where_the_traces_come_from() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "HARCHOS_TRACES" in readme
    assert "../shared/traces" in readme
    # A clone on its own: which public repositories the test traces are copies of.
    for source in ("AIRI-Institute/eco4cast", "umassos/decarbonization-potential"):
        assert source in readme
    conftest = (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
    assert "README" in conftest
