"""The SSH acceptance scenario: a generated training project runs on a hub behind a real sshd."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_run_local import new_project

from harchos_cli.hubs import remote_project_dir

__all__ = ["client_key_fixture", "sshd_fixture"]


def test_acceptance_run_train_on_an_ssh_hub(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd, client_key: Path
) -> None:
    project = new_project(capsys, tmp_path)
    os.chdir(project)
    added = harchos(
        capsys, "hubs", "add", "h1", "--ssh", f"root@127.0.0.1:{sshd.port}", "--identity",
        str(client_key), "--region", "DE", "--python", sys.executable,
    )  # fmt: skip
    assert added.code == 0, added.err
    checked = harchos(capsys, "hubs", "check", "h1", "--json")
    assert checked.code == 0, checked.err
    report = checked.json()
    report = report[0] if isinstance(report, list) else report
    assert report["reachable"] is True

    result = harchos(capsys, "run", "train", "--hub", "h1", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["exit_code"], data["hub"]) == (0, "h1")
    job_id = data["job_id"]

    # The training ran on h1's side: its checkpoints and outputs are in the hub's copy of the
    # project (under the sshd's root, the hub user's home), not in the local project.
    remote = Path(remote_project_dir(sshd.hub(), project).replace("~", str(sshd.root), 1))
    assert (remote / "train.py").is_file()
    assert json.loads((remote / "outputs" / "result.json").read_text())["step"] == 20
    assert (remote / "checkpoints" / job_id / "step_000000020").is_dir()
    assert not (project / "outputs").exists()
    assert not (remote / ".git").exists()

    logs = harchos(capsys, "jobs", "logs", job_id)
    assert logs.code == 0
    assert f"harchos job {job_id} on hub h1 (region DE)" in logs.out
    assert "step 20/20" in logs.out
