"""The supervisor's own decisions while a job runs: an interruptible job pauses through dirty
hours and resumes when the forecast said, on a replayed real trace and a fast clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from clirunner import harchos
from sshd import Sshd, client_key_fixture, sshd_factory_fixture
from test_pause_migrate import add_hub, on_hub

from harchos_cli.jobs.liveness import supervisor_lock
from harchos_cli.jobs.store import Job, JobStore

__all__ = ["client_key_fixture", "sshd_factory_fixture"]

# A workload that keeps the training contract: it registers, saves its step in
# $HARCHOS_CHECKPOINT_DIR, resumes from it, and on SIGUSR1/SIGTERM confirms a pause and exits 85.
# Each step is logged as "<hub> <step>" in steps.log (in the project's folder where it ran).
WORK = """
import json, os, pathlib, signal, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
workers = pathlib.Path(os.environ["HARCHOS_CONTROL_DIR"]) / "workers"
workers.mkdir(parents=True, exist_ok=True)
(workers / str(os.getpid())).touch()
progress = pathlib.Path(os.environ["HARCHOS_CHECKPOINT_DIR"]) / "step"
progress.parent.mkdir(parents=True, exist_ok=True)
step = int(progress.read_text()) if progress.exists() else 0
while step < steps:
    if stop:
        (workers / f"{os.getpid()}.paused").write_text(json.dumps({"step": step}))
        sys.exit(85)
    time.sleep(delay)
    step += 1
    with open("steps.log", "a") as log:
        log.write(f"{os.environ['HARCHOS_HUB']} {step}\\n")
    progress.write_text(str(step))
"""


def germany_and_france(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    sshd_factory: Callable[[str], Sshd], *, steps: int, carbon: str = "",
    france: tuple[str, ...] = (),
) -> tuple[Sshd, Sshd, str]:  # fmt: skip
    """Hubs h1 (Germany) and h2 (France, `hubs add` with `france` options more) for the
    project in `tmp_path` (entered), whose job is WORK of `steps` steps; and the replay spec of
    both grids."""
    h1, h2 = sshd_factory("h1"), sshd_factory("h2")
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "harchos.toml").write_text(
        f'[job]\nkind = "batch"\ncommand = "python3 work.py {steps} 0.1"\n\n'
        f'[carbon]\nhubs = ["h1", "h2"]\n{carbon}'
    )
    add_hub(capsys, h1, "DE")
    add_hub(capsys, h2, "FR", *france)
    os.chdir(tmp_path)
    eco4cast = traces / "eco4cast"
    return h1, h2, f"replay:{eco4cast / 'DE_2022_hourly.csv'},{eco4cast / 'FR_2022_hourly.csv'}"


def test_an_interruptible_job_pauses_for_greener_hours_and_finishes_by_its_deadline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "batch"\ncommand = "python work.py 20 0.05"\n\n[carbon]\nregion = "DE"\n'
    )
    os.chdir(tmp_path)
    # Germany on 2022-03-01: 543 g at 03:00, greenest at 10-11 (456-459 g). At 7200× a clock
    # hour is half a second, and the 20 steps (a second) are the job's 2 hours.
    result = harchos(
        capsys, "run", "batch", "--interruptible", "--duration", "2h", "--deadline", "10h",
        "--provider", f"replay:{traces / 'eco4cast' / 'DE_2022_hourly.csv'}",
        "--at", "2022-03-01T03:00:00Z", "--speedup", "7200", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert data["state"] == "done"
    assert data["attempt"] >= 2
    # Every step ran exactly once, across the pause.
    ran = [line.split()[1] for line in (tmp_path / "steps.log").read_text().splitlines()]
    assert ran == [str(i) for i in range(1, 21)]
    shown = harchos(capsys, "jobs", "show", data["job_id"], "--json").json()
    actions = [d["action"] for d in shown["decisions"]]
    assert actions[:3] == ["plan", "start", "auto-pause"]
    pause = shown["decisions"][2]
    assert pause["resume_at"].startswith("2022-03-01T1")  # the green hours, 10:00 or later
    assert "greener hours" in pause["reason"]
    assert "resume" in actions[3:]


def test_a_job_allowed_to_move_moves_itself_to_the_greener_hub_and_no_step_is_lost(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    traces: Path,
    sshd_factory: Callable[[str], Sshd],
) -> None:
    """Each hub on its own replayed grid: Germany (about 540 g at 03:00 on 2022-03-01) and
    France (about 100 g). The supervisor moves the job at its first hourly look."""
    h1, h2, replay = germany_and_france(
        capsys, tmp_path, traces, sshd_factory, steps=150, carbon='tidy_source = "delete"\n'
    )
    # At 720× a clock hour is 5 s: the 150 steps (15 s) are the job's 3 hours.
    result = harchos(
        capsys, "run", "batch", "--hub", "h1", "--migrate", "auto", "--duration", "3h",
        "--deadline", "24h", "--provider", replay, "--at", "2022-03-01T03:00:00Z",
        "--speedup", "720", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert (data["state"], data["hub"]) == ("done", "h2"), data["message"]
    shown = harchos(capsys, "jobs", "show", data["job_id"], "--json").json()
    decisions = {d["action"]: d for d in shown["decisions"]}
    auto = decisions["auto-migrate"]
    assert (auto["source"], auto["hub"]) == ("h1", "h2")
    assert auto["move_emissions"] < auto["stay_emissions"]
    assert decisions["migrate"]["hub"] == "h2"
    assert [d["action"] for d in shown["decisions"]].count("migrate") == 1  # no flapping
    # Every step ran once: the first ones on h1, the rest on h2 from the copied progress.
    ran = [
        line.split()
        for server in (h1, h2)
        for line in on_hub(server, tmp_path, "steps.log").read_text().splitlines()
    ]
    assert [int(step) for _, step in ran] == list(range(1, 151))
    hubs = [hub for hub, _ in ran]
    assert hubs == sorted(hubs)
    assert hubs[0] == "h1"
    assert hubs[-1] == "h2"
    # Done on h2, so the run's checkpoints on h1 were deleted (tidy_source = "delete").
    checkpoints = on_hub(h1, tmp_path, "checkpoints", data["job_id"])
    assert not checkpoints.exists()
    assert on_hub(h2, tmp_path, "checkpoints", data["job_id"], "step").read_text() == "150"
    assert decisions["tidy"]["hub"] == "h1"
    assert str(checkpoints) in decisions["tidy"]["reason"]


def test_a_job_does_not_move_to_a_greener_hub_whose_slots_are_full(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    traces: Path,
    sshd_factory: Callable[[str], Sshd],
) -> None:
    """As above, but France's hub runs its one job already: moving there would stop the job
    until that one ends, so the job stays in Germany and runs through."""
    h1, _, replay = germany_and_france(
        capsys, tmp_path, traces, sshd_factory, steps=60, france=("--max-jobs", "1")
    )
    store = JobStore()
    try:
        with supervisor_lock("busy"):  # a running job on h2 that no harchos command revives
            store.create(Job("busy", "batch", "p", "/p", "running", {}, hub="h2"))
            result = harchos(
                capsys, "run", "batch", "--hub", "h1", "--migrate", "auto", "--duration", "2h",
                "--deadline", "24h", "--provider", replay, "--at", "2022-03-01T03:00:00Z",
                "--speedup", "720", "--json",
            )  # fmt: skip
    finally:
        store.close()
    assert result.code == 0, result.err
    data = result.json()
    assert (data["state"], data["hub"]) == ("done", "h1"), data["message"]
    shown = harchos(capsys, "jobs", "show", data["job_id"], "--json").json()
    actions = [d["action"] for d in shown["decisions"]]
    assert "auto-migrate" not in actions
    assert "migrate" not in actions
    ran = on_hub(h1, tmp_path, "steps.log").read_text().split()
    assert ran[1::2] == [str(i) for i in range(1, 61)]
