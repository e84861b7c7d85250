"""Values complete in the shell: regions, blueprints, hubs, job ids. Each completer reads only
this machine's catalogue, inventory and store, and offers nothing rather than raising."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli import paths
from harchos_cli.cli import completion


def test_regions_complete_and_after_a_comma_the_next_one() -> None:
    assert "DE" in completion.regions("D")
    assert "eu-west" in completion.regions("eu-")
    assert all(name.startswith("DE,F") for name in completion.regions("DE,F"))
    assert "DE,FR" in completion.regions("DE,F")
    assert completion.regions("no-such-region-x") == []


def test_blueprints_complete() -> None:
    assert completion.blueprints("pyt") == ["pytorch-training"]
    assert completion.blueprints("zz") == []


def test_hubs_and_job_ids_come_from_the_store_and_completing_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert completion.hubs("") == ["local"]
    assert completion.hubs_or_auto("") == ["auto", "local"]
    assert completion.job_ids("") == []
    assert not paths.state_db().exists()
    added = harchos(capsys, "hubs", "add", "box-1", "--ssh", "me@box1.invalid", "--gpus", "1")
    assert added.code == 0, added.err
    assert completion.hubs("b") == ["box-1"]
    assert completion.hub_list("local,b") == ["local,box-1"]
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\ncommand = "true"\n')
    os.chdir(tmp_path)
    ran = harchos(capsys, "run", "batch", "--json")
    assert ran.code == 0, ran.err
    job_id = ran.json()["job_id"]
    assert completion.job_ids(job_id[:8]) == [job_id]


def test_a_damaged_store_completes_nothing_and_raises_nothing() -> None:
    paths.state_db().parent.mkdir(parents=True, exist_ok=True)
    paths.state_db().write_bytes(b"not a database" * 100)
    assert completion.job_ids("") == []
    assert completion.hubs("") == ["local"]


def complete(words: str, cword: int) -> list[str]:
    """What bash gets from the script `harchos --show-completion bash` installs."""
    env = {**os.environ, "_HARCHOS_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(cword)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", "from harchos_cli.cli.app import main; main()"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout.split()


def test_a_real_shell_completion_in_a_subprocess(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert complete("harchos new pyt", 2) == ["pytorch-training"]
    assert complete("harchos run train --hub ", 4) == ["auto", "local"]
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\ncommand = "true"\n')
    os.chdir(tmp_path)
    job_id = harchos(capsys, "run", "batch", "--json").json()["job_id"]
    for command in ("show", "logs", "cancel", "pause", "resume", "migrate"):
        assert complete(f"harchos jobs {command} {job_id[:10]}", 3) == [job_id]
