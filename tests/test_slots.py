"""A hub's `max_jobs` holds back every job that starts, not only those the scheduler holds: a
foreground run and a job that starts at once wait for a slot, cancellable with Ctrl-C, and two
jobs that see the hub's last slot free at the same moment never both take it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until

from harchos_cli.jobs.liveness import supervisor_lock
from harchos_cli.jobs.spec import Project, load_project
from harchos_cli.jobs.store import Job, JobStore
from harchos_cli.jobs.supervisor import SLOT_POLL_S, take_slot
from harchos_cli.timeparse import iso, utcnow

FULL = "waiting for a slot: hub local runs 1 job(s), its max_jobs"


def one_slot_project(tmp_path: Path) -> Project:
    """A project on a local hub with one slot, entered."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "harchos.toml").write_text(
        '[job]\ncommand = "true"\n[hubs.local]\ntransport = "local"\nmax_jobs = 1\n'
    )
    os.chdir(project)
    return load_project(project)


@contextlib.contextmanager
def busy_hub() -> Iterator[None]:
    """The hub's one slot taken by a running job (supervised here, so that no harchos command
    revives it) until the block ends or the test ends it."""
    store = JobStore()
    try:
        with supervisor_lock("busy"):
            store.create(Job("busy", "batch", "p", "/p", "running", {}, hub="local"))
            yield
    finally:
        store.close()


def end_busy() -> None:
    store = JobStore()
    try:
        store.advance("busy", ["running"], "done", finished_at=iso(utcnow()))
    finally:
        store.close()


def waiting_for_slot() -> Job | None:
    """The job that waits for the busy hub's slot, once its message says so."""
    store = JobStore()
    try:
        return next((j for j in store.list(states=["waiting"]) if j.message == FULL), None)
    finally:
        store.close()


def watch(finished: threading.Event, act: Callable[[Job], None]) -> threading.Thread:
    """In the background: once a job waits for the slot (or the foreground run returned, or a
    minute passed), `act` on it; the busy job ends in any case, so that the run cannot hang."""

    def body() -> None:
        try:
            found = wait_until(lambda: waiting_for_slot() or finished.is_set(), timeout=60)
            if isinstance(found, Job):
                act(found)
        finally:
            end_busy()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_a_foreground_run_waits_for_a_slot_and_starts_once_the_hub_has_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one_slot_project(tmp_path)
    marker = tmp_path / "ran"
    seen: list[tuple[str, str, bool]] = []  # (job id, state, whether its workload had run)

    def look_then_end_busy(waiting: Job) -> None:
        # Long enough for the run to look again twice; the busy job still runs throughout.
        time.sleep(SLOT_POLL_S * 2.5)
        seen.append((waiting.id, job(waiting.id).state, marker.exists()))

    finished = threading.Event()
    with busy_hub():
        watcher = watch(finished, look_then_end_busy)
        try:
            result = harchos(capsys, "run", "batch", "--hub", "local", "--", sys.executable,
                             "-c", f"open({str(marker)!r}, 'w')")  # fmt: skip
        finally:
            finished.set()
            watcher.join()
    assert result.code == 0, result.err
    assert len(seen) == 1, "the run never waited for the busy hub's slot"
    job_id, state, ran = seen[0]
    assert (state, ran) == ("waiting", False)
    assert result.err.count(f"harchos: {FULL}") == 1  # shown once, however long it waits
    assert marker.exists()
    done = job(job_id)
    assert (done.state, done.exit_code, done.message) == ("done", 0, None)
    assert not done.detached


def test_ctrl_c_while_waiting_for_a_slot_cancels_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one_slot_project(tmp_path)
    marker = tmp_path / "ran"
    interrupted: list[str] = []

    def interrupt(waiting: Job) -> None:
        interrupted.append(waiting.id)
        os.kill(os.getpid(), signal.SIGINT)

    finished = threading.Event()
    with busy_hub():
        watcher = watch(finished, interrupt)
        try:
            result = harchos(capsys, "run", "batch", "--hub", "local", "--", sys.executable,
                             "-c", f"open({str(marker)!r}, 'w')")  # fmt: skip
        finally:
            finished.set()
            watcher.join()
    assert len(interrupted) == 1, "the run never waited for the busy hub's slot"
    assert result.code == 130
    assert f"cancelled job {interrupted[0]} while it waited; nothing ran" in result.err
    cancelled = job(interrupted[0])
    assert cancelled.state == "cancelled"
    assert cancelled.message == "cancelled with Ctrl-C while waiting; nothing ran"
    assert not marker.exists()
    assert not (Path(os.environ["HARCHOS_HOME"]) / "jobs" / interrupted[0]).exists()


def test_a_detached_job_that_starts_at_once_waits_for_a_slot_in_the_scheduler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one_slot_project(tmp_path)
    marker = tmp_path / "ran"
    with busy_hub():
        started = harchos(capsys, "run", "batch", "--hub", "local", "--detach", "--json", "--",
                          sys.executable, "-c", f"open({str(marker)!r}, 'w')")  # fmt: skip
        assert started.code == 0, started.err
        job_id = str(started.json()["job_id"])
        assert started.json()["state"] == "waiting"
        assert job(job_id).message == FULL
        assert not marker.exists()
        end_busy()
        wait_until(lambda: job(job_id).state == "done", timeout=60)
    assert marker.exists()
    assert job(job_id).exit_code == 0


def race(job_id: str, project: Project, barrier: threading.Barrier, moved: dict[str, bool]) -> None:
    """Take the slot for `job_id` on a connection of its own (as another process would), all
    racers at once."""
    own = JobStore()
    try:
        barrier.wait()
        moved[job_id] = take_slot(own, own.get(job_id), project)
    finally:
        own.close()


def test_two_jobs_racing_for_one_slot_only_one_starts(tmp_path: Path) -> None:
    project = one_slot_project(tmp_path)
    store = JobStore()
    racers = 4
    for round_ in range(10):
        ids = [f"r{round_}-{index}" for index in range(racers)]
        for job_id in ids:
            store.create(Job(job_id, "batch", "p", "/p", "waiting", {}, hub="local"))
        barrier = threading.Barrier(racers)
        moved: dict[str, bool] = {}

        threads = [
            threading.Thread(target=race, args=(job_id, project, barrier, moved)) for job_id in ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [job_id for job_id in ids if moved[job_id]]
        assert len(winners) == 1, (round_, moved)
        assert store.get(winners[0]).state == "syncing"
        for job_id in ids:
            if job_id not in winners:
                assert (store.get(job_id).state, store.get(job_id).message) == ("waiting", FULL)
        # Once the winner ends, exactly one of the others gets the slot; then none.
        store.advance(winners[0], ["syncing"], "done")
        rest = [
            take_slot(store, store.get(job_id), project) for job_id in ids if job_id != winners[0]
        ]
        assert rest == [True] + [False] * (racers - 2)
        for job_id in ids:
            store.advance(job_id, ["waiting", "syncing"], "cancelled")
    store.close()


def test_admission_counts_only_the_hub_it_is_bound_for(tmp_path: Path) -> None:
    del tmp_path
    store = JobStore()
    store.create(Job("other", "batch", "p", "/p", "running", {}, hub="elsewhere"))
    store.create(Job("a", "batch", "p", "/p", "waiting", {}, hub="h"))
    store.create(Job("b", "batch", "p", "/p", "waiting", {}, hub="h"))
    # Bound for `h` no more (re-planned onto another hub): not admitted to `h`.
    assert not store.admit("a", "g", 1)
    assert store.admit("a", "h", 1)
    assert not store.admit("b", "h", 1)
    assert store.admit("b", "h", 2)
    assert not store.admit("b", "h", None)  # no longer waiting
    assert [store.get(i).state for i in ("a", "b")] == ["syncing", "syncing"]
    store.close()
