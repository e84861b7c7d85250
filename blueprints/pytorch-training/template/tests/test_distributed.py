"""Two processes on the CPU over gloo, launched by `accelerate launch` as on a two-GPU machine."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import train
from conftest import (
    Run,
    checkpoints_in,
    metrics,
    registered,
    run_and_signal,
    run_train,
    run_two_machines,
    same_weights,
    settings,
    weights,
)

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
    last = checkpoints_in(folder / "ckpt")[-1]
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


def test_two_processes_save_weights_that_load_back_and_evaluate_as_one(
    straight: tuple[Path, Run],
) -> None:
    """accelerator.save_model under DDP writes the trained weights once; they load back into the
    model, and evaluating them in one process gives what the two processes logged: each evaluated
    a shard and gather_for_metrics dropped the samples repeated to even out the last batch
    (100 samples in batches of 32 per process)."""
    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    folder, run = straight
    assert run.code == 0, run.output
    cfg = train.load_config(train.PROJECT_CONFIG, [])
    model = train.load_model(cfg, folder / "out")
    trained = load_file(checkpoints_in(folder / "ckpt")[-1] / "model.safetensors")
    assert weights(folder / "out").keys() == trained.keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)

    eval_set = train.load_object(cfg.eval_dataset)(**cfg.eval_dataset_args)
    assert len(eval_set) % (2 * cfg.eval_batch_size) != 0  # so the last batch is evened out
    accelerator = Accelerator(cpu=True)
    loader = DataLoader(eval_set, batch_size=len(eval_set))
    loss_fn = train.load_object(cfg.loss)
    alone = train.evaluate(accelerator, model, loader, loss_fn)
    logged = [m for m in metrics(folder / "out" / "runs") if "eval/loss" in m][-1]
    assert logged["step"] == STEPS
    assert logged["eval/accuracy"] == pytest.approx(alone["accuracy"], abs=1e-6)
    assert logged["eval/loss"] == pytest.approx(alone["loss"], rel=1e-5)


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


def test_every_registered_worker_confirms_its_pause(tmp_path: Path) -> None:
    """harchos's side of a pause: signal the pids in `workers/`, read their `.paused` files."""
    control = tmp_path / "control"
    paused = run_and_signal(
        tmp_path / "ckpt", settings(tmp_path / "out", STEPS),
        after_step=20, signum=signal.SIGUSR1, processes=2, control=control,
    )  # fmt: skip
    assert paused.output.count("received SIGUSR1") == 2, paused.output
    # The launcher turns its workers' 85 into 1; the `.paused` files say what happened.
    assert paused.code == 1
    saved = checkpoints_in(tmp_path / "ckpt")[-1]
    stopped_at = int(saved.name.removeprefix("step_"))
    workers = registered(control)
    assert len(workers) == 2
    assert sorted(p.name for p in (control / "workers").iterdir()) == sorted(
        [str(pid) for pid in workers] + [f"{pid}.paused" for pid in workers]
    )
    for pid in workers:
        assert (control / "workers" / str(pid)).read_text() == ""
        confirmed = json.loads((control / "workers" / f"{pid}.paused").read_text())
        assert confirmed == {"checkpoint": str(saved.resolve()), "step": stopped_at}
    assert {p.name for p in saved.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }


def _complete(checkpoint: Path, ranks: set[int]) -> bool:
    names = {p.name for p in checkpoint.iterdir()}
    return {"model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl"} <= names and {
        n for n in names if n.startswith(("random_states_", "node-"))
    } == {f"random_states_{rank}.pkl" for rank in ranks}


def test_two_machines_sharing_one_checkpoint_folder(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    runs = run_two_machines((root, root), settings(tmp_path / "out", 20, checkpoint_every=10))
    assert [run.code for run in runs] == [0, 0], runs[0].output + runs[1].output
    assert [p.name for p in checkpoints_in(root)] == ["step_000000010", "step_000000020"]
    assert not list(root.glob(".partial-*"))
    assert _complete(root / "step_000000020", {0, 1})

    resumed = run_two_machines((root, root), settings(tmp_path / "out", 30, checkpoint_every=10))
    assert [run.code for run in resumed] == [0, 0], resumed[0].output + resumed[1].output
    assert f"resumed from {root / 'step_000000020'} at step 20" in resumed[0].output
    assert [p.name for p in checkpoints_in(root)] == ["step_000000020", "step_000000030"]


def test_two_machines_each_with_its_own_checkpoint_folder(tmp_path: Path) -> None:
    roots = (tmp_path / "machine-0", tmp_path / "machine-1")
    runs = run_two_machines(roots, settings(tmp_path / "out", 20, checkpoint_every=10))
    assert [run.code for run in runs] == [0, 0], runs[0].output + runs[1].output
    for rank, root in enumerate(roots):
        assert [p.name for p in checkpoints_in(root)] == ["step_000000010", "step_000000020"]
        assert not list(root.glob(".partial-*"))
        # Each machine has a whole copy: the model, the optimizer, its own ranks' RNG states.
        assert _complete(root / "step_000000020", {rank})

    resumed = run_two_machines(roots, settings(tmp_path / "out", 30, checkpoint_every=10))
    assert [run.code for run in resumed] == [0, 0], resumed[0].output + resumed[1].output
    assert f"resumed from {roots[0] / 'step_000000020'} at step 20" in resumed[0].output
