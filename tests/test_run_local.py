"""`harchos run` on the local hub: the acceptance scenario on a generated training project,
dry runs, bad harchos.toml, Ctrl-C while waiting, and `harchos jobs`."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from clirunner import Result, harchos

from harchos_cli.hubs import inventory, jobs_for
from harchos_cli.jobs.store import JobStore

DE_TRACE = "eco4cast/DE_2022_hourly.csv"


def new_project(capsys: pytest.CaptureFixture[str], where: Path, *data: str) -> Path:
    """`harchos new pytorch-training demo --defaults` (20 training steps keep it to seconds)."""
    os.chdir(where)
    extra = [arg for item in ("steps=20", *data) for arg in ("--data", item)]
    result = harchos(capsys, "new", "pytorch-training", "demo", "--defaults", *extra)
    assert result.code == 0, result.err
    return where / "demo"


def greenest_hour(trace: Path, start: str, hours: int) -> str:
    """The start of the greenest 1 h window in [start, start + hours], read straight from the
    Electricity Maps export (its lifecycle column)."""
    with trace.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = next(c for c in rows[0] if "LCA" in c)
    first = datetime.fromisoformat(start.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    index = next(i for i, row in enumerate(rows) if row["Datetime (UTC)"] == first)
    window = rows[index : index + hours + 1]
    best = min(window, key=lambda row: float(row[column]))
    return best["Datetime (UTC)"].replace(" ", "T") + "Z"


def test_acceptance_local_defer_until_green(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path
) -> None:
    project = new_project(capsys, tmp_path, "region=DE")  # the trace's zone
    os.chdir(project)
    trace = traces / DE_TRACE
    result = harchos(
        capsys, "run", "train", "--hub", "local", "--defer-until-green", "--duration", "1h",
        "--deadline", "12h", "--provider", f"replay:{trace}", "--at", "2022-03-01T00:00:00Z",
        "--speedup", "36000", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)  # one JSON object, nothing else on stdout
    assert data["planned_start"] == greenest_hour(trace, "2022-03-01T00:00:00Z", 11)
    assert data["exit_code"] == 0
    assert data["hub"] == "local"
    assert data["provider"] == "replay"
    assert data["expected_intensity"] < data["now_intensity"]
    job_id = data["job_id"]
    # The training itself ran, with harchos's contract environment.
    assert json.loads((project / "outputs" / "result.json").read_text())["step"] == 20
    assert sorted(p.name for p in (project / "checkpoints" / job_id).iterdir()) == [
        "step_000000020"
    ]
    assert f"harchos job {job_id} on hub local" in result.err
    logs = harchos(capsys, "jobs", "logs", job_id)
    assert "step 20/20" in logs.out
    shown = harchos(capsys, "jobs", "show", job_id, "--json").json()
    assert shown["state"] == "done"
    assert shown["planned_start"] == data["planned_start"]
    assert jobs_for(inventory.local_hub()).status(job_id).exit_code == 0


def test_dry_run_prints_the_exact_commands_and_runs_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = new_project(capsys, tmp_path)
    os.chdir(project)
    result = harchos(capsys, "run", "train", "--dry-run", "--json", "--", "--set", "steps=3")
    assert result.code == 0, result.err
    data = result.json()
    job_id = data["job_id"]
    assert data["launch"]["argv"] == [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
        "--set", "steps=3",
    ]  # fmt: skip
    assert data["launch"]["cwd"] == str(project)
    assert data["launch"]["env"] == {
        "HARCHOS_JOB_ID": job_id,
        "HARCHOS_HUB": "local",
        "HARCHOS_REGION": "eu-west",
        "HARCHOS_CHECKPOINT_DIR": f"{project}/checkpoints/{job_id}",
        "PYTHONUNBUFFERED": "1",
    }
    assert not (project / "checkpoints").exists()
    assert harchos(capsys, "jobs", "list", "--json").json() == []
    text = harchos(capsys, "run", "train", "--dry-run").out
    assert "accelerate.commands.launch --cpu --num_processes 1" in text


def test_two_cpu_processes_run_over_gloo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    project = new_project(capsys, tmp_path)
    toml = project / "harchos.toml"
    toml.write_text(toml.read_text().replace("gpus = 0\n", "gpus = 0\nprocesses = 2\n", 1))
    os.chdir(project)
    data = harchos(capsys, "run", "train", "--dry-run", "--json").json()
    assert data["launch"]["argv"][3:6] == ["--multi_gpu", "--num_processes", "2"]
    assert data["launch"]["env"]["ACCELERATE_USE_CPU"] == "true"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[job]\ngpus = 'two'\n", "job.gpus", "integer"),
        ("[carbon]\ndeadline = 'soon'\n", "carbon.deadline", "a duration from now"),
        ("[job]\ngpu = 1\n", "job.gpu", "did you mean gpus?"),
        ("[hubs.box]\npue = 0.5\n", "hubs.box.pue", "greater than or equal to 1"),
        ("[job]\ncheckpoint_dir = 'a/../../out'\n", "job.checkpoint_dir", "inside the project"),
    ],
)
def test_a_bad_harchos_toml_exits_2_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, key: str, expected: str
) -> None:
    (tmp_path / "harchos.toml").write_text(text)
    result = harchos(capsys, "run", "train", "--dry-run")
    assert result.code == 2
    assert f"{tmp_path / 'harchos.toml'}" in result.err
    assert key in result.err
    assert expected in result.err
    assert "Traceback" not in result.err


def test_checkpoint_dir_is_normalised_so_the_sync_protects_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\ncheckpoint_dir = "./ckpt/"\n')
    data = harchos(capsys, "run", "batch", "--dry-run", "--json", "--", "true").json()
    job_id = data["job_id"]
    assert data["launch"]["env"]["HARCHOS_CHECKPOINT_DIR"] == f"{tmp_path}/ckpt/{job_id}"


def test_train_without_a_project_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "run", "train")
    assert result.code == 2
    assert "no harchos.toml" in result.err


def test_the_job_exit_code_is_harchos_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = "import sys; print('partial output'); sys.exit(7)"
    result = harchos(capsys, "run", "batch", "--", sys.executable, "-c", script)
    assert result.code == 7
    assert "partial output" in result.out
    job = JobStore().list()[0]
    assert (job.state, job.exit_code) == ("failed", 7)


def trace_file(path: Path, values: list[float]) -> Path:
    """A two-column trace; a name like `DE_2022.csv` tells harchos its zone."""
    rows = [f"2022-03-01T{h:02d}:00:00Z,{v}" for h, v in enumerate(values)]
    path.write_text("datetime,carbon_intensity\n" + "\n".join(rows) + "\n")
    return path


def interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_while_waiting_cancels_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = trace_file(tmp_path / "DE_2022.csv", [500, 400, 300, 50, 500, 500, 500, 500])
    marker = tmp_path / "ran"
    timer = interrupt_after(1.0)
    try:
        result: Result = harchos(
            capsys, "run", "batch", "--defer-until-green", "--duration", "1h", "--deadline",
            "6h", "--provider", f"replay:{trace}", "--at", "2022-03-01T00:00:00Z",
            "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
        )  # fmt: skip
    finally:
        timer.cancel()
    assert result.code == 130
    assert "cancelled job" in result.err
    assert "nothing ran" in result.err
    job = JobStore().list()[0]
    assert job.state == "cancelled"
    assert not marker.exists()


def test_jobs_list_show_cancel_of_a_detached_waiting_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = trace_file(tmp_path / "DE_2022.csv", [500, 400, 300, 50, 500, 500, 500, 500])
    marker = tmp_path / "ran"
    started = harchos(
        capsys, "run", "batch", "--detach", "--json", "--defer-until-green", "--duration", "1h",
        "--deadline", "6h", "--provider", f"replay:{trace}", "--at", "2022-03-01T00:00:00Z",
        "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
    )  # fmt: skip
    assert started.code == 0, started.err
    job_id = started.json()["job_id"]
    assert started.json()["planned_start"] == "2022-03-01T03:00:00Z"
    listed = harchos(capsys, "jobs", "list", "--json").json()
    assert [(j["job_id"], j["state"]) for j in listed] == [(job_id, "waiting")]
    assert job_id in harchos(capsys, "jobs", "list").out
    assert "2022-03-01T03:00:00Z" in harchos(capsys, "jobs", "show", job_id[:-1]).out
    cancelled = harchos(capsys, "jobs", "cancel", job_id, "--json")
    assert cancelled.code == 0
    assert cancelled.json()["state"] == "cancelled"
    assert not marker.exists()
    assert harchos(capsys, "jobs", "show", "nope").code == 2


def test_deferring_without_a_region_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = trace_file(tmp_path / "trace.csv", [500, 400, 300])
    result = harchos(
        capsys, "run", "batch", "--defer-until-green", "--deadline", "2h", "--provider",
        f"replay:{trace}", "--at", "2022-03-01T00:00:00Z", "--", "true",
    )  # fmt: skip
    assert result.code == 2
    assert "has no region" in result.err
