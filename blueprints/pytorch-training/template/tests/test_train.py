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
from conftest import (
    checkpoints_in,
    metrics,
    run_and_signal,
    run_train,
    same_weights,
    settings,
    weights,
)

STEPS = 600  # long enough to be signalled mid-run, a second or two on a CPU


def test_trains_a_few_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    cfg = train.load_config(
        train.PROJECT_CONFIG,
        ["steps=40", "log_every=10", f'output_dir="{tmp_path / "out"}"', 'trackers=["jsonl"]',
         f'logging_dir="{tmp_path / "runs"}"'],
    )  # fmt: skip
    first = train.train(dataclasses.replace(cfg, steps=1))
    assert first.status == "finished" and first.step == 1
    result = train.train(cfg)
    assert result.status == "finished"
    assert result.step == 40
    assert result.loss is not None and math.isfinite(result.loss)
    # The second call resumed from the first call's checkpoint at step 1 and kept learning.
    assert result.loss < first.loss  # type: ignore[operator]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["step"] == 40
    last = checkpoints_in(tmp_path / "ckpt")[-1]
    assert last.name == "step_000000040"

    # The saved weights load back into the model named in train.toml: they are the trained ones
    # (the last checkpoint's), not a fresh initialisation.
    import torch
    from safetensors.torch import load_file

    loaded = train.load_model(cfg, tmp_path / "out")
    trained = load_file(last / "model.safetensors")
    state = loaded.state_dict()
    assert state.keys() == trained.keys() == weights(tmp_path / "out").keys()
    assert all(torch.equal(state[k], trained[k]) for k in state)
    fresh = train.load_object(cfg.model)(**cfg.model_args).state_dict()
    assert not all(torch.equal(state[k], fresh[k]) for k in state)

    # The LR schedule (warm-up, then linear decay to 0 at `steps`) ran across the resume, and
    # every 10 steps the loss, learning rate and gradient norm were logged; eval at the end.
    logged = {(m["step"], k): v for m in metrics(tmp_path / "runs") for k, v in m.items()}
    lr = [logged[(step, "train/lr")] for step in (10, 20, 30, 40)]
    expected = [cfg.learning_rate * (40 - s) / (40 - cfg.warmup_steps) for s in (10, 20, 30, 40)]
    assert lr == pytest.approx(expected)
    assert logged[(40, "eval/accuracy")] > 0.5  # four classes: better than chance
    assert logged[(40, "train/grad_norm")] > 0


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
    assert not (tmp_path / "b" / "model.safetensors").exists()

    # Resumed under `accelerate launch` with the project's CPU config.
    resumed = run_train(tmp_path / "ckpt-b", settings(tmp_path / "b", STEPS), config="cpu")
    assert resumed.code == 0, resumed.output
    assert f"resumed from {saved[-1]} at step {stopped_at}" in resumed.output
    assert same_weights(tmp_path / "a", tmp_path / "b")
    # The same curves: every logged loss, learning rate, gradient norm and evaluation, once each.
    curve = metrics(tmp_path / "a" / "runs")
    assert metrics(tmp_path / "b" / "runs") == curve
    assert [m["step"] for m in curve if "eval/loss" in m] == list(range(50, STEPS + 1, 50))


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


NO_DROPOUT = ["model_args={ hidden = 64, dropout = 0.0 }"]


def in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *overrides: str
) -> train.TrainConfig:
    """Train in this process with `overrides`; the run's files go to tmp_path/name."""
    monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / name / "ckpt"))
    cfg = train.load_config(
        train.PROJECT_CONFIG,
        [f'output_dir="{tmp_path / name}"', f'logging_dir="{tmp_path / name / "runs"}"',
         'trackers=["jsonl"]', "log_every=1", *overrides],
    )  # fmt: skip
    assert train.train(cfg).status == "finished"
    return cfg


def test_accumulated_micro_batches_match_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """micro_batch_size=4 of a batch of 16: four micro-batches under accelerator.accumulate, one
    optimizer and scheduler step; the same training as the whole batch at once."""
    whole = in_process(tmp_path, monkeypatch, "whole", "steps=20", *NO_DROPOUT)
    in_process(tmp_path, monkeypatch, "micro", "steps=20", "micro_batch_size=4", *NO_DROPOUT)
    assert whole.micro_batch_size == 0 and whole.batch_size == 16
    first, second = weights(tmp_path / "whole"), weights(tmp_path / "micro")
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-5  # type: ignore[operator]
    # One scheduler step per optimizer step, not per micro-batch.
    lrs = [[m["train/lr"] for m in metrics(tmp_path / n / "runs") if "train/lr" in m]
           for n in ("whole", "micro")]  # fmt: skip
    assert lrs[0] == lrs[1] and len(lrs[0]) == 20


def test_gradients_are_clipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_process(tmp_path, monkeypatch, "clipped", "steps=10", "max_grad_norm=0.001", *NO_DROPOUT)
    in_process(tmp_path, monkeypatch, "free", "steps=10", "max_grad_norm=0", *NO_DROPOUT)
    # The norm logged is the one before clipping, far above the limit: clipping was at work ...
    norms = [m["train/grad_norm"] for m in metrics(tmp_path / "clipped" / "runs")
             if "train/grad_norm" in m]  # fmt: skip
    assert len(norms) == 10 and min(norms) > 0.01  # type: ignore[operator]
    # ... and changed the training; without clipping no norm is logged.
    assert not same_weights(tmp_path / "clipped", tmp_path / "free")
    assert not any("train/grad_norm" in m for m in metrics(tmp_path / "free" / "runs"))


def test_dict_batches_and_a_model_that_returns_its_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hugging Face shapes without transformers: dict samples, `model(**batch)`, `loss` and
    `logits` read from the output."""
    package = train.TrainConfig().model.split(".")[0]
    cfg = in_process(
        tmp_path, monkeypatch, "dicts", "steps=60", "learning_rate=0.05", "eval_every=30",
        f'model="{package}.model:tiny_text_classifier"', "model_args={}",
        f'dataset="{package}.data:synthetic_tokens"', "dataset_args={}",
        f'eval_dataset="{package}.data:synthetic_tokens"',
        'eval_dataset_args={ samples = 100, split = "eval" }',
    )  # fmt: skip
    logged = metrics(tmp_path / "dicts" / "runs")
    evals = [m for m in logged if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [30, 60]
    assert evals[-1]["eval/accuracy"] > 0.7  # type: ignore[operator]
    import torch

    loaded = train.load_model(cfg, tmp_path / "dicts")
    saved = weights(tmp_path / "dicts")
    assert all(torch.equal(loaded.state_dict()[k], saved[k]) for k in saved)  # type: ignore[arg-type]
