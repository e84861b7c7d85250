"""`harchos jobs clean` removes a project's copy on a hub once no job in the store uses it, never
while a job of the project may run there or while it holds checkpoints or outputs with no
verified copy elsewhere; and `harchos run` starts the `jobs.retention` clean as `jobs list` does."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from polling import wait_until
from sshd import Sshd, client_key_fixture, sshd_fixture
from test_jobs_clean import age, hub_folder, project, rows, run_batch
from test_run_ssh import add_h1, batch_project

from harchos_cli.hubs import remote_project_dir
from harchos_cli.jobs import clean as cleaning
from harchos_cli.jobs.store import Job, JobStore, new_id
from harchos_cli.timeparse import iso, utcnow

__all__ = ["client_key_fixture", "project", "sshd_fixture"]


def test_run_starts_the_retention_clean_in_the_background(
    capsys: pytest.CaptureFixture[str], project: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_batch(capsys, "true")
    age(done)
    run_batch(capsys, "true")
    assert rows(done)["jobs"] == 1  # no retention set: every job is kept
    assert cleaning.due()
    monkeypatch.setenv("HARCHOS_JOBS_RETENTION", "7d")
    result = harchos(capsys, "run", "batch", "--", "true")
    assert result.code == 0, result.err
    assert "clean" not in result.err
    wait_until(lambda: rows(done)["jobs"] == 0)
    assert not hub_folder(done).exists()
    assert not cleaning.due()


def test_a_project_copy_goes_with_the_last_job_that_used_it_once_its_results_are_pulled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    root = batch_project(tmp_path)
    add_h1(capsys, sshd)
    copy = Path(remote_project_dir(sshd.hub(), root).replace("~", str(sshd.root), 1))
    # Each job writes the project's output and a checkpoint of its own run (a batch job's run
    # is its own).
    write = (
        "import os; os.makedirs('outputs', exist_ok=True); open('outputs/r.txt', 'w').write('r'); "
        "c = os.environ['HARCHOS_CHECKPOINT_DIR']; os.makedirs(c); open(c + '/s.pt', 'w').write(c)"
    )

    def run() -> str:
        result = harchos(capsys, "run", "batch", "--hub", "h1", "--json", "--",
                         sys.executable, "-c", write)  # fmt: skip
        assert result.code == 0, result.err
        return str(result.json()["job_id"])

    def clean(*args: str) -> dict[str, Any]:
        result = harchos(capsys, "jobs", "clean", "--json", *args)
        assert result.code == 0, result.err
        return {o["job_id"]: o for o in result.json()["jobs"]}

    first, second = run(), run()
    assert (copy / "checkpoints" / first / "s.pt").is_file()
    age(first, finished_at=iso(utcnow() - timedelta(days=31)))
    # The copy stays for the second job, but the first one's checkpoint was never pulled.
    kept = clean("--dry-run")[first]
    assert kept["forgotten"] is False
    assert f"checkpoints/{first}/s.pt" in kept["kept"][0]
    assert f"harchos jobs pull {first}" in kept["kept"][0]
    assert harchos(capsys, "jobs", "pull", first).code == 0
    dry = harchos(capsys, "jobs", "clean", "--dry-run")
    assert f"would forget job {first}" in dry.out
    assert "project copy" not in dry.out

    age(second)
    # The last job that used the copy: its checkpoint was never pulled, so it and the copy stay.
    outcomes = clean()
    assert outcomes[first]["forgotten"] is True
    assert outcomes[second]["forgotten"] is False
    assert f"checkpoints/{second}/s.pt" in outcomes[second]["kept"][0]
    assert (copy / "checkpoints" / first / "s.pt").is_file()
    assert rows(second)["jobs"] == 1

    assert harchos(capsys, "jobs", "pull", second).code == 0
    dry = harchos(capsys, "jobs", "clean", "--dry-run")
    assert f"would forget job {second}" in dry.out
    assert f"would remove h1:{copy} (project copy)" in dry.out
    assert copy.is_dir()
    outcomes = clean()
    assert outcomes[second]["forgotten"] is True
    assert not copy.exists()
    assert rows(second)["jobs"] == 0
    assert (root / "outputs" / "r.txt").read_text() == "r"
    for job_id in (first, second):
        assert (root / "checkpoints" / job_id / "s.pt").is_file()


def test_a_copy_is_never_removed_while_a_job_of_the_project_may_run_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd
) -> None:
    root = batch_project(tmp_path)
    add_h1(capsys, sshd)
    copy = Path(remote_project_dir(sshd.hub(), root).replace("~", str(sshd.root), 1))
    done = harchos(capsys, "run", "batch", "--hub", "h1", "--json", "--", "true")
    assert done.code == 0, done.err
    done_id = str(done.json()["job_id"])
    age(done_id)
    store = JobStore()
    try:
        # A job of the project that waits to start on h1 (no supervisor: the library is called).
        store.create(Job(new_id(), "batch", "proj", str(root), "waiting", {}, hub="h1"))
        (outcome,) = cleaning.clean(store, timedelta(days=7))
    finally:
        store.close()
    assert outcome.forgotten
    assert copy.is_dir()
    assert not any("project copy" in folder for folder in outcome.removed)
