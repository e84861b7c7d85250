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
