"""`harchos jobs` requests on bad input: a usage error, never a wrong job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job


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
