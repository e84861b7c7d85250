"""Issue 11, secrets and permissions: secret values are masked wherever harchos prints them (and
still reach the workload), and harchos's state is private to its user."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until

from harchos_cli import paths, state
from harchos_cli.jobs.store import JobStore
from harchos_cli.secrets import MASK, is_secret, mask_env, provider_credentials, workload_environ

SECRETS = {"WANDB_API_KEY": "wk-0001", "HF_TOKEN": "hf-0002", "db_password": "pw-0003",
           "MARKED": "mk-0004"}  # fmt: skip
PROJECT = (
    '[job]\nname = "demo"\nkind = "batch"\ncommand = "{command}"\nsecret_env = ["MARKED"]\n'
    "[job.env]\n"
    + "".join(f'{name} = "{value}"\n' for name, value in SECRETS.items())
    + 'SHOWN = "plain-0005"\n'
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def project(where: Path, command: str = "true") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "harchos.toml").write_text(PROJECT.format(command=command), encoding="utf-8")
    os.chdir(where)
    return where


def no_secret_in(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("WANDB_API_KEY", True), ("HF_TOKEN", True), ("hf_token", True), ("AWS_SECRET", True),
        ("PGPASSWORD", True), ("FTP_PASSWD", True), ("GOOGLE_CREDENTIALS", True),
        ("BASIC_AUTH", True), ("HARCHOS_JOB_ID", False), ("PYTHONUNBUFFERED", False),
        ("CUDA_VISIBLE_DEVICES", False),
    ],
)  # fmt: skip
def test_names_that_look_secret(name: str, secret: bool) -> None:
    assert is_secret(name) is secret


def test_masking_keeps_names_and_empty_values() -> None:
    env = {"HF_TOKEN": "x", "EMPTY_TOKEN": "", "MINE": "y", "OTHER": "z"}
    assert mask_env(env, ["MINE"]) == {"HF_TOKEN": MASK, "EMPTY_TOKEN": "", "MINE": MASK,
                                       "OTHER": "z"}  # fmt: skip


def test_dry_run_masks_secrets_in_text_and_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project(tmp_path / "p")
    text = harchos(capsys, "run", "batch", "--dry-run")
    assert text.code == 0, text.err
    no_secret_in(text.out + text.err)
    assert f"HF_TOKEN='{MASK}'" in text.out
    assert "SHOWN=plain-0005" in text.out
    data = harchos(capsys, "run", "batch", "--dry-run", "--json")
    assert data.code == 0, data.err
    no_secret_in(data.out)
    env = data.json()["launch"]["env"]
    assert {name: env[name] for name in SECRETS} == dict.fromkeys(SECRETS, MASK)
    assert env["SHOWN"] == "plain-0005"
    assert f"MARKED='{MASK}'" in data.json()["command_line"]


def test_dry_run_masks_secrets_of_every_machine(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    where = project(tmp_path / "p")
    text = (where / "harchos.toml").read_text(encoding="utf-8")
    text = text.replace('kind = "batch"\ncommand = "true"', 'command = "python train.py"')
    (where / "harchos.toml").write_text(text, encoding="utf-8")
    # Nothing listens there: the dry run's launcher check gives up at once (no timeout).
    added = harchos(capsys, "hubs", "add", "far", "--ssh", "me@127.0.0.2:9", "--region", "FR")
    assert added.code == 0, added.err
    data = harchos(capsys, "run", "train", "--hubs", "far,local", "--dry-run", "--json")
    assert data.code == 0, data.err
    no_secret_in(data.out)
    (node,) = data.json()["nodes"]
    assert node["env"]["HF_TOKEN"] == MASK
    assert f"HF_TOKEN='{MASK}'" in node["command_line"]
    shown = harchos(capsys, "run", "train", "--hubs", "far,local", "--dry-run")
    assert shown.code == 0, shown.err
    no_secret_in(shown.out)


def test_the_workload_gets_the_real_values_and_jobs_show_masks_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project(tmp_path / "p", command="env")
    ran = harchos(capsys, "run", "batch")
    assert ran.code == 0, ran.err
    for name, value in SECRETS.items():
        assert f"{name}={value}\n" in ran.out
    job_id = harchos(capsys, "jobs", "list", "--json").json()[0]["job_id"]
    shown = harchos(capsys, "jobs", "show", job_id, "--json")
    assert shown.code == 0, shown.err
    no_secret_in(shown.out)
    assert shown.json()["launch"]["env"]["WANDB_API_KEY"] == MASK
    assert shown.json()["launch"]["env"]["MARKED"] == MASK
    text = harchos(capsys, "jobs", "show", job_id)
    assert text.code == 0, text.err
    no_secret_in(text.out)


def test_state_is_private_to_its_user(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_home: Path
) -> None:
    project(tmp_path / "p")
    detached = harchos(capsys, "run", "batch", "--detach", "--json")
    assert detached.code == 0, detached.err
    job_id = detached.json()["job_id"]
    assert mode(isolated_home) == 0o700
    assert mode(paths.state_db()) == 0o600
    db = state.connect()  # while a connection is open, SQLite's -wal and -shm exist
    try:
        db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        for suffix in ("-wal", "-shm"):
            side = paths.state_db().with_name(f"harchos.db{suffix}")
            assert mode(side) == 0o600, suffix
    finally:
        db.close()
    folder = paths.supervisor_dir() / job_id
    wait_until(lambda: job(job_id).state == "done")
    assert mode(paths.supervisor_dir()) == 0o700
    assert mode(folder) == 0o700
    for name in ("supervisor.lock", "supervisor.err"):
        assert mode(folder / name) == 0o600, name


def test_a_database_others_could_read_is_made_private(isolated_home: Path) -> None:
    isolated_home.mkdir(mode=0o755)
    sqlite3.connect(paths.state_db()).close()
    paths.state_db().chmod(0o644)
    JobStore().close()
    assert mode(paths.state_db()) == 0o600
    # A folder the user made keeps its mode: harchos tightens only what it creates.
    assert mode(isolated_home) == 0o755


def test_harchos_own_credentials_are_known_and_dropped_from_a_workload_environment() -> None:
    names = provider_credentials()
    for name in ("ELECTRICITYMAPS_API_TOKEN", "WATTTIME_USER", "WATTTIME_PASSWORD"):
        assert name in names
    environ = {"ELECTRICITYMAPS_API_TOKEN": "em", "WATTTIME_PASSWORD": "wt", "PATH": "/bin"}
    assert workload_environ(environ) == {"PATH": "/bin"}


def test_a_local_workload_does_not_inherit_harchos_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "em-leak-0006")
    monkeypatch.setenv("WATTTIME_PASSWORD", "wt-leak-0007")
    project(tmp_path / "p")
    ran = harchos(capsys, "run", "batch", "--", sys.executable, "-c",
                  "import os; print(sorted(os.environ))")  # fmt: skip
    assert ran.code == 0, ran.err
    assert "ELECTRICITYMAPS_API_TOKEN" not in ran.out
    assert "WATTTIME_PASSWORD" not in ran.out
