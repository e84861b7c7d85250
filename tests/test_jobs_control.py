"""`harchos jobs` requests on bad input: a usage error, never a wrong job."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job

from harchos_cli.jobs.store import JobStore
from harchos_cli.jobs.supervisor import request_cancel


@pytest.mark.parametrize("command", ["pause", "resume", "cancel", "show", "pull"])
def test_an_empty_job_id_never_picks_the_only_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\ncommand = "true"\n')
    os.chdir(tmp_path)
    only = harchos(capsys, "run", "batch", "--json")
    assert only.code == 0, only.err
    for empty in ("", "  "):
        result = harchos(capsys, "jobs", command, empty)
        assert result.code == 2
        assert "no job id given" in result.err
    assert job(only.json()["job_id"]).state == "done"


def test_pull_to_an_unknown_users_home_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\ncommand = "true"\n')
    os.chdir(tmp_path)
    ran = harchos(capsys, "run", "batch", "--json")
    assert ran.code == 0, ran.err
    pulled = harchos(capsys, "jobs", "pull", ran.json()["job_id"], "--to", "~no-such-user-0x1/out")
    assert pulled.code == 2, pulled.err
    assert "no such user" in pulled.err
    assert "Traceback" not in pulled.err


def test_following_a_job_exits_with_its_exit_code_and_says_when_it_waits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "batch"\ncommand = "python3 -c \\"raise SystemExit(3)\\""\n'
        '[carbon]\nregion = "DE"\n'
    )
    os.chdir(tmp_path)
    failed = harchos(capsys, "run", "batch", "--json")
    assert failed.json()["state"] == "failed"
    followed = harchos(capsys, "jobs", "logs", "-f", failed.json()["job_id"])
    assert followed.code == 3
    assert "failed (exit code 3)" in followed.err
    assert harchos(capsys, "jobs", "logs", failed.json()["job_id"]).code == 0
    # A job that waits (Germany on 2022-03-01 from 03:00: greenest at 10:00, far greener than
    # now, seven real hours away): following it says until when; cancelled, it ends with 130.
    trace = traces / "eco4cast" / "DE_2022_hourly.csv"
    waiting = harchos(capsys, "run", "batch", "--defer-until-green", "--deadline", "20h",
                      "--provider", f"replay:{trace}", "--at", "2022-03-01T03:00:00Z",
                      "--detach", "--json", "--", "true")  # fmt: skip
    assert waiting.code == 0, waiting.err
    job_id = waiting.json()["job_id"]
    assert job(job_id).state == "waiting"

    def cancel() -> None:
        store = JobStore()
        try:
            request_cancel(store, job_id)
        finally:
            store.close()

    stop = threading.Timer(1.0, cancel)
    stop.start()
    followed = harchos(capsys, "jobs", "logs", "-f", job_id)
    stop.join()
    assert f"waits to start at {waiting.json()['planned_start']}" in followed.err
    assert followed.code == 130
    assert "cancelled" in followed.err


def test_small_things_read_right(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A job started at once reports its hub's region (its workload got it as HARCHOS_REGION).
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "batch"\ncommand = "true"\n[carbon]\nregion = "DE"\n'
    )
    os.chdir(tmp_path)
    ran = harchos(capsys, "run", "batch", "--json")
    assert ran.code == 0, ran.err
    shown = harchos(capsys, "jobs", "show", ran.json()["job_id"], "--json").json()
    assert shown["region"] == "DE"
    assert shown["gpu_ids"] is None  # it holds no GPU
    # An IPv6 hub is echoed as it was given; the dry run's setup line keeps `~/` unquoted.
    added = harchos(capsys, "hubs", "add", "six", "--ssh", "root@[::1]:2222", "--region", "DE")
    assert added.code == 0, added.err
    assert "ssh root@[::1]:2222" in added.out
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "batch"\ncommand = "true"\nsetup = "echo hi"\n[carbon]\nregion = "DE"\n'
    )
    dry = harchos(capsys, "run", "batch", "--hub", "six", "--dry-run")
    assert dry.code == 0, dry.err
    setup = next(line for line in dry.out.splitlines() if line.strip().startswith("setup"))
    assert " ~/harchos/" in setup
    assert "'~/" not in setup
