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
from clirunner import Result, harchos
from polling import job, wait_until

from harchos_cli.jobs.liveness import supervisor_lock
from harchos_cli.jobs.spec import Project, load_project
from harchos_cli.jobs.store import Job, JobStateName, JobStore, job_dir
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


def run_beside_busy(
    capsys: pytest.CaptureFixture[str], marker: Path, act: Callable[[Job], None]
) -> Result:
    """A foreground run (it creates `marker`) on the busy hub; `act` on it once it waits."""
    finished = threading.Event()
    with busy_hub():
        watcher = watch(finished, act)
        try:
            return harchos(capsys, "run", "batch", "--hub", "local", "--", sys.executable,
                           "-c", f"open({str(marker)!r}, 'w')")  # fmt: skip
        finally:
            finished.set()
            watcher.join()


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

    result = run_beside_busy(capsys, marker, look_then_end_busy)
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

    result = run_beside_busy(capsys, marker, interrupt)
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


# A workload that keeps the pause contract (as tests/test_autoshift.py's): it resumes from the
# step in $HARCHOS_CHECKPOINT_DIR, and on SIGUSR1/SIGTERM confirms a pause and exits 85. It
# steps at least STEPS times and ends once its gate file exists; every run appends to RUNS
# "<job> start <time> <step it resumed from>", each step "<job> step <n>", and "<job> end <time>".
WORK = """
import json, os, pathlib, signal, sys, time
runs, steps, gate = pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
job = os.environ["HARCHOS_JOB_ID"]
def note(line):
    with runs.open("a") as log:
        log.write(f"{job} {line}\\n")
workers = pathlib.Path(os.environ["HARCHOS_CONTROL_DIR"]) / "workers"
workers.mkdir(parents=True, exist_ok=True)
(workers / str(os.getpid())).touch()
progress = pathlib.Path(os.environ["HARCHOS_CHECKPOINT_DIR"]) / "step"
progress.parent.mkdir(parents=True, exist_ok=True)
step = int(progress.read_text()) if progress.exists() else 0
note(f"start {time.time()} {step}")
code = 0
while step < steps or not gate.exists():
    if stop:
        (workers / f"{os.getpid()}.paused").write_text(json.dumps({"step": step}))
        code = 85
        break
    time.sleep(0.02)
    step += 1
    note(f"step {step}")
    progress.write_text(str(step))
note(f"end {time.time()}")
sys.exit(code)
"""


def runs_of(runs: Path, job_id: str) -> list[list[str]]:
    """The job's lines in the workloads' shared log, split (without the job id)."""
    if not runs.exists():
        return []
    lines = [line.split() for line in runs.read_text().splitlines()]
    return [line[1:] for line in lines if line[0] == job_id]


def intervals(runs: Path, job_id: str) -> list[tuple[float, float]]:
    """When each run of the job's workload started and ended (by its own clock)."""
    lines = runs_of(runs, job_id)
    starts = [float(line[1]) for line in lines if line[0] == "start"]
    ends = [float(line[1]) for line in lines if line[0] == "end"]
    assert len(starts) == len(ends), lines
    return list(zip(starts, ends, strict=True))


def detach(capsys: pytest.CaptureFixture[str], runs: Path, steps: int, gate: Path) -> str:
    started = harchos(capsys, "run", "batch", "--hub", "local", "--detach", "--json", "--",
                      sys.executable, "work.py", str(runs), str(steps), str(gate))  # fmt: skip
    assert started.code == 0, started.err
    return str(started.json()["job_id"])


def decisions(capsys: pytest.CaptureFixture[str], job_id: str) -> list[dict[str, object]]:
    shown = harchos(capsys, "jobs", "show", job_id, "--json")
    assert shown.code == 0, shown.err
    return list(shown.json()["decisions"])


@pytest.mark.parametrize("resumed_by", ["hand", "policy"])
def test_a_paused_job_resumes_only_once_its_hub_has_a_slot_again(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, resumed_by: str
) -> None:
    project = one_slot_project(tmp_path)
    (project.root / "work.py").write_text(WORK)
    runs, a_gate, b_gate = tmp_path / "runs.log", tmp_path / "a-may-end", tmp_path / "b-may-end"
    a = detach(capsys, runs, 5, a_gate)
    wait_until(lambda: len(runs_of(runs, a)) >= 3)  # started, and stepping
    paused = harchos(capsys, "jobs", "pause", a)
    assert paused.code == 0, paused.err
    wait_until(lambda: job(a).state == "paused")
    assert job(a).exit_code == 85
    # While it is paused, another job takes the hub's one slot.
    b = detach(capsys, runs, 0, b_gate)
    wait_until(lambda: any(line[0] == "start" for line in runs_of(runs, b)))

    if resumed_by == "hand":
        resumed = harchos(capsys, "jobs", "resume", a)
        assert resumed.code == 0, resumed.err
        assert resumed.out == f"job {a}: stays paused until a slot frees, then resumes ({FULL})\n"
        reason = "asked with harchos jobs resume; " + FULL
    else:
        # As the policy leaves a job it paused for greener hours, whose hour has come; any
        # harchos command starts its supervisor.
        store = JobStore()
        try:
            request = {**store.get(a).request, "resume_at": iso(utcnow())}
            store.update(a, request=request)
        finally:
            store.close()
        assert harchos(capsys, "jobs", "list").code == 0
        wait_until(lambda: job(a).message == FULL)
        reason = "greener hours: resuming at "
    # Long enough for its supervisor to look again twice; the other job runs throughout.
    time.sleep(SLOT_POLL_S * 2.5)
    waiting = job(a)
    assert (waiting.state, waiting.attempt, waiting.message) == ("paused", 1, FULL)
    assert [line[0] for line in runs_of(runs, a)].count("start") == 1
    assert job(b).state == "running"

    a_gate.touch()
    b_gate.touch()
    wait_until(lambda: job(b).state == "done" and job(a).state == "done", timeout=60)
    final = job(a)
    assert (final.attempt, final.exit_code, final.message) == (2, 0, None)
    (a1, a2), (b1,) = intervals(runs, a), intervals(runs, b)
    # Never two workloads at once on the one slot: A, then B, then A again.
    assert a1[1] <= b1[0], (a1, b1)
    assert b1[1] <= a2[0], (b1, a2)
    lines = runs_of(runs, a)
    steps = [int(line[1]) for line in lines if line[0] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # from its checkpoint: none twice, none lost
    first_run = lines[: [line[0] for line in lines].index("end")]
    paused_at = max((int(line[1]) for line in first_run if line[0] == "step"), default=0)
    second = [line for line in lines if line[0] == "start"][1]
    assert int(second[2]) == paused_at
    actions = decisions(capsys, a)
    asked = [d for d in actions if d["action"] == "resume-requested"]
    assert len(asked) == 1, actions  # recorded once, however long it waited
    assert str(asked[0]["reason"]).startswith(reason)
    assert str(asked[0]["reason"]).endswith(FULL)
    assert [d["action"] for d in actions][-3:] == ["pause", "resume-requested", "resume"]


def test_a_resume_is_admitted_by_the_same_count_and_a_move_by_its_targets(tmp_path: Path) -> None:
    del tmp_path
    store = JobStore()
    store.create(Job("busy", "batch", "p", "/p", "running", {}, hub="h"))
    store.create(Job("a", "batch", "p", "/p", "paused", {}, hub="h"))
    assert not store.admit("a", "h", 1, from_states=("paused",))
    assert not store.admit("a", "h", 2)  # not waiting
    # A move to `g`, counted there while the job is still bound for `h`.
    assert not store.admit("a", "g", 1, from_states=("paused",))
    assert store.admit("a", "g", 1, from_states=("paused",), bound="h")
    assert (store.get("a").state, store.get("a").hub) == ("syncing", "h")
    store.create(Job("b", "batch", "p", "/p", "running", {}, hub="g"))
    # A rollback from `g` to a full `h`, then to `h` with a slot more, the hub set with it.
    assert not store.admit("b", "h", 2, from_states=("running",), bound="g", hub="h")
    assert store.admit("b", "h", 3, from_states=("running",), bound="g", hub="h")
    assert (store.get("b").state, store.get("b").hub) == ("syncing", "h")
    store.close()


def stopped_job(project: Project, hub: str, state: JobStateName, **request: object) -> Job:
    """A job of the project stopped at a checkpoint on `hub` (its first attempt launched)."""
    store = JobStore()
    try:
        data = {"kind": "batch", "hub": hub, "defer": False, "duration_s": 60, **request}
        job = Job("j", "batch", "p", str(project.root), state, data, hub=hub, attempt=1)
        store.create(job)
        return store.get("j")
    finally:
        store.close()


def test_a_rollback_to_a_full_source_waits_paused_there(tmp_path: Path) -> None:
    from harchos_cli.jobs.control import continue_job
    from harchos_cli.jobs.supervisor import Supervisor

    project = one_slot_project(tmp_path)
    failed = stopped_job(project, "target", "running", migrated_from="local")
    store = JobStore()
    with busy_hub():
        Supervisor("j", store=store)._relaunch(failed, "local", "rollback", "the move failed")
        held = store.get("j")
        assert (held.state, held.hub, held.attempt, held.message) == ("paused", "local", 1, FULL)
        assert held.request["resume_at"]
        assert "migrated_from" not in held.request
        assert store.decisions("j")[-1].action == "rollback"
        assert not continue_job(store, held, reason="a slot?", wake=False)
        assert store.get("j").state == "paused"
        end_busy()
        assert continue_job(store, store.get("j"), reason="a slot!", wake=False)
    resumed = store.get("j")
    assert (resumed.state, resumed.hub, resumed.attempt, resumed.message) == (
        "syncing", "local", 2, None,
    )  # fmt: skip
    assert "resume_at" not in resumed.request
    # Its decision was recorded when it began to wait, not again.
    assert [d.action for d in store.decisions("j")] == ["rollback"]
    store.close()


def test_a_move_to_a_full_target_waits_paused_on_the_source_and_copies_nothing(
    tmp_path: Path,
) -> None:
    from harchos_cli.jobs.supervisor import Supervisor

    project = one_slot_project(tmp_path)
    moving = stopped_job(project, "source", "syncing")
    store = JobStore()
    store.update("j", intent="migrate:local")
    with busy_hub():
        after = Supervisor("j", store=store)._migrate(store.get("j"), "local")
    assert (after.state, after.hub, after.intent, after.message) == (
        "paused", "source", "migrate:local", FULL,
    )  # fmt: skip
    assert [d.action for d in store.decisions("j")] == ["queue"]
    assert not (job_dir("j") / "transfer").exists()
    assert moving.state == "syncing"
    store.close()
