"""What harchos does to this job: move it to another hub, and change its number of processes."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import train
from conftest import checkpoints_in, run_and_signal, run_train, same_weights, settings

STEPS = 500


def hub(name: str, region: str) -> dict[str, str]:
    return {"HARCHOS_HUB": name, "HARCHOS_REGION": region, "HARCHOS_JOB_ID": "job-1"}


def test_paused_on_one_hub_resumed_on_another_ends_with_the_same_weights(tmp_path: Path) -> None:
    straight = run_train(tmp_path / "ckpt", settings(tmp_path / "straight", STEPS))
    assert straight.code == 0, straight.output

    first, second = tmp_path / "hub-a", tmp_path / "hub-b"
    paused = run_and_signal(
        first / "ckpt", settings(first / "out", STEPS),
        after_step=20, signum=signal.SIGUSR1, env=hub("hub-a", "eu-north"),
    )  # fmt: skip
    assert paused.code == train.PAUSED_EXIT_CODE, paused.output
    assert "on hub hub-a (region eu-north)" in paused.output
    # What harchos's checkpoint sync does (rsync between hubs), here between two folders.
    shutil.copytree(first / "ckpt", second / "ckpt")
    moved = checkpoints_in(second / "ckpt")[-1]

    resumed = run_train(
        second / "ckpt", settings(second / "out", STEPS), env=hub("hub-b", "us-west")
    )
    assert resumed.code == 0, resumed.output
    assert "on hub hub-b (region us-west)" in resumed.output
    assert f"resumed from {moved}" in resumed.output
    assert same_weights(tmp_path / "straight", second / "out")


def test_rescaled_from_two_processes_to_one_it_finishes_from_where_it_stopped(
    tmp_path: Path,
) -> None:
    paused = run_and_signal(
        tmp_path / "ckpt", settings(tmp_path / "out", 100),
        after_step=20, signum=signal.SIGUSR1, processes=2, rank=0,
    )  # fmt: skip
    assert "paused at step" in paused.output, paused.output
    saved = checkpoints_in(tmp_path / "ckpt")[-1]
    stopped_at = int(saved.name.removeprefix("step_"))

    resumed = run_train(tmp_path / "ckpt", settings(tmp_path / "out", 100), processes=1)
    assert resumed.code == 0, resumed.output
    assert "resuming on 1 processes, checkpoint made on 2" in resumed.output
    assert f"resumed from {saved} at step {stopped_at}" in resumed.output
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["step"] == 100
