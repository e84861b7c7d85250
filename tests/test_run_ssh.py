"""The SSH acceptance scenario: a generated training project runs on a hub behind a real sshd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_run_local import new_project

from harchos_cli.hubs import remote_project_dir
from harchos_cli.jobs.store import job_dir, log_path

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


def add_h1(capsys: pytest.CaptureFixture[str], sshd: Sshd, python: str = sys.executable) -> None:
    added = harchos(
        capsys, "hubs", "add", "h1", "--ssh", f"root@127.0.0.1:{sshd.port}", "--identity",
        str(sshd.client_key), "--region", "DE", "--python", python,
    )  # fmt: skip
    assert added.code == 0, added.err


def batch_project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "harchos.toml").write_text('[job]\nkind = "batch"\n')
    os.chdir(root)
    return root


def test_a_hub_step_that_fails_for_good_exits_4_without_retrying(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    batch_project(tmp_path)
    add_h1(capsys, sshd, python="/no/python3")
    result = harchos(capsys, "run", "batch", "--hub", "h1", "--json", "--", "true")
    assert result.code == 4, result.err
    data = json.loads(result.out)
    assert (data["state"], data["failure"], data["exit_code"]) == ("failed", "hub", None)
    assert "Python '/no/python3' was not found on hub 'h1'" in data["message"]
    assert "lost contact" not in result.err


def test_a_changed_host_key_fails_the_run_with_exit_4_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    batch_project(tmp_path)
    add_h1(capsys, sshd)
    assert harchos(capsys, "hubs", "check", "h1", "--json").json()["host_key"] == "new"
    sshd.restart(new_host_key=True)
    result = harchos(capsys, "run", "batch", "--hub", "h1", "--json", "--", "true")
    assert result.code == 4, result.err
    data = json.loads(result.out)
    assert (data["state"], data["failure"]) == ("failed", "hub")
    assert "has changed" in data["message"]
    assert "retrying" not in result.err


def test_setup_runs_again_when_the_hubs_folder_was_wiped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    root = batch_project(tmp_path)
    (root / "harchos.toml").write_text(
        '[job]\nkind = "batch"\nsetup = "echo setup >> \\"$HOME/setup.log\\""\n'
    )
    add_h1(capsys, sshd)
    count = sshd.root / "setup.log"  # in the hub user's home, outside the project's folder

    def run() -> None:
        result = harchos(capsys, "run", "batch", "--hub", "h1", "--json", "--", "true")
        assert result.code == 0, result.err

    run()
    run()
    assert count.read_text().splitlines() == ["setup"]
    # Same hub name and content, but what setup installed is gone with the hub's folder.
    remote = remote_project_dir(sshd.hub(), root).replace("~", str(sshd.root), 1)
    shutil.rmtree(remote)
    run()
    assert count.read_text().splitlines() == ["setup", "setup"]
    assert (Path(remote) / ".harchos" / ".gitignore").read_text() == "*\n"


def test_a_deferred_job_keeps_trying_a_hub_that_is_down_while_its_deadline_allows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    batch_project(tmp_path)
    add_h1(capsys, sshd)
    sshd.stop()
    # Under any threshold: it starts at once, but with a deadline 3 h away it may keep trying
    # far longer than the 5 attempts (about 15 s) a job without a deadline gets.
    started = harchos(
        capsys, "run", "batch", "--hub", "h1", "--threshold", "100000", "--deadline", "3h",
        "--detach", "--json", "--", sys.executable, "-c", "print('ran', flush=True)",
    )  # fmt: skip
    assert started.code == 0, started.err
    job_id = started.json()["job_id"]

    def said(text: str) -> bool:
        path = job_dir(job_id) / "supervisor.log"
        return path.is_file() and text in path.read_text()

    wait_until(lambda: said("retrying in 8 s"), timeout=60)
    assert job(job_id).state == "syncing"
    wait_until(lambda: said("retrying in 16 s"), timeout=60)
    sshd.start()
    final = wait_until(lambda: job(job_id) if not job(job_id).active else None, timeout=90)
    assert (final.state, final.exit_code) == ("done", 0), final.message
    assert "ran" in log_path(job_id).read_text()


def test_hubs_check_fails_a_workdir_it_cannot_make_and_warns_of_a_python_without_accelerate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    blocked = sshd.root / "a-file"
    blocked.write_text("not a folder\n")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    added = harchos(
        capsys, "hubs", "add", "h1", "--ssh", f"root@127.0.0.1:{sshd.port}", "--identity",
        str(sshd.client_key), "--region", "DE", "--python", str(bare / "bin" / "python"),
        "--workdir", f"{blocked}/harchos",
    )  # fmt: skip
    assert added.code == 0, added.err
    checked = harchos(capsys, "hubs", "check", "h1", "--json")
    assert checked.code == 4, checked.err
    data = checked.json()
    assert data["reachable"] is True
    assert data["workdir_writable"] is False
    assert "cannot write to" in data["error"]
    assert data["accelerate"] is False
    assert "cannot import accelerate" in data["warnings"][0]
    text = harchos(capsys, "hubs", "check", "h1")
    assert "h1: FAILED: cannot write to" in text.out
    assert "h1: warning:" in text.out
