"""The training contract: trains, runs on two processes, pauses on a signal and resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from pathlib import Path

import pytest
import train
from conftest import checkpoints_in, run_and_signal, run_train, same_weights, settings

STEPS = 600  # long enough to be signalled mid-run, a second or two on a CPU


def test_trains_a_few_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    cfg = train.load_config(
        train.PROJECT_CONFIG, ["steps=40", "log_every=1", f'output_dir="{tmp_path / "out"}"']
    )
    first = train.train(dataclasses.replace(cfg, steps=1))
    assert first.status == "finished" and first.step == 1
    result = train.train(cfg)
    assert result.status == "finished"
    assert result.step == 40
    assert result.loss is not None and math.isfinite(result.loss)
    # The second call resumed from the first call's checkpoint at step 1 and kept learning.
    assert result.loss < first.loss  # type: ignore[operator]
    assert (tmp_path / "out" / "model.pt").is_file()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["step"] == 40
    assert [p.name for p in checkpoints_in(tmp_path / "ckpt")][-1] == "step_000000040"


def test_signal_pauses_with_85_and_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight = run_train(tmp_path / "ckpt-a", settings(tmp_path / "a", STEPS))
    assert straight.code == 0, straight.output

    paused = run_and_signal(
        tmp_path / "ckpt-b", settings(tmp_path / "b", STEPS),
        after_step=20, signum=signal.SIGUSR1,
    )  # fmt: skip
    assert paused.code == train.PAUSED_EXIT_CODE, paused.output
    assert "paused at step" in paused.output
    saved = checkpoints_in(tmp_path / "ckpt-b")
    stopped_at = int(saved[-1].name.removeprefix("step_"))
    assert 20 <= stopped_at < STEPS
    assert not (tmp_path / "b" / "model.pt").exists()

    resumed = run_train(tmp_path / "ckpt-b", settings(tmp_path / "b", STEPS))
    assert resumed.code == 0, resumed.output
    assert f"resumed from {saved[-1]} at step {stopped_at}" in resumed.output
    assert same_weights(tmp_path / "a", tmp_path / "b")


def test_without_rng_state_a_resumed_run_diverges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: dropout makes the RNG state matter."""
    cfg = train.load_config(train.PROJECT_CONFIG, ["checkpoint_every=30", "steps=60"])

    def run(name: str, steps: int) -> None:
        monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / f"ckpt-{name}"))
        out = str(tmp_path / name)
        assert train.train(dataclasses.replace(cfg, steps=steps, output_dir=out)).step == steps

    run("a", 60)
    run("b", 30)
    for rng_file in (tmp_path / "ckpt-b").glob("step_*/random_states_*.pkl"):
        rng_file.unlink()
    run("b", 60)
    assert not same_weights(tmp_path / "a", tmp_path / "b")


def test_control_files_only_under_harchos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARCHOS_CONTROL_DIR", raising=False)
    paused = train.TrainResult("paused", 7, None, str(tmp_path / "ckpt" / "step_000000007"))
    train.register_worker()
    train.report_paused(paused)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv("HARCHOS_CONTROL_DIR", str(tmp_path / "control"))
    train.register_worker()
    train.report_paused(paused)
    workers = tmp_path / "control" / "workers"
    pid = os.getpid()
    assert sorted(p.name for p in workers.iterdir()) == [str(pid), f"{pid}.paused"]
    assert json.loads((workers / f"{pid}.paused").read_text()) == {
        "checkpoint": str(tmp_path / "ckpt" / "step_000000007"),
        "step": 7,
    }
