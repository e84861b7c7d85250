"""What harchos does to this job: move it to another hub, and change its number of processes."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import train
from conftest import (
    checkpoints_in,
    max_weight_difference,
    metrics,
    run_and_signal,
    run_train,
    same_weights,
    settings,
)

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
    # The curves continue on the new hub: hub A's log up to the move, then hub B's, is the log of
    # the run that never moved (losses, learning rates, gradient norms, evaluations).
    moved_at = int(moved.name.removeprefix("step_"))
    before, after = metrics(first / "out" / "runs"), metrics(second / "out" / "runs")
    assert all(m["step"] <= moved_at for m in before)
    assert all(m["step"] > moved_at for m in after)
    assert before + after == metrics(tmp_path / "straight" / "runs")


# Rescaling compares weights across world sizes: the default model's dropout masks cannot follow
# the samples to another number of processes (train.py reseeds them), so switch dropout off.
NO_DROPOUT = ["--set", "model_args={ hidden = 64, dropout = 0.0 }", "--set", "log_every=1"]


def samples_per_step(folder: Path) -> dict[int, list[int]]:
    """The samples each global step trained on, over all processes and launches."""
    steps: dict[int, list[int]] = {}
    for log in folder.glob("samples-*.jsonl"):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(record["samples"])
    return {step: sorted(ids) for step, ids in sorted(steps.items())}


def test_rescaled_two_one_two_processes_matches_a_two_process_run(tmp_path: Path) -> None:
    steps = 120

    def args(name: str) -> list[str]:
        return settings(tmp_path / name, steps, sample_log=str(tmp_path / f"{name}-samples"))

    straight = run_train(tmp_path / "ckpt-straight", args("straight") + NO_DROPOUT, processes=2)
    assert straight.code == 0, straight.output

    ckpt = tmp_path / "ckpt"
    first = run_and_signal(
        ckpt, args("out") + NO_DROPOUT,
        after_step=30, signum=signal.SIGUSR1, processes=2, control=tmp_path / "control-1",
    )  # fmt: skip
    assert "paused at step" in first.output, first.output
    a = int(checkpoints_in(ckpt)[-1].name.removeprefix("step_"))
    second = run_and_signal(
        ckpt, args("out") + NO_DROPOUT,
        after_step=a + 30, signum=signal.SIGUSR1, processes=1, control=tmp_path / "control-2",
    )  # fmt: skip
    assert second.code == train.PAUSED_EXIT_CODE, second.output
    assert "resuming on 1 processes, checkpoint made on 2" in second.output
    b = int(checkpoints_in(ckpt)[-1].name.removeprefix("step_"))
    assert a < b < steps
    third = run_train(ckpt, args("out") + NO_DROPOUT, processes=2)
    assert third.code == 0, third.output
    assert "resuming on 2 processes, checkpoint made on 1" in third.output
    assert f"resumed from {ckpt / f'step_{b:09d}'} at step {b}" in third.output

    # The same samples in the same global steps, each step trained exactly once ...
    expected = samples_per_step(tmp_path / "straight-samples")
    assert list(expected) == list(range(1, steps + 1))
    assert samples_per_step(tmp_path / "out-samples") == expected
    batch = train.load_config(train.PROJECT_CONFIG, []).batch_size
    assert all(len(ids) == batch for ids in expected.values())
    # ... and the mean gradient over the same global batch: the same weights, up to rounding.
    assert json.loads((tmp_path / "out" / "result.json").read_text())["step"] == steps
    assert max_weight_difference(tmp_path / "straight", tmp_path / "out") <= 1e-4


@pytest.mark.parametrize("micro_batch_size", [0, 3, 8])
def test_every_world_size_takes_the_same_samples_in_each_step(micro_batch_size: int) -> None:
    def step_samples(world: int) -> list[list[int]]:
        samplers = [
            train.GlobalBatchSampler(
                100, 8, seed=7, rank=rank, world=world, micro_batch_size=micro_batch_size
            )
            for rank in range(world)
        ]
        per_rank = [list(sampler) for sampler in samplers]
        micro = samplers[0].micro_steps
        steps = samplers[0].steps_per_epoch
        return [
            sorted(i for batches in per_rank for batch in batches[s * micro : (s + 1) * micro]
                   for i in batch)
            for s in range(steps)
        ]  # fmt: skip

    one = step_samples(1)
    assert len(one) == 12 and all(len(ids) == 8 for ids in one)
    assert len({i for ids in one for i in ids}) == 96  # no sample twice in an epoch
    assert step_samples(2) == one
    assert step_samples(4) == one
    assert step_samples(8) == one


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(train.ConfigError, match=r"batch_size 16 .* 3 processes"):
        train.GlobalBatchSampler(512, 16, seed=0, rank=0, world=3)
