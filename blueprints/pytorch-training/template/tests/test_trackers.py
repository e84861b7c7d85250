"""Trackers (accelerate's `log_with`) and the accelerate config files, one per kind of hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import train
from conftest import PROJECT, metrics


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trackers: str) -> Path:
    monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    logs = tmp_path / "runs"
    cfg = train.load_config(
        train.PROJECT_CONFIG,
        ["steps=10", "eval_every=5", f'output_dir="{tmp_path / "out"}"',
         f'logging_dir="{logs}"', f"trackers={trackers}", 'run_name="demo-run"'],
    )  # fmt: skip
    assert train.train(cfg).status == "finished"
    return logs / "demo-run"


def test_auto_logs_to_tensorboard_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run(tmp_path, monkeypatch, '"auto"')
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [10]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [5, 10]
    # The JSONL file holds the same numbers.
    logged = metrics(tmp_path / "runs", "demo-run")
    assert [m["train/loss"] for m in logged if "train/loss" in m] == pytest.approx(
        [e.value for e in events.Scalars("train/loss")]
    )


def test_auto_without_tensorboard_and_no_trackers_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import accelerate.utils

    # As on a machine where tensorboard, wandb and mlflow are not installed.
    for check in ("is_tensorboard_available", "is_wandb_available", "is_mlflow_available"):
        monkeypatch.setattr(accelerate.utils, check, lambda: False)
    folder = run(tmp_path / "auto", monkeypatch, '"auto"')
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.jsonl"]

    run(tmp_path / "none", monkeypatch, "[]")
    assert not (tmp_path / "none" / "runs").exists()
    assert (tmp_path / "none" / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("name", "kind", "machines"),
    [("cpu", "NO", 1), ("gpu", "NO", 1), ("multi-gpu", "MULTI_GPU", 1),
     ("multi-node", "MULTI_GPU", 2)],
)  # fmt: skip
def test_an_accelerate_config_per_kind_of_hub(name: str, kind: str, machines: int) -> None:
    """Read by accelerate itself. The CPU, multi-GPU and multi-node files also start real runs
    in these tests (conftest.launch_cmd); the one-GPU file needs a GPU."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PROJECT / "accelerate-configs" / f"{name}.yaml"))
    assert config.distributed_type.value == kind
    assert config.num_machines == machines
    assert config.use_cpu == (name == "cpu")
    readme = (PROJECT / "README.md").read_text()
    assert f"--config_file accelerate-configs/{name}.yaml" in readme
