"""The supervisor's own decisions while a job runs: an interruptible job pauses through dirty
hours and resumes when the forecast said, on a replayed real trace and a fast clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import harchos

WORK = """
import json, os, pathlib, signal, sys, time
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
workers = pathlib.Path(os.environ["HARCHOS_CONTROL_DIR"]) / "workers"
workers.mkdir(parents=True, exist_ok=True)
(workers / str(os.getpid())).touch()
progress = pathlib.Path(os.environ["HARCHOS_CHECKPOINT_DIR"]) / "step"
progress.parent.mkdir(parents=True, exist_ok=True)
step = int(progress.read_text()) if progress.exists() else 0
while step < 20:
    if stop:
        (workers / f"{os.getpid()}.paused").write_text(json.dumps({"step": step}))
        sys.exit(85)
    time.sleep(0.05)
    step += 1
    with open("steps.log", "a") as log:
        log.write(f"{step}\\n")
    progress.write_text(str(step))
"""


def test_an_interruptible_job_pauses_for_greener_hours_and_finishes_by_its_deadline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "batch"\ncommand = "python work.py"\n\n[carbon]\nregion = "DE"\n'
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
    assert (tmp_path / "steps.log").read_text().split() == [str(i) for i in range(1, 21)]
    shown = harchos(capsys, "jobs", "show", data["job_id"], "--json").json()
    actions = [d["action"] for d in shown["decisions"]]
    assert actions[:3] == ["plan", "start", "auto-pause"]
    pause = shown["decisions"][2]
    assert pause["resume_at"].startswith("2022-03-01T1")  # the green hours, 10:00 or later
    assert "greener hours" in pause["reason"]
    assert "resume" in actions[3:]
