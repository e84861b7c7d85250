"""Multi-node training: one `accelerate launch` per hub, rendezvousing on loopback.

Two hubs behind real sshd servers, each with its own home (no shared filesystem: each machine
keeps its own copy of every checkpoint). One process per machine makes a world of two, the same
world as two processes on one machine, so the final weights are compared bit for bit with that.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from clirunner import harchos
from polling import wait_until
from sshd import Sshd, client_key_fixture, sshd_factory_fixture
from test_pause_migrate import (
    SLOWER_SETTINGS,
    STEPS,
    WEIGHTS,
    actions,
    add_hub,
    on_hub,
    project,
    same_weights,
    settled,
    start,
    straight_run,
)
from test_remote_jobs import alive

from harchos_cli.jobs.store import log_path

__all__ = ["client_key_fixture", "sshd_factory_fixture"]


def hub_job_dir(server: Sshd, hub_job_id: str) -> Path:
    return server.root / ".harchos" / "jobs" / hub_job_id


def launcher_pid(server: Sshd, hub_job_id: str) -> int:
    return int((hub_job_dir(server, hub_job_id) / "pid").read_text().split()[0])


def two_hubs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> tuple[Path, Sshd, Sshd, Path]:
    """The uninterrupted two-process run's weights, hubs h1 (DE) and h2 (FR), and the project
    (one process per machine), as the working folder."""
    expected = straight_run(capsys, tmp_path / "straight", processes=2)
    h1, h2 = sshd_factory("h1"), sshd_factory("h2")
    root = project(capsys, tmp_path / "nodes", processes=1)
    add_hub(capsys, h1, "DE")
    add_hub(capsys, h2, "FR")
    os.chdir(root)
    return expected, h1, h2, root


def test_two_machines_on_two_hubs_train_pause_and_resume_as_one_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> None:
    expected, h1, h2, root = two_hubs(capsys, tmp_path, sshd_factory)

    dry = harchos(capsys, "run", "train", "--nodes", "2", "--hubs", "h1,h2", "--dry-run",
                  "--json")  # fmt: skip
    assert dry.code == 0, dry.err
    main_argv = dry.json()["launch"]["argv"]
    assert [main_argv[i + 1] for i, a in enumerate(main_argv) if a == "--machine_rank"] == ["0"]
    (other,) = dry.json()["nodes"]
    assert other["hub"] == "h2"
    assert "--machine_rank" in other["argv"]
    assert other["argv"][other["argv"].index("--machine_rank") + 1] == "1"
    assert other["argv"][other["argv"].index("--num_processes") + 1] == "2"

    job_id = start(capsys, "--hubs", "h1,h2", settings=SLOWER_SETTINGS)
    # Paused at once: on a loaded machine the run could end before a later request (CI saw it
    # end first, twice, at the faster reads).
    assert harchos(capsys, "jobs", "pause", job_id).code == 0
    shown = harchos(capsys, "jobs", "show", job_id, "--json").json()
    assert (shown["hub"], shown["nodes"]) == ("h1", ["h1", "h2"])
    # A multi-node job is paused and resumed; it is not moved or rescaled.
    refused = harchos(capsys, "jobs", "migrate", job_id, "--to", "h2")
    assert refused.code == 2
    assert "2 machines" in refused.err

    final = settled(job_id)
    assert (final.state, final.exit_code) == ("paused", 85), final.message
    # Both machines saved a complete checkpoint of their own, and nothing is left running.
    for server, hub_id in ((h1, job_id), (h2, f"{job_id}-n1")):
        assert list(on_hub(server, root, "checkpoints", job_id).glob("step_*")), server.name
        assert (hub_job_dir(server, hub_id) / "exit_code").read_text().strip() == "85"
        assert not alive(launcher_pid(server, hub_id))
    log = log_path(job_id).read_text()
    assert "[h2] " in log  # machine 1's lines, in the job's one log

    assert harchos(capsys, "jobs", "resume", job_id).code == 0
    final = settled(job_id)
    assert (final.state, final.attempt) == ("done", 2), final.message
    log = log_path(job_id).read_text()
    assert log.count("resumed from") == 2  # each machine from its own copy
    assert same_weights(expected, on_hub(h1, root, "outputs", WEIGHTS))
    assert [d["action"] for d in actions(capsys, job_id)] == [
        "plan", "start", "pause-requested", "pause", "resume-requested", "resume",
    ]  # fmt: skip


def test_when_one_machine_dies_every_machine_restarts_from_the_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd_factory: Callable[[str], Sshd]
) -> None:
    expected, h1, h2, root = two_hubs(capsys, tmp_path, sshd_factory)
    job_id = start(capsys, "--hubs", "h1,h2")
    # Past the first checkpoint, machine 1's training process crashes.
    wait_until(
        lambda: f"step {STEPS // 2 + 20}/".encode() in log_path(job_id).read_bytes(), timeout=120
    )
    registered = hub_job_dir(h2, f"{job_id}-n1") / "control" / "workers"
    (worker,) = [int(p.name) for p in registered.iterdir() if p.name.isdigit()]
    os.kill(worker, signal.SIGKILL)

    final = settled(job_id)
    assert (final.state, final.attempt) == ("done", 2), final.message
    restart = [d for d in actions(capsys, job_id) if d["action"] == "restart"]
    assert len(restart) == 1
    assert "machine 1 on hub h2" in restart[0]["reason"]
    assert f"resumed from {on_hub(h1, root, 'checkpoints', job_id)}" in log_path(job_id).read_text()
    # Nothing of the first attempt is left on the machine that did not die.
    assert not alive(launcher_pid(h1, job_id))
    assert same_weights(expected, on_hub(h1, root, "outputs", WEIGHTS))
