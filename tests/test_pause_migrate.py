"""Pause, resume, cancel-and-rerun and moving a running training job, end to end.

Everything runs for real: the generated pytorch-training project under `accelerate launch` on
the CPU (two gloo processes where it says so), hubs behind real sshd servers on loopback, and the
harchos commands a user types. Each scenario is compared with the same job run without
interruption: same seed, same settings, final weights bit for bit.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from clirunner import harchos
from polling import job, wait_until
from sshd import Sshd, client_key_fixture, kill_processes, sshd_factory_fixture
from test_remote_jobs import alive
from test_run_local import new_project

from harchos_cli.hubs import inventory, jobs_for, remote_project_dir
from harchos_cli.jobs.store import ACTIVE, Job, job_dir, log_path

__all__ = ["client_key_fixture", "sshd_factory_fixture"]

STEPS = 400
# Reading each sample takes a millisecond (as from a slow disk), so a run lasts seconds and a
# request is caught mid-run; the data, and so the weights, are the blueprint's own.
SLOW_DATA = """
import time

from torch.utils.data import Dataset

from demo.data import synthetic


class SlowReads(Dataset):
    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        time.sleep(self.delay)
        return self.inner[index]


def slow_synthetic(delay=0.001, **kwargs):
    return SlowReads(synthetic(**kwargs), delay)


def slower_synthetic(**kwargs):
    return SlowReads(synthetic(**kwargs), 0.005)
"""
# The final weights, as the training blueprint saves them.
WEIGHTS = "model.safetensors"
SETTINGS = [
    "--", "--set", f"steps={STEPS}", "--set", "checkpoint_every=200",
    "--set", 'dataset="slow_data:slow_synthetic"',
]  # fmt: skip


def project(capsys: pytest.CaptureFixture[str], where: Path, processes: int) -> Path:
    where.mkdir(parents=True)
    root = new_project(capsys, where)
    toml = root / "harchos.toml"
    text = toml.read_text()
    toml.write_text(text.replace("gpus = 0\n", f"gpus = 0\nprocesses = {processes}\n", 1))
    (root / "slow_data.py").write_text(SLOW_DATA)
    return root


_STRAIGHT: dict[int, Path] = {}  # processes: the weights of an uninterrupted run (per worker)


def straight_run(capsys: pytest.CaptureFixture[str], where: Path, processes: int) -> Path:
    """The same job, never interrupted: its final weights. Run once per process count in
    each test process: the seed and settings are fixed, so every run gives the same weights."""
    if processes not in _STRAIGHT:
        root = project(capsys, where, processes)
        os.chdir(root)
        result = harchos(capsys, "run", "train", "--json", *SETTINGS)
        assert result.code == 0, result.err
        kept = Path(tempfile.mkdtemp(prefix="harchos-straight-")) / WEIGHTS
        atexit.register(shutil.rmtree, kept.parent, True)
        shutil.copyfile(root / "outputs" / WEIGHTS, kept)
        _STRAIGHT[processes] = kept
    return _STRAIGHT[processes]


def weights(path: Path) -> dict[str, Any]:
    """The tensors a training run saved (`accelerator.save_model`: safetensors)."""
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def same_weights(a: Path, b: Path) -> bool:
    left, right = weights(a), weights(b)
    return bool(left.keys() == right.keys()) and all(
        bool(torch.equal(left[k], right[k])) for k in left
    )


# The same data read five times slower (the same weights): for runs whose requests travel
# further, to two machines over SSH, before they are caught mid-run.
SLOWER_SETTINGS = [s.replace("slow_synthetic", "slower_synthetic") for s in SETTINGS]


def start(capsys: pytest.CaptureFixture[str], *hub: str, settings: Sequence[str] = SETTINGS) -> str:
    started = harchos(capsys, "run", "train", *hub, "--detach", "--json", *settings)
    assert started.code == 0, started.err
    job_id = str(started.json()["job_id"])
    wait_until(lambda: log_path(job_id).is_file() and b"step 20/" in log_path(job_id).read_bytes())
    return job_id


def settled(job_id: str, done: Callable[[Job], bool] = lambda j: j.state not in ACTIVE) -> Job:
    return wait_until(lambda: job(job_id) if done(job(job_id)) else None, timeout=180)  # type: ignore[no-any-return]


def attempt_at_least(attempt: int, current: Job) -> bool:
    return current.attempt >= attempt


def actions(capsys: pytest.CaptureFixture[str], job_id: str) -> list[dict[str, Any]]:
    shown = harchos(capsys, "jobs", "show", job_id, "--json")
    assert shown.code == 0, shown.err
    return list(shown.json()["decisions"])


def test_pause_and_resume_under_accelerate_launch_with_two_processes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expected = straight_run(capsys, tmp_path / "straight", processes=2)
    os.chdir(project(capsys, tmp_path / "paused", processes=2))
    job_id = start(capsys)

    paused = harchos(capsys, "jobs", "pause", job_id)
    assert paused.code == 0, paused.err
    final = settled(job_id)
    assert (final.state, final.exit_code) == ("paused", 85), final.message
    # Both workers registered, saved and confirmed; none of them, nor the launcher, is left.
    hub_dir = Path(jobs_for(inventory.local_hub()).job_dir(job_id))
    workers = sorted(p.name for p in (hub_dir / "control" / "workers").iterdir())
    pids = [int(name) for name in workers if name.isdigit()]
    assert len(pids) == 2, workers
    assert workers == sorted([*map(str, pids), *(f"{pid}.paused" for pid in pids)])
    assert (hub_dir / "launcher_exit_code").read_text() == "1"
    launcher = int((hub_dir / "pid").read_text().split()[0])
    assert not any(alive(pid) for pid in [launcher, *pids])
    listed = harchos(capsys, "jobs", "list", "--json").json()
    assert [j["state"] for j in listed if j["job_id"] == job_id] == ["paused"]

    resumed = harchos(capsys, "jobs", "resume", job_id)
    assert resumed.code == 0, resumed.err
    final = settled(job_id)
    assert (final.state, final.attempt) == ("done", 2), final.message
    assert b"resumed from" in log_path(job_id).read_bytes()
    assert same_weights(expected, Path("outputs", WEIGHTS))
    assert [d["action"] for d in actions(capsys, job_id)] == [
        "plan", "start", "pause-requested", "pause", "resume-requested", "resume",
    ]  # fmt: skip


def test_a_cancelled_run_resumes_when_run_again(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expected = straight_run(capsys, tmp_path / "straight", processes=2)
    os.chdir(project(capsys, tmp_path / "again", processes=2))
    first = start(capsys)
    cancelled = harchos(capsys, "jobs", "cancel", first, "--json")
    assert cancelled.code == 0, cancelled.err
    final = settled(first)
    # Cancel is a save-and-exit under `accelerate launch` too: 85, not the launcher's 143.
    assert (final.state, final.exit_code) == ("cancelled", 85), final.message
    assert "saved a checkpoint" in (final.message or "")

    again = harchos(capsys, "run", "train", "--json", *SETTINGS)
    assert again.code == 0, again.err
    second = again.json()
    assert second["run_id"] == first
    assert second["job_id"] != first
    assert "resumed from" in log_path(second["job_id"]).read_text()
    assert same_weights(expected, Path("outputs", WEIGHTS))
    fresh = harchos(capsys, "run", "train", "--fresh", "--json", "--", "--set", "steps=20")
    assert fresh.code == 0, fresh.err
    assert fresh.json()["run_id"] == fresh.json()["job_id"]
    assert "resumed from" not in log_path(fresh.json()["job_id"]).read_text()


def add_hub(capsys: pytest.CaptureFixture[str], server: Sshd, region: str, *options: str) -> None:
    added = harchos(
        capsys, "hubs", "add", server.name, "--ssh", f"root@127.0.0.1:{server.port}",
        "--identity", str(server.client_key), "--region", region, "--python",
        server.hub().python, *options,
    )  # fmt: skip
    assert added.code == 0, added.err


def on_hub(server: Sshd, root: Path, *parts: str) -> Path:
    remote = remote_project_dir(server.hub(), root).replace("~", str(server.root), 1)
    return Path(remote, *parts)


def test_migrate_moves_a_running_job_and_it_ends_as_if_it_never_moved(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> None:
    expected = straight_run(capsys, tmp_path / "straight", processes=1)
    h1, h2 = sshd_factory("h1"), sshd_factory("h2")
    root = project(capsys, tmp_path / "moved", processes=1)
    add_hub(capsys, h1, "DE")
    add_hub(capsys, h2, "FR")
    os.chdir(root)
    job_id = start(capsys, "--hub", "h1")

    moved = harchos(capsys, "jobs", "migrate", job_id, "--to", "h2")
    assert moved.code == 0, moved.err
    final = settled(job_id)
    assert (final.state, final.hub, final.attempt) == ("done", "h2", 2), final.message
    assert same_weights(expected, on_hub(h2, root, "outputs", WEIGHTS))
    # The source keeps its checkpoint; the target resumed from the verified copy.
    assert list(on_hub(h1, root, "checkpoints", job_id).glob("step_*"))
    decisions = actions(capsys, job_id)
    migrate = next(d for d in decisions if d["action"] == "migrate")
    assert (migrate["hub"], migrate["source"]) == ("h2", "h1")
    assert migrate["files"] > 0
    assert migrate["bytes"] > 0
    assert "verified by sha256" in migrate["reason"]
    pulled = harchos(capsys, "jobs", "pull", job_id, "--json")
    assert pulled.code == 0, pulled.err
    assert pulled.json()["copied"] == ["outputs", f"checkpoints/{job_id}"]
    assert same_weights(expected, root / "outputs" / WEIGHTS)
    assert list((root / "checkpoints" / job_id).glob(f"step_{STEPS:09d}"))
    log = log_path(job_id).read_text()
    assert "on hub h1" in log
    assert "on hub h2" in log
    assert "resumed from" in log
    # One ledger across the move: metered on both hubs, with the stop between the two runs.
    report = harchos(capsys, "report", job_id, "--json")
    assert report.code == 0, report.err
    (ledger,) = report.json()["jobs"]
    assert ledger["hubs"] == ["h1", "h2"]
    assert {i["hub"] for i in ledger["intervals"]} == {"h1", "h2"}
    assert [(p["kind"], p["hub"]) for p in ledger["periods"]][-3:] == [
        ("running", "h1"), ("paused", "h1"), ("running", "h2"),
    ]  # fmt: skip
    assert ledger["energy_kwh"]["value"] > 0
    assert ledger["energy_kwh"]["source"] == "estimated"  # no GPU, no RAPL on these machines
    assert ledger["emissions_kg"]["value"] > 0


def test_a_move_whose_target_fails_goes_on_from_the_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> None:
    h1, h2 = sshd_factory("h1"), sshd_factory("h2")
    root = project(capsys, tmp_path / "rollback", processes=1)
    # The target takes the copy, then its setup fails: the job must go back to h1.
    toml = root / "harchos.toml"
    toml.write_text(toml.read_text().replace(
        "[job]\n", f'[job]\nsetup = "test \\"$HOME\\" != {h2.root}"\n', 1
    ))  # fmt: skip
    add_hub(capsys, h1, "DE")
    add_hub(capsys, h2, "FR")
    os.chdir(root)
    job_id = start(capsys, "--hub", "h1")
    assert harchos(capsys, "jobs", "migrate", job_id, "--to", "h2").code == 0
    final = settled(job_id)
    assert (final.state, final.hub) == ("done", "h1"), final.message
    moves = [d["action"] for d in actions(capsys, job_id) if d["action"] in {"migrate", "rollback"}]
    assert moves == ["migrate", "rollback"]
    # The copy on h2 was verified, but the job's result is on h1, from h1's own checkpoints.
    assert list(on_hub(h2, root, "checkpoints", job_id).glob("step_*"))
    assert on_hub(h1, root, "outputs", WEIGHTS).is_file()
    assert not on_hub(h2, root, "outputs", WEIGHTS).exists()

    # An unreachable target: the copy fails, the job never leaves h1.
    h2.stop()
    second = start(capsys, "--hub", "h1", "--fresh")
    assert harchos(capsys, "jobs", "migrate", second, "--to", "h2").code == 0
    final = settled(second)
    assert (final.state, final.hub) == ("done", "h1"), final.message
    failed = [d for d in actions(capsys, second) if d["action"] == "migrate-failed"]
    assert len(failed) == 1
    assert "h2" in failed[0]["reason"]


def test_rescale_two_one_two_processes_matches_an_uninterrupted_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Without dropout: the RNG streams cannot follow a change of world size (docs/shifting.md).
    no_dropout = ["--set", "model_args={ hidden = 64, dropout = 0.0 }"]
    root = project(capsys, tmp_path / "straight", processes=2)
    os.chdir(root)
    straight = harchos(capsys, "run", "train", "--json", *SETTINGS, *no_dropout)
    assert straight.code == 0, straight.err
    expected = root / "outputs" / WEIGHTS

    os.chdir(project(capsys, tmp_path / "rescaled", processes=2))
    started = harchos(capsys, "run", "train", "--detach", "--json", *SETTINGS, *no_dropout)
    assert started.code == 0, started.err
    job_id = str(started.json()["job_id"])

    def training(attempt: int, ready: int) -> bool:
        """The attempt runs: all `ready` workers so far said so, and it logged a step since."""
        log = log_path(job_id).read_bytes() if log_path(job_id).is_file() else b""
        tail = log.rsplit(b" ready: ", 1)[-1]
        return (
            job(job_id).attempt == attempt
            and log.count(b" ready: ") == ready
            and (b"step " in tail)
        )

    for attempt, processes, ready in ((2, 1, 2), (3, 2, 3)):
        wait_until(functools.partial(training, attempt - 1, ready))
        scaled = harchos(capsys, "jobs", "scale", job_id, "--processes", str(processes))
        assert scaled.code == 0, scaled.err
        settled(job_id, functools.partial(attempt_at_least, attempt))
    final = settled(job_id)
    assert (final.state, final.attempt) == ("done", 3), final.message
    log = log_path(job_id).read_text()
    assert log.count("resuming on 1 processes") == 1
    assert log.count("resuming on 2 processes") == 1
    left, right = weights(expected), weights(Path("outputs", WEIGHTS))
    assert max(float((left[k] - right[k]).abs().max()) for k in left) <= 1e-4
    assert [d["action"] for d in actions(capsys, job_id) if d["action"] == "rescale"] == [
        "rescale", "rescale",
    ]  # fmt: skip


def kill_copies(staging: Path) -> int:
    """SIGKILL every rsync on this machine copying into or out of `staging`; how many."""
    return kill_processes(
        lambda program, argv: (
            Path(program).name == "rsync" and any(str(staging).encode() in arg for arg in argv)
        )
    )


def test_a_copy_killed_mid_transfer_leaves_the_job_going_on_from_its_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> None:
    expected = straight_run(capsys, tmp_path / "straight", processes=1)
    h1, h2 = sshd_factory("h1"), sshd_factory("h2")
    root = project(capsys, tmp_path / "killed", processes=1)
    add_hub(capsys, h1, "DE")
    add_hub(capsys, h2, "FR")
    os.chdir(root)
    job_id = start(capsys, "--hub", "h1")
    # Ballast in the run's checkpoint folder makes the copy last long enough to be killed.
    ballast = on_hub(h1, root, "checkpoints", job_id, "ballast.bin")
    ballast.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with ballast.open("wb") as handle:
        for _ in range(128):
            handle.write(block)

    assert harchos(capsys, "jobs", "migrate", job_id, "--to", "h2").code == 0
    staging = job_dir(job_id) / "transfer"
    killed = 0
    # Every copy is killed (retries too) until the supervisor gives the move up.
    while job(job_id).state in ("running", "syncing") and job(job_id).hub == "h1":
        killed += kill_copies(staging)
        if any(d["action"] == "migrate-failed" for d in actions(capsys, job_id)):
            break
        time.sleep(0.02)
    assert killed >= 1
    final = settled(job_id)
    assert (final.state, final.hub) == ("done", "h1"), final.message
    failed = [d for d in actions(capsys, job_id) if d["action"] == "migrate-failed"]
    assert len(failed) == 1
    assert "going on on hub h1" in failed[0]["reason"]
    # Nothing was lost: the source's checkpoints are whole, the result is the uninterrupted one,
    # and hub h2 never ran the job (store and hubs agree).
    assert list(on_hub(h1, root, "checkpoints", job_id).glob("step_*"))
    assert ballast.stat().st_size == 128 << 20
    assert same_weights(expected, on_hub(h1, root, "outputs", WEIGHTS))
    assert not on_hub(h2, root, "outputs", WEIGHTS).exists()
    assert not list((h2.root / ".harchos" / "jobs").glob(f"{job_id}*"))
