"""GPU placement: a job gets its own GPUs on its hub, and waits (queued) while they are taken."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until

from harchos_cli.jobs.store import log_path

WORK = """
import os, pathlib, time
print("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
gate = pathlib.Path("gate-" + os.environ["HARCHOS_JOB_ID"])
for _ in range(1200):  # at most a minute
    if gate.exists():
        break
    time.sleep(0.05)
"""


def test_two_one_gpu_jobs_on_a_one_gpu_hub_run_one_after_the_other(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "train"\ncommand = "python work.py"\ngpus = 1\n\n'
        '[hubs.local]\ntransport = "local"\ngpus = 1\n'
    )
    os.chdir(tmp_path)

    def started(*extra: str) -> str:
        result = harchos(capsys, "run", "train", "--detach", "--json", *extra)
        assert result.code == 0, result.err
        return str(result.json()["job_id"])

    def logged(job_id: str, text: bytes) -> bool:
        return log_path(job_id).is_file() and text in log_path(job_id).read_bytes()

    first = started()
    wait_until(lambda: logged(first, b"cuda 0\n"))
    second = started("--fresh")  # a run of its own: the first's checkpoints are not shared
    wait_until(lambda: "queued" in (job(second).message or ""))
    assert not job(second).launched
    shown = harchos(capsys, "jobs", "show", second, "--json").json()
    queue = [d for d in shown["decisions"] if d["action"] == "queue"]
    assert len(queue) == 1
    assert queue[0]["gpus"] == 1
    held = harchos(capsys, "jobs", "show", first, "--json").json()["gpu_ids"]
    assert held == {"local": [0]}

    (tmp_path / f"gate-{first}").touch()
    wait_until(lambda: logged(second, b"cuda 0\n"))
    assert job(first).state == "done"
    assert (job(second).started_at or "") >= (job(first).finished_at or "~")
    (tmp_path / f"gate-{second}").touch()
    wait_until(lambda: job(second).state == "done")
