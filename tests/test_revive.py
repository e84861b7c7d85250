"""Several `harchos jobs list` at once after a supervisor died: each starts one, one survives,
and only the process whose supervisor survived says it restarted it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from polling import job, wait_until
from test_jobs_supervisor import kill_supervisor

from harchos_cli.jobs.liveness import is_supervised


def test_only_one_of_several_concurrent_commands_says_it_restarted_the_supervisor(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\n[carbon]\nregion = "DE"\n')
    os.chdir(tmp_path)
    # A job that runs for a while, followed by its supervisor.
    started = harchos(capsys, "run", "batch", "--detach", "--json", "--", "sleep", "60")
    assert started.code == 0, started.err
    job_id = started.json()["job_id"]
    wait_until(lambda: job(job_id).state == "running")
    kill_supervisor(job_id)
    try:
        listers = [
            subprocess.Popen(
                [sys.executable, "-m", "harchos_cli", "jobs", "list"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(4)
        ]  # fmt: skip
        errors = [lister.communicate(timeout=120)[1] for lister in listers]
        assert all(lister.returncode == 0 for lister in listers), errors
        said = [err for err in errors if f"restarted the supervisor of job {job_id}" in err]
        assert len(said) == 1, errors
        assert is_supervised(job_id)
        assert job(job_id).state == "running"
    finally:
        harchos(capsys, "jobs", "cancel", job_id)
        wait_until(lambda: not job(job_id).active)
