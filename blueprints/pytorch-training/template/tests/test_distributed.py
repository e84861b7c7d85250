"""Two processes on the CPU over gloo, launched by `accelerate launch` as on a two-GPU machine."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import train
from conftest import Run, checkpoints_in, run_and_signal, run_train, same_weights, settings

STEPS = 100


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    folder = tmp_path_factory.mktemp("two-processes")
    return folder, run_train(folder / "ckpt", settings(folder / "out", STEPS), processes=2)


def test_a_two_process_gloo_run_works(straight: tuple[Path, Run]) -> None:
    folder, run = straight
    assert run.code == 0, run.output
    assert run.output.count(" ready: ") == 2
    assert f"step {STEPS}/{STEPS} loss" in run.output
    assert (folder / "out" / "model.pt").is_file()
    last = checkpoints_in(folder / "ckpt")[-1]
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


def test_sigterm_to_one_rank_pauses_both_and_resume_matches(
    straight: tuple[Path, Run], tmp_path: Path
) -> None:
    folder, run = straight
    assert run.code == 0, run.output
    paused = run_and_signal(
        tmp_path / "ckpt", settings(tmp_path / "out", STEPS),
        after_step=20, signum=signal.SIGTERM, processes=2, rank=1,
    )  # fmt: skip
    # Only rank 1 got the signal, yet both ranks saved at the same step boundary. torchrun counts
    # any non-zero exit as a failure: it exits 1 and names the pause code in its summary.
    assert paused.output.count("received SIGTERM") == 1, paused.output
    assert "paused at step" in paused.output
    assert paused.code != 0
    assert f"exitcode  : {train.PAUSED_EXIT_CODE}" in paused.output
    saved = checkpoints_in(tmp_path / "ckpt")[-1]
    assert {p.name for p in saved.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    resumed = run_train(tmp_path / "ckpt", settings(tmp_path / "out", STEPS), processes=2)
    assert resumed.code == 0, resumed.output
    assert f"resumed from {saved}" in resumed.output
    assert same_weights(folder / "out", tmp_path / "out")
