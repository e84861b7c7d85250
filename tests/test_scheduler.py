"""One scheduler holds every detached job waiting for its window, and hubs' slots are never
over-booked: the jobs a user submits with `harchos run batch --detach`, a scheduler killed with
SIGKILL while they wait and while they launch, each job run exactly once."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from polling import wait_until
from sshd import Sshd, client_key_fixture, sshd_factory_fixture

from harchos_cli.carbon.types import Forecast, Point, Region, Source
from harchos_cli.jobs.scheduler import SharedForecaster
from harchos_cli.jobs.spec import load_project
from harchos_cli.jobs.store import JobStore
from harchos_cli.testing.processes import home_processes, most_at_once
from harchos_cli.timeparse import iso, parse_instant

__all__ = ["client_key_fixture", "sshd_factory_fixture"]

DE_TRACE = "eco4cast/DE_2022_hourly.csv"
JOBS = 12
SLOTS = 4


def processes(module: str) -> list[int]:
    """The live `python -m MODULE` processes of this test's HARCHOS_HOME."""
    return home_processes(module, os.environ["HARCHOS_HOME"])


def sweep(tmp_path: Path) -> Path:
    """A batch project on a local hub with `SLOTS` slots, entered; each job appends its id to
    the file returned."""
    project = tmp_path / "sweep"
    project.mkdir()
    ran = tmp_path / "ran.txt"
    (project / "harchos.toml").write_text(
        "[job]\n"
        f'command = ["sh", "-c", "echo $HARCHOS_JOB_ID >> {ran}"]\n'
        '[carbon]\nregion = "DE"\n'
        f'[hubs.local]\ntransport = "local"\nmax_jobs = {SLOTS}\n'
    )
    os.chdir(project)
    return ran


def gone(pid: int) -> bool:
    return pid not in processes("harchos_cli.jobs.scheduler")


def test_waiting_jobs_cost_one_scheduler_fill_the_slots_and_each_runs_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    ran = sweep(tmp_path)
    # Germany from 2022-03-01 03:00 at 1200x: a clock hour is 3 s, the 10 h to the deadline 30 s
    # (a job's start late by a loaded machine's second is 20 minutes of its clock).
    submit = ["run", "batch", "--defer-until-green", "--duration", "1h", "--deadline", "10h",
              "--provider", f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T03:00:00Z",
              "--speedup", "1200", "--detach", "--json"]  # fmt: skip
    submitted: dict[str, str] = {}  # job id: its planned start at submission
    for _ in range(JOBS):
        result = harchos(capsys, *submit)
        assert result.code == 0, result.err
        submitted[str(result.json()["job_id"])] = str(result.json()["planned_start"])
    ids = list(submitted)

    # While they wait: one scheduler, no supervisor.
    (scheduler,) = wait_until(lambda: processes("harchos_cli.jobs.scheduler"))
    assert processes("harchos_cli.jobs.supervisor") == []
    # No hour of the plan holds more than the hub's slots.
    store = JobStore()
    starts = [store.get(job_id).planned_start for job_id in ids]
    assert max(Counter(starts).values()) <= SLOTS, starts
    assert len(set(starts)) >= JOBS // SLOTS

    # Killed twice while they wait: the next harchos command starts another.
    for _ in range(2):
        os.kill(scheduler, signal.SIGKILL)
        wait_until(functools.partial(gone, scheduler))
        assert harchos(capsys, "jobs", "list").code == 0
        (scheduler,) = wait_until(lambda: processes("harchos_cli.jobs.scheduler"))

    # Killed once more as the first jobs are handed over to launch.
    wait_until(lambda: store.list(states=["syncing", "running", "done"]), timeout=90)
    with contextlib.suppress(ProcessLookupError):
        os.kill(scheduler, signal.SIGKILL)
    assert harchos(capsys, "jobs", "list").code == 0

    def all_done() -> bool:
        harchos(capsys, "jobs", "list")  # revives whatever died
        return all(store.get(job_id).state == "done" for job_id in ids)

    wait_until(all_done, timeout=150)
    # Each ran exactly once, each planned to finish by its deadline. (Whether it then did depends
    # on the machine keeping up: at 1200x a second's delay is 20 minutes of the job's clock, and a
    # late job records the hour it really started in.)
    assert sorted(ran.read_text().split()) == sorted(ids)
    for job_id in ids:
        job = store.get(job_id)
        assert job.exit_code == 0
        assert job.plan is not None
        deadline = parse_instant(job.plan["deadline"])
        assert parse_instant(submitted[job_id]) + timedelta(hours=1) <= deadline
    # Never more than the hub's slots ran at once (a job late into another hour takes that
    # hour's slot; one that finished early frees its own).
    assert most_at_once([store.get(job_id) for job_id in ids]) <= SLOTS
    store.close()


def test_five_hundred_waiting_jobs_cost_one_scheduler_and_never_overbook_the_hub(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    # The scale, while they wait (the full run of 500 with kills during the launches is
    # benchmarks/bench_scheduler_run.py: 500 supervisors' start-ups are minutes of CPU).
    ran = sweep(tmp_path)
    submitted = harchos(capsys, "run", "batch", "--array", "1-500", "--defer-until-green",
                        "--duration", "1h", "--deadline", "150h", "--provider",
                        f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T03:00:00Z",
                        "--json")  # fmt: skip
    assert submitted.code == 0, submitted.err
    array_id = str(submitted.json()["array_id"])
    starts = Counter(m["planned_start"] for m in submitted.json()["jobs"])
    assert sum(starts.values()) == 500
    assert max(starts.values()) <= SLOTS
    assert len(starts) >= 500 // SLOTS
    store = JobStore()

    def one_scheduler_and_no_idle_supervisor() -> int:
        (scheduler,) = wait_until(lambda: processes("harchos_cli.jobs.scheduler"))
        # At real speed only the first hour's jobs may have started (their own supervisors).
        started = store.list(states=["syncing", "running", "done"])
        assert len(processes("harchos_cli.jobs.supervisor")) <= len(started) <= SLOTS
        return int(scheduler)

    scheduler = one_scheduler_and_no_idle_supervisor()
    for _ in range(2):
        os.kill(scheduler, signal.SIGKILL)
        wait_until(functools.partial(gone, scheduler))
        assert harchos(capsys, "jobs", "list").code == 0
        scheduler = one_scheduler_and_no_idle_supervisor()
    finals = Counter(j.planned_start for j in store.list(states=["waiting"]))
    assert max(finals.values()) <= SLOTS

    cancelled = harchos(capsys, "jobs", "cancel", "--array", array_id)
    assert cancelled.code == 0, cancelled.err
    wait_until(lambda: not store.list(states=["waiting", "syncing", "running"]), timeout=60)
    states = harchos(capsys, "jobs", "show", array_id, "--json").json()["states"]
    assert set(states) <= {"cancelled", "done"}
    assert states["cancelled"] >= 500 - SLOTS
    ran_ids = ran.read_text().split() if ran.exists() else []
    assert len(ran_ids) == len(set(ran_ids)) == states.get("done", 0)
    store.close()


def test_jobs_planned_in_one_hour_share_one_forecast(tmp_path: Path) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\ncommand = "true"\n')
    forecaster = SharedForecaster("embedded", load_project(tmp_path, required=False))
    calls: list[tuple[str, datetime, int]] = []

    def forecast(region: Region, now: datetime, hours: int) -> Forecast:
        calls.append((region.name, now, hours))
        hour = now.replace(minute=0, second=0, microsecond=0)
        points = [Point(hour + timedelta(hours=i), hour + timedelta(hours=i + 1), 100.0, 90.0,
                        110.0) for i in range(hours)]  # fmt: skip
        source = Source("embedded", "average", "test", "forecast", hour)
        return Forecast(region, points, source)

    forecaster.service.forecast = forecast  # type: ignore[method-assign]
    region = Region("de", "DE", "Germany", "zone", ())
    t0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
    shared: list[Any] = [forecaster.forecast(region, t0 + timedelta(minutes=m), 12)
                         for m in (0, 7, 59)]  # fmt: skip
    assert len(calls) == 1
    assert all(f is shared[0] for f in shared)
    forecaster.forecast(region, t0 + timedelta(minutes=10), 30)  # a longer horizon: fetched
    forecaster.forecast(region, t0 + timedelta(hours=1), 12)  # a new hour: fetched
    assert [c[1] for c in calls] == [t0, t0, t0 + timedelta(hours=1)]


def test_an_array_is_one_submission_spread_over_green_hours_and_run_index_by_index(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    project = tmp_path / "shards"
    project.mkdir()
    ran = tmp_path / "ran.txt"
    (project / "harchos.toml").write_text(
        "[job]\n"
        f'command = ["sh", "-c", "echo $HARCHOS_ARRAY_ID $HARCHOS_ARRAY_INDEX \\"$1\\" >> {ran}",'
        ' "shard", "literal $HOME *"]\n'
        '[carbon]\nregion = "DE"\n'
    )
    os.chdir(project)
    common = ["--defer-until-green", "--duration", "1h", "--deadline", "10h", "--provider",
              f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T03:00:00Z", "--speedup", "2400",
              "--json"]  # fmt: skip
    for bad, message in (
        (["--array", "5-1"], "not a range from a lower to a higher index"),
        (["--array", "x"], "is not a range"),
        (["--max-parallel", "2"], "--max-parallel applies to a job array"),
    ):
        refused = harchos(capsys, "run", "batch", *bad, *common)
        assert refused.code == 2, refused.err
        assert message in refused.err
    at_once = harchos(capsys, "run", "batch", "--array", "1-3", "--json")
    assert at_once.code == 2
    assert "waits for green hours" in at_once.err

    submitted = harchos(capsys, "run", "batch", "--array", "0-7", "--max-parallel", "2", *common)
    assert submitted.code == 0, submitted.err
    array_id = str(submitted.json()["array_id"])
    made = submitted.json()["jobs"]
    assert [m["index"] for m in made] == list(range(8))
    # At most two of the array in any hour: spread over four hours or more.
    starts = Counter(m["planned_start"] for m in made)
    assert max(starts.values()) <= 2
    assert len(starts) >= 4
    assert processes("harchos_cli.jobs.supervisor") == []
    wait_until(lambda: processes("harchos_cli.jobs.scheduler"))

    listed = harchos(capsys, "jobs", "list", "--array", array_id, "--json")
    assert [j["job_id"] for j in listed.json()] == [m["job_id"] for m in made]
    shown = harchos(capsys, "jobs", "show", array_id, "--json").json()
    assert (shown["size"], shown["first_planned_start"]) == (8, min(starts))

    def finished() -> bool:
        harchos(capsys, "jobs", "list")
        data = harchos(capsys, "jobs", "show", array_id, "--json").json()
        return bool(data["states"] == {"done": 8})

    wait_until(finished, timeout=150)
    lines = sorted(ran.read_text().splitlines(), key=lambda line: int(line.split()[1]))
    # Each index ran once, with the array's id, and its arguments reached it literally.
    assert lines == [f"{array_id} {index} literal $HOME *" for index in range(8)]

    # A second array, cancelled while it waits: nothing of it runs.
    second = harchos(capsys, "run", "batch", "--array", "1-3", *common)
    second_id = str(second.json()["array_id"])
    cancelled = harchos(capsys, "jobs", "cancel", "--array", second_id)
    assert cancelled.code == 0, cancelled.err
    assert "cancel requested for 3 of 3 jobs" in cancelled.out
    states = harchos(capsys, "jobs", "show", second_id, "--json").json()["states"]
    assert states == {"cancelled": 3}
    assert len(ran.read_text().splitlines()) == 8
    missing = harchos(capsys, "jobs", "list", "--array", "array-nope")
    assert missing.code == 2
    assert "no array 'array-nope'" in missing.err


def test_jobs_made_in_one_second_never_share_an_id(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from harchos_cli.jobs import supervisor

    # Ids are random within a second; make the draw repeat itself, as it can in an array.
    drawn = iter(["20220301-000000-aaaa", "20220301-000000-aaaa", "20220301-000000-aaaa",
                  "20220301-000000-bbbb", "20220301-000000-cccc"])  # fmt: skip
    monkeypatch.setattr(supervisor, "new_id", lambda: next(drawn))
    (tmp_path / "harchos.toml").write_text('[job]\ncommand = ["true"]\n[carbon]\nregion = "DE"\n')
    os.chdir(tmp_path)
    made = harchos(capsys, "run", "batch", "--array", "1-3", "--defer-until-green", "--deadline",
                   "10h", "--provider", f"replay:{traces / DE_TRACE}", "--at",
                   "2022-03-01T03:00:00Z", "--json")  # fmt: skip
    assert made.code == 0, made.err
    ids = [job["job_id"] for job in made.json()["jobs"]]
    assert ids == ["20220301-000000-aaaa", "20220301-000000-bbbb", "20220301-000000-cccc"]
    harchos(capsys, "jobs", "cancel", "--array", made.json()["array_id"])


def test_an_array_on_two_ssh_hubs_fills_the_greener_hubs_hours_first(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    sshd_factory: Callable[..., Sshd],
) -> None:  # fmt: skip
    fr, de = sshd_factory("fr"), sshd_factory("de")
    for server, region in ((fr, "FR"), (de, "DE")):
        added = harchos(capsys, "hubs", "add", server.name, "--ssh",
                        f"root@127.0.0.1:{server.port}", "--identity", str(server.client_key),
                        "--region", region, "--python", server.hub().python,
                        "--max-jobs", "2")  # fmt: skip
        assert added.code == 0, added.err
    (tmp_path / "harchos.toml").write_text(
        '[job]\ncommand = ["true"]\n[carbon]\nhubs = ["fr", "de"]\n'
    )
    os.chdir(tmp_path)
    replay = f"replay:{traces / 'eco4cast' / 'FR_2022_hourly.csv'},{traces / DE_TRACE}"
    # Three start hours before the deadline, two slots an hour on each hub: France's grid is the
    # greener all day, so it takes six jobs and Germany the other two.
    made = harchos(capsys, "run", "batch", "--array", "1-8", "--hub", "auto",
                   "--defer-until-green", "--duration", "1h", "--deadline", "3h", "--provider",
                   replay, "--at", "2022-03-01T03:00:00Z", "--json")  # fmt: skip
    assert made.code == 0, made.err
    jobs = made.json()["jobs"]
    try:
        assert [job["hub"] for job in jobs] == ["fr"] * 6 + ["de"] * 2
        per_hour = Counter((job["hub"], job["planned_start"]) for job in jobs)
        assert max(per_hour.values()) == 2
        assert {start for hub, start in per_hour if hub == "fr"} == {
            "2022-03-01T03:00:00Z", "2022-03-01T04:00:00Z", "2022-03-01T05:00:00Z"
        }  # fmt: skip
    finally:
        harchos(capsys, "jobs", "cancel", "--array", made.json()["array_id"])


def test_a_job_whose_project_breaks_while_it_waits_fails_alone_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    broken, sound = tmp_path / "broken", tmp_path / "sound"
    for project in (broken, sound):
        project.mkdir()
        (project / "harchos.toml").write_text(
            '[job]\ncommand = ["true"]\n[carbon]\nregion = "DE"\n'
        )
    submit = ["run", "batch", "--defer-until-green", "--duration", "1h", "--deadline", "10h",
              "--provider", f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T03:00:00Z",
              "--speedup", "2400", "--detach", "--json"]  # fmt: skip
    ids = []
    for project in (broken, sound):
        os.chdir(project)
        ids.append(str(harchos(capsys, *submit).json()["job_id"]))
    (broken / "harchos.toml").write_text("[job\n")  # while it waits
    store = JobStore()

    def settled() -> bool:
        harchos(capsys, "jobs", "list")
        return not any(store.get(job_id).active for job_id in ids)

    wait_until(settled, timeout=90)
    failed, done = (store.get(job_id) for job_id in ids)
    assert failed.state == "failed"
    assert "harchos.toml" in (failed.message or ""), failed.message
    assert (done.state, done.exit_code) == ("done", 0)
    store.close()


@pytest.mark.parametrize("sql_json", [True, False])
def test_bookings_read_the_windows_with_or_without_sqlites_json_functions(
    monkeypatch: pytest.MonkeyPatch, sql_json: bool
) -> None:
    from harchos_cli.jobs import store as store_module
    from harchos_cli.jobs.store import Booking, Job, JobStateName

    monkeypatch.setattr(store_module, "_sql_json", lambda db: sql_json)
    store = JobStore()
    plan = {"planned_end": "2022-03-01T11:00:00Z"}
    rows: list[tuple[str, JobStateName, dict[str, Any], str | None]] = [
        ("a", "waiting", {"array": {"id": "array-x", "index": 1}}, "2022-03-01T10:00:00Z"),
        ("b", "running", {}, "2022-03-01T10:00:00Z"),
        ("c", "done", {}, "2022-03-01T10:00:00Z"),  # finished: holds no slot
        ("d", "waiting", {}, None),  # no plan yet
    ]
    for job_id, state, request, start in rows:
        store.create(Job(job_id, "batch", "p", "/p", state, request, hub="h", planned_start=start,
                         plan=plan))  # fmt: skip
    found = sorted(store.bookings(), key=lambda b: b.id)
    store.close()
    assert found == [
        Booking("a", "h", "2022-03-01T10:00:00Z", "2022-03-01T11:00:00Z", "array-x"),
        Booking("b", "h", "2022-03-01T10:00:00Z", "2022-03-01T11:00:00Z", None, started=True),
    ]


def test_a_due_job_waits_for_a_free_slot_rather_than_start_beside_a_full_hub(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    from harchos_cli.jobs.liveness import supervisor_lock
    from harchos_cli.jobs.store import Job

    ran = sweep(tmp_path)
    store = JobStore()
    held = contextlib.ExitStack()
    # The hub's slots are all taken by jobs that run on past their windows (supervised here, so
    # that no harchos command revives them).
    for index in range(SLOTS):
        held.enter_context(supervisor_lock(f"busy{index}"))
        store.create(Job(f"busy{index}", "batch", "p", "/p", "running", {}, hub="local",
                         planned_start="2022-03-01T01:00:00Z",
                         plan={"planned_end": "2022-03-01T02:00:00Z"}))  # fmt: skip
    # Its deadline leaves it no other hour: it is due at once.
    due = harchos(capsys, "run", "batch", "--defer-until-green", "--duration", "1h",
                  "--deadline", "1h", "--provider", f"replay:{traces / DE_TRACE}", "--at",
                  "2022-03-01T03:00:00Z", "--detach", "--json")  # fmt: skip
    assert due.code == 0, due.err
    job_id = str(due.json()["job_id"])
    wait_until(lambda: "waiting for a slot" in (store.get(job_id).message or ""), timeout=30)
    assert store.get(job_id).state == "waiting"
    assert not ran.exists()
    for index in range(SLOTS):
        store.advance(f"busy{index}", ["running"], "done")
    held.close()
    wait_until(lambda: store.get(job_id).state == "done", timeout=60)
    assert ran.read_text().split() == [job_id]
    store.close()


def test_a_job_that_runs_past_its_window_still_holds_its_slot(tmp_path: Path) -> None:
    from test_planner import HOUR, T0, forecast

    from harchos_cli.hubs.base import Hub
    from harchos_cli.jobs.request import booked
    from harchos_cli.jobs.store import Job
    from harchos_cli.plan import planner

    store = JobStore()
    # Four jobs planned from T0 - 2 h for an hour each, still running at T0.
    start, end = (iso(T0 - 2 * HOUR), iso(T0 - HOUR))
    for index in range(SLOTS):
        store.create(Job(f"r{index}", "batch", "p", "/p", "running", {}, hub="h",
                         planned_start=start, plan={"planned_end": end}))  # fmt: skip
    store.close()
    hub = Hub("h", "local", max_jobs=SLOTS)
    values = [100.0, 200.0, 300.0]  # now is the greenest hour
    (candidate,) = booked([planner.Candidate(hub, forecast(values))], None, now=T0)
    plan = planner.choose([candidate], now=T0, duration=HOUR, deadline=T0 + 3 * HOUR,
                          threshold=None, gpus=0)  # fmt: skip
    assert plan.choice.start == T0 + HOUR  # the current hour is full while they run
    # Without a "now" (or once they are done) their windows lie in the past: the hour is free.
    (free,) = booked([planner.Candidate(hub, forecast(values))], None)
    plan = planner.choose([free], now=T0, duration=HOUR, deadline=T0 + 3 * HOUR,
                          threshold=None, gpus=0)  # fmt: skip
    assert plan.choice.start == T0
