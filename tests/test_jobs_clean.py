"""`harchos jobs clean` and the `jobs.retention` setting: finished jobs older than the cutoff are
forgotten (rows, local folder, their folders on hubs), never a running job's files or a project's
checkpoints; a hub that cannot be reached keeps its folders, and the job, unless --force."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until

from harchos_cli import paths
from harchos_cli.hubs import inventory, jobs_for
from harchos_cli.hubs.base import HubUnreachableError
from harchos_cli.jobs import clean as cleaning
from harchos_cli.jobs.store import Job, JobStore, job_dir
from harchos_cli.timeparse import iso, utcnow

LONG_AGO = iso(utcnow() - timedelta(days=30))


def rows(job_id: str) -> dict[str, int]:
    db = sqlite3.connect(paths.state_db())
    try:
        return {
            table: db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {'id' if table == 'jobs' else 'job_id'} = ?",
                (job_id,),
            ).fetchone()[0]
            for table in ("jobs", "job_decisions", "energy_samples", "energy_offsets")
        }
    finally:
        db.close()  # fmt: skip


def age(job_id: str, finished_at: str = LONG_AGO, **values: object) -> None:
    store = JobStore()
    try:
        store.update(job_id, finished_at=finished_at, **values)
    finally:
        store.close()


def hub_folder(job_id: str) -> Path:
    return Path(jobs_for(inventory.local_hub()).job_dir(job_id))


def run_batch(capsys: pytest.CaptureFixture[str], *command: str, detach: bool = False) -> str:
    started = harchos(capsys, "run", "batch", "--json", *(["--detach"] if detach else []),
                      "--", *command)  # fmt: skip
    assert started.code == 0, started.err
    return str(started.json()["job_id"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\n')
    (tmp_path / "checkpoints" / "kept").mkdir(parents=True)
    (tmp_path / "checkpoints" / "kept" / "step-1.pt").write_text("weights")
    os.chdir(tmp_path)
    return tmp_path


def test_old_finished_jobs_are_forgotten_everywhere_and_recent_ones_stay(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    old = run_batch(capsys, "true")
    recent = run_batch(capsys, "true")
    age(old)
    assert hub_folder(old).is_dir()
    assert rows(old)["job_decisions"] > 0

    dry = harchos(capsys, "jobs", "clean", "--dry-run")
    assert dry.code == 0, dry.err
    assert f"would forget job {old}" in dry.out
    assert str(hub_folder(old)) in dry.out
    assert recent not in dry.out
    assert hub_folder(old).is_dir()
    assert rows(old)["jobs"] == 1

    cleaned = harchos(capsys, "jobs", "clean", "--json")
    assert cleaned.code == 0, cleaned.err
    (outcome,) = cleaned.json()["jobs"]
    assert (outcome["job_id"], outcome["forgotten"]) == (old, True)
    assert rows(old) == dict.fromkeys(rows(old), 0)
    assert not job_dir(old).exists()
    assert not hub_folder(old).exists()
    assert rows(recent)["jobs"] == 1
    assert hub_folder(recent).is_dir()
    assert (project / "checkpoints" / "kept" / "step-1.pt").read_text() == "weights"
    assert harchos(capsys, "jobs", "show", old).code == 2


def test_a_job_whose_process_still_runs_on_its_hub_keeps_its_files(
    capsys: pytest.CaptureFixture[str], project: Path
) -> None:
    running = run_batch(capsys, "sleep", "60", detach=True)
    wait_until(lambda: job(running).state == "running")
    # Not finished: never a candidate, whatever its age.
    age(running)
    assert harchos(capsys, "jobs", "clean", "--older-than", "1s").out.startswith("no finished")
    harchos(capsys, "jobs", "cancel", running)
    wait_until(lambda: not job(running).active)


def test_a_live_workload_marked_finished_is_never_removed(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_batch(capsys, "true")
    age(done)
    real_status = type(jobs_for(inventory.local_hub())).status

    def still_running(self: object, hub_job_id: str) -> object:
        status = real_status(self, hub_job_id)  # type: ignore[arg-type]
        return type(status)("running", status.pid, None, status.log_size)

    monkeypatch.setattr(type(jobs_for(inventory.local_hub())), "status", still_running)
    kept = harchos(capsys, "jobs", "clean", "--force")
    assert kept.code == 0, kept.err
    assert f"kept job {done}: {done} still runs on hub local" in kept.out
    assert hub_folder(done).is_dir()
    assert rows(done)["jobs"] == 1


def test_an_unreachable_hub_keeps_its_folders_and_the_job_unless_forced(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_batch(capsys, "true")
    second = run_batch(capsys, "true")
    age(done, finished_at=iso(utcnow() - timedelta(days=31)))
    calls: list[str] = []

    def unreachable(self: object, hub_job_id: str) -> object:
        calls.append(hub_job_id)
        raise HubUnreachableError("cannot reach hub local: timed out")

    monkeypatch.setattr(type(jobs_for(inventory.local_hub())), "status", unreachable)
    kept = harchos(capsys, "jobs", "clean")
    assert kept.code == 0, kept.err
    line = next(line for line in kept.out.splitlines() if done in line)
    assert line == (f"kept job {done}: hub local unreachable (cannot reach hub local: timed "
                    "out): its folders kept")  # fmt: skip
    assert "--force" in kept.err
    assert rows(done)["jobs"] == 1
    assert hub_folder(done).is_dir()
    assert calls == [done]  # one try per hub, not one per folder
    # A second job on the same hub is kept with the same reason, and the hub is not tried again.
    age(second)
    calls.clear()
    both = harchos(capsys, "jobs", "clean", "--json").json()["jobs"]
    assert [(o["job_id"], o["forgotten"], o["unreachable"]) for o in both] == [
        (done, False, True), (second, False, True)]  # fmt: skip
    assert all("hub local unreachable" in o["kept"][0] for o in both)
    assert len(calls) == 1

    forced = harchos(capsys, "jobs", "clean", "--force")
    assert f"forgot job {done}" in forced.out
    assert rows(done)["jobs"] == 0
    assert hub_folder(done).is_dir()  # left on the hub it could not reach


def test_every_attempt_and_machine_has_its_folder_name() -> None:
    single = Job("J", "train", "n", "/p", "done", {}, attempt=3)
    assert cleaning.hub_job_ids(single) == ["J", "J-a2", "J-a3"]
    multi = Job("J", "train", "n", "/p", "done", {"nodes": ["a", "b", "c"]}, attempt=2)
    assert cleaning.hub_job_ids(multi) == ["J", "J-n1", "J-n2", "J-a2", "J-a2-n1", "J-a2-n2"]


def test_retention_cleans_from_jobs_list_in_the_background_at_most_hourly(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_batch(capsys, "true")
    age(done)
    listed = harchos(capsys, "jobs", "list")
    assert listed.code == 0, listed.err
    assert rows(done)["jobs"] == 1  # no retention set: every job is kept
    monkeypatch.setenv("HARCHOS_JOBS_RETENTION", "7d")
    listed = harchos(capsys, "jobs", "list")
    assert listed.code == 0, listed.err
    assert listed.err == ""
    wait_until(lambda: rows(done)["jobs"] == 0)
    assert not hub_folder(done).exists()
    assert not cleaning.due()
    again = run_batch(capsys, "true")
    age(again)
    harchos(capsys, "jobs", "list")
    assert rows(again)["jobs"] == 1  # cleaned within the hour already


def test_bad_ages_are_usage_errors(
    capsys: pytest.CaptureFixture[str], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in ("0s", "soon", "-1d"):
        result = harchos(capsys, "jobs", "clean", "--older-than", bad)
        assert result.code == 2, result.err
        assert result.err.startswith("harchos: error:")
    monkeypatch.setenv("HARCHOS_JOBS_RETENTION", "never")
    assert harchos(capsys, "jobs", "clean").code == 2
    # `jobs list` is not the place to report a bad setting: it lists.
    assert harchos(capsys, "jobs", "list").code == 0
