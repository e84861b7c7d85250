"""A Slurm cluster as a hub, against a real single-node Slurm (slurmctld, slurmd and MUNGE started
by the `slurm_cluster` fixture): deferral in Slurm's queue (`--begin`) and its re-planning, the
time-limit signal that checkpoints, requeues and resumes, cancel, literal arguments, and a move
from the cluster to an SSH box. The harchos commands are the ones a user types."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clirunner import harchos
from polling import job, wait_until
from sshd import Sshd, client_key_fixture, sshd_factory_fixture
from test_pause_migrate import (
    SETTINGS,
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

from harchos_cli.jobs.liveness import is_supervised, scheduler_dir
from harchos_cli.jobs.store import log_path

__all__ = ["client_key_fixture", "sshd_factory_fixture"]

DE_TRACE = "eco4cast/DE_2022_hourly.csv"
CLUSTER = "cluster"
AT = "2022-03-01T00:00:00Z"
SPEEDUP = 300  # a simulated hour is 12 s: time to re-plan within it on a loaded machine (at 6 s
# CI once saw the whole lead of the greenest hour pass before the revived scheduler re-planned)


@pytest.fixture
def cluster(
    slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """The real cluster, added as hub `cluster` on its own login node (this machine)."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    added = harchos(
        capsys, "hubs", "add", CLUSTER, "--slurm", "local", "--partition",
        slurm_cluster.partition, "--region", "DE", "--python", sys.executable,
    )  # fmt: skip
    assert added.code == 0, added.err
    return slurm_cluster


def squeue(cluster: Any, slurm_id: str) -> tuple[str, str, str] | None:
    """(state, reason, start) as Slurm itself shows the job; None once it left the queue."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T|%r|%S"],
        env={**os.environ, **cluster.env, "TZ": "UTC"}, capture_output=True, text=True,
        check=False,
    ).stdout.strip()  # fmt: skip
    if not out:
        return None
    state, reason, start = out.splitlines()[0].split("|")
    return state, reason, start


def left_the_queue(cluster: Any, slurm_id: str) -> bool:
    queued = squeue(cluster, slurm_id)
    return queued is None or queued[0] not in ("PENDING", "RUNNING", "COMPLETING")


def slurm_id_of(job_id: str) -> str:
    message = job(job_id).message or ""
    assert "Slurm as job " in message, message
    return message.split("Slurm as job ", 1)[1].split()[0].rstrip(":")


def train_on_the_cluster(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Start the project's training on the cluster; its job id and Slurm id once it trains."""
    started = harchos(capsys, "run", "train", "--hub", CLUSTER, "--detach", "--json", *SETTINGS)
    assert started.code == 0, started.err
    job_id = str(started.json()["job_id"])
    wait_until(lambda: log_path(job_id).is_file() and b"step 20/" in log_path(job_id).read_bytes())
    return job_id, slurm_id_of(job_id)


def batch_project(where: Path, command: list[str]) -> Path:
    where.mkdir(parents=True)
    (where / "harchos.toml").write_text(f"[job]\ncommand = {json.dumps(command)}\n")
    return where


def local_time(text: str) -> datetime:
    """A time as Slurm prints it for a client in UTC (see `squeue`), as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_hubs_add_and_check_a_cluster(capsys: pytest.CaptureFixture[str], cluster: Any) -> None:
    listed = harchos(capsys, "hubs", "list")
    assert f"slurm partition {cluster.partition} via this login node" in listed.out
    checked = harchos(capsys, "hubs", "check", CLUSTER, "--json")
    assert checked.code == 0, checked.err + checked.out
    found = checked.json()
    assert found["reachable"] is True
    assert found["slurm"]["partition"] == cluster.partition
    assert found["slurm"]["nodes"] >= 1
    assert found["slurm"]["cpus"] >= 1
    bad = harchos(capsys, "hubs", "add", "c2", "--slurm", "local", "--region", "DE")
    assert bad.code == 2
    assert "--partition" in bad.err


def test_hub_auto_counts_the_clusters_queue_wait(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any
) -> None:
    root = batch_project(tmp_path / "auto", ["python3", "-c", "pass"])
    (root / "harchos.toml").write_text(
        '[job]\ncommand = ["python3", "-c", "pass"]\n'
        '[carbon]\nregion = "DE"\nhubs = ["cluster", "local"]\n'
    )
    os.chdir(root)

    def plan() -> dict[str, Any]:
        # Any intensity is under this threshold: each hub's option is its soonest start.
        dry = harchos(capsys, "run", "batch", "--hub", "auto", "--threshold", "100000",
                      "--dry-run", "--json")  # fmt: skip
        assert dry.code == 0, dry.err
        return dict(dry.json())

    idle = plan()
    assert idle["hub"] == CLUSTER  # both start at once; the tie goes to the first name
    assert "Slurm's queue" not in idle["reason"]

    blocker = subprocess.run(
        ["sbatch", "--parsable", "--exclusive", "--time=5", "--wrap", "sleep 300"],
        env={**os.environ, **cluster.env}, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        wait_until(lambda: (squeue(cluster, blocker) or ("",))[0] == "RUNNING")
        busy = plan()
        assert busy["hub"] == "local", busy
        (queued,) = busy["alternatives"]
        assert queued["hub"] == CLUSTER
        assert "Slurm's queue: not before" in queued["reason"]
        # The node is taken for the blocker's five-minute limit.
        waited = datetime.fromisoformat(queued["start"]) - datetime.fromisoformat(busy["now"])
        assert timedelta(minutes=4) <= waited <= timedelta(minutes=6), waited
        text = harchos(capsys, "run", "batch", "--hub", "auto", "--threshold", "100000",
                       "--dry-run")  # fmt: skip
        assert "Slurm's queue: not before" in text.out
    finally:
        subprocess.run(["scancel", blocker], env={**os.environ, **cluster.env}, check=False)
        wait_until(lambda: left_the_queue(cluster, blocker))


def test_the_job_says_how_long_before_the_time_limit_it_saves(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any
) -> None:
    root = batch_project(tmp_path / "limit", ["python3", "-c", "pass"])
    os.chdir(root)

    def signal_option(*extra: str) -> str:
        dry = harchos(capsys, "run", "batch", "--hub", CLUSTER, "--defer-until-green",
                      "--deadline", "12h", "--dry-run", "--json", *extra)  # fmt: skip
        assert dry.code == 0, dry.err
        (option,) = [a for a in dry.json()["launch"]["slurm"]["sbatch"] if a.startswith("--sig")]
        return str(option)

    assert signal_option() == "--signal=B:USR1@120"  # two minutes by default
    toml = root / "harchos.toml"
    toml.write_text(toml.read_text().replace("[job]\n", '[job]\nsave_before_limit = "10m"\n'))
    assert signal_option() == "--signal=B:USR1@600"
    toml.write_text(toml.read_text().replace('"10m"', '"soon"'))
    bad = harchos(capsys, "run", "batch", "--hub", CLUSTER, "--dry-run")
    assert bad.code == 2
    assert "save_before_limit" in bad.err


def test_a_deferred_job_waits_in_slurms_queue_then_runs_and_a_replan_moves_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path, cluster: Any
) -> None:
    # A copy of the trace the test can change while the job waits, as a provider's forecast
    # changes: a later update makes an earlier hour the greenest.
    trace = tmp_path / "DE.csv"
    trace.write_bytes((traces / DE_TRACE).read_bytes())
    root = batch_project(tmp_path / "p", ["python3", "-c", "open('ran', 'w').write('yes')"])
    os.chdir(root)
    started = harchos(
        capsys, "run", "batch", "--hub", CLUSTER, "--defer-until-green", "--duration", "1h",
        "--deadline", "20h", "--provider", f"replay:{trace}", "--at", AT, "--speedup", str(SPEEDUP),
        "--detach", "--json",
    )  # fmt: skip
    assert started.code == 0, started.err
    job_id = started.json()["job_id"]
    planned = datetime.fromisoformat(started.json()["planned_start"].replace("Z", "+00:00"))
    hours_ahead = (planned - datetime.fromisoformat(AT.replace("Z", "+00:00"))) / timedelta(hours=1)
    assert hours_ahead >= 3, "the trace's greenest hour must lie ahead for this test"
    wait_until(lambda: "queued in Slurm" in (job(job_id).message or ""), timeout=60)
    slurm_id = slurm_id_of(job_id)
    state, reason, start = squeue(cluster, slurm_id) or ("", "", "")
    assert (state, reason) == ("PENDING", "BeginTime")
    first_begin = local_time(start)
    # The planned hour on the job's clock, on the wall clock: within the second Slurm keeps.
    expected = job_created_wall(job_id) + timedelta(seconds=hours_ahead * 3600 / SPEEDUP)
    assert abs((first_begin - expected).total_seconds()) <= 3
    # Slurm holds it: no process of its own, the scheduler re-plans it (and is revived after
    # a SIGKILL by the next harchos command, which starts no supervisor for the job).
    wait_until(lambda: bool(job(job_id).request.get("parked")), timeout=30)
    assert not is_supervised(job_id)
    scheduler = wait_until(scheduler_pid, timeout=10)
    os.kill(scheduler, signal.SIGKILL)
    wait_until(lambda: scheduler_pid() is None, timeout=10)
    assert harchos(capsys, "jobs", "list").code == 0
    assert wait_until(scheduler_pid, timeout=10) != scheduler
    assert not is_supervised(job_id)

    # The forecast moves: the hour after next (on the job's clock) becomes by far the greenest.
    greener = job_clock_now(job_id).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    assert greener < planned
    make_hour_greenest(trace, greener)
    wait_until(lambda: any(d["action"] == "replan" for d in actions(capsys, job_id)), timeout=60)
    # Slurm shows the new start once its scheduler has looked again (every 2 s here).
    moved = wait_until(lambda: next((q for q in [squeue(cluster, slurm_id)] if q and q[2] != "N/A"),
                                    None), timeout=30)  # fmt: skip
    assert local_time(moved[2]) < first_begin
    assert job(job_id).planned_start == greener.strftime("%Y-%m-%dT%H:%M:%SZ")

    final = settled(job_id)
    assert (final.state, final.exit_code) == ("done", 0), final.message
    assert (root / "ran").read_text() == "yes"
    after = squeue(cluster, slurm_id)
    assert after is None or after[0] == "COMPLETED", after


def scheduler_pid() -> int | None:
    """The pid of the scheduler holding its lock, None when none does."""
    from harchos_cli.jobs.liveness import is_scheduling

    if not is_scheduling():
        return None
    # The holder writes its pid just after taking the lock: empty for that moment.
    written = (scheduler_dir() / "scheduler.lock").read_text().split()
    return int(written[0]) if written else None


def job_clock_now(job_id: str) -> datetime:
    """Now on the job's simulated clock (`--at`, `--speedup`)."""
    clock = job(job_id).request["clock"]
    origin = datetime.fromisoformat(clock["origin"])
    return origin + timedelta(seconds=(time.time() - float(clock["anchor"])) * clock["speedup"])


def job_created_wall(job_id: str) -> datetime:
    created = job(job_id).request["clock"]["anchor"]
    return datetime.fromtimestamp(float(created), UTC)


def make_hour_greenest(trace: Path, hour: datetime) -> None:
    with trace.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0])
    stamp = hour.strftime("%Y-%m-%d %H:%M:%S")
    for row in rows:
        if row["Datetime (UTC)"] == stamp:
            for column in columns:
                if "gCO" in column:
                    row[column] = "1.0"
    tmp = trace.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(trace)


def test_cancel_leaves_nothing_in_the_queue(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path, cluster: Any
) -> None:
    root = batch_project(tmp_path / "p", ["python3", "-c", "import time; time.sleep(60)"])
    os.chdir(root)
    waiting = harchos(
        capsys, "run", "batch", "--hub", CLUSTER, "--defer-until-green", "--duration", "1h",
        "--deadline", "20h", "--provider", f"replay:{traces / DE_TRACE}", "--at", AT,
        "--speedup", "60", "--detach", "--json",
    )  # fmt: skip
    assert waiting.code == 0, waiting.err
    pending_id = waiting.json()["job_id"]
    running = harchos(capsys, "run", "batch", "--hub", CLUSTER, "--detach", "--json")
    assert running.code == 0, running.err
    running_id = running.json()["job_id"]
    wait_until(lambda: "queued in Slurm" in (job(pending_id).message or ""), timeout=60)
    wait_until(lambda: "running in Slurm" in (job(running_id).message or ""), timeout=60)
    ids = [slurm_id_of(pending_id), slurm_id_of(running_id)]

    for job_id in (pending_id, running_id):
        cancelled = harchos(capsys, "jobs", "cancel", job_id)
        assert cancelled.code == 0, cancelled.err
    for job_id in (pending_id, running_id):
        assert settled(job_id).state == "cancelled"
    for slurm_id in ids:
        wait_until(functools.partial(left_the_queue, cluster, slurm_id), timeout=30)


def test_hostile_arguments_reach_the_job_literally(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any
) -> None:
    hostile = ["a b", "$(touch pwned)", "`id`", "quote'\"", "new\nline", "--partition=x", "*"]
    write_argv = "import json, sys; open('argv.json', 'w').write(json.dumps(sys.argv[1:]))"
    root = batch_project(tmp_path / "p", ["true"])
    os.chdir(root)
    result = harchos(capsys, "run", "batch", "--hub", CLUSTER, "--json", "--",
                     "python3", "-c", write_argv, *hostile)  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads((root / "argv.json").read_text()) == hostile
    assert not (root / "pwned").exists()


def test_the_time_limit_signal_checkpoints_requeues_and_resumes_to_the_same_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any
) -> None:
    expected = straight_run(capsys, tmp_path / "straight", processes=1)
    root = project(capsys, tmp_path / "requeued", processes=1)
    os.chdir(root)
    job_id, slurm_id = train_on_the_cluster(capsys)
    # What Slurm does `--signal=B:USR1@N` before the time limit: USR1 to the batch script.
    subprocess.run(["scancel", "--batch", "--signal=USR1", slurm_id],
                   env={**os.environ, **cluster.env}, check=True)  # fmt: skip

    final = settled(job_id)
    assert (final.state, final.exit_code) == ("done", 0), final.message
    log = log_path(job_id).read_text()
    assert "requeued to resume from it" in log
    assert "resumed from" in log
    assert same_weights(expected, root / "outputs" / WEIGHTS)
    assert final.attempt == 1  # one harchos attempt: Slurm requeued its own job


def test_a_job_moves_from_the_cluster_to_an_ssh_box(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cluster: Any,
    sshd_factory: Callable[[str], Sshd],
) -> None:  # fmt: skip
    expected = straight_run(capsys, tmp_path / "straight", processes=1)
    box = sshd_factory("box")
    root = project(capsys, tmp_path / "moved", processes=1)
    add_hub(capsys, box, "FR")
    os.chdir(root)
    job_id, slurm_id = train_on_the_cluster(capsys)

    moved = harchos(capsys, "jobs", "migrate", job_id, "--to", "box")
    assert moved.code == 0, moved.err
    final = settled(job_id)
    assert (final.state, final.hub, final.attempt) == ("done", "box", 2), final.message
    assert same_weights(expected, on_hub(box, root, "outputs", WEIGHTS))
    # harchos asked for that stop: Slurm's job ended, it was not requeued.
    assert squeue(cluster, slurm_id) in (None,) or squeue(cluster, slurm_id)[0] == "COMPLETED"  # type: ignore[index]
    assert "requeued" not in log_path(job_id).read_text()


def test_two_machines_of_the_cluster_train_pause_and_resume_as_one_job(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, slurm_pair: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # One process on each of two machines: the same world as two processes on one machine.
    expected = straight_run(capsys, tmp_path / "straight", processes=2)
    root = project(capsys, tmp_path / "pair", processes=1)
    os.chdir(root)
    for name, value in slurm_pair.env.items():
        monkeypatch.setenv(name, value)
    added = harchos(capsys, "hubs", "add", "pair", "--slurm", "local", "--partition",
                    slurm_pair.partition, "--region", "DE", "--python", sys.executable)  # fmt: skip
    assert added.code == 0, added.err

    dry = harchos(capsys, "run", "train", "--hub", "pair", "--nodes", "2", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    launch = dry.json()["launch"]
    assert {"--nodes=2", "--ntasks-per-node=1"} <= set(launch["slurm"]["sbatch"])
    argv = launch["argv"]
    assert argv[argv.index("--num_machines") + 1] == "2"
    assert argv[argv.index("--machine_rank") + 1] == "{SLURM_PROCID}"
    assert argv[argv.index("--num_processes") + 1] == "2"

    job_id = start(capsys, "--hub", "pair", "--nodes", "2")
    assert harchos(capsys, "jobs", "pause", job_id).code == 0
    final = settled(job_id)
    assert (final.state, final.exit_code) == ("paused", 85), final.message
    log = log_path(job_id).read_text()
    # srun labels each machine's lines with its task number: machine 1 ran the world's rank 1.
    for rank in (0, 1):
        assert re.search(rf"^{rank}: rank {rank} \(pid \d+\) ready", log, re.M), log[-2000:]
    # Slurm placed both machines; a move elsewhere would change the world: refused.
    refused = harchos(capsys, "jobs", "migrate", job_id, "--to", "local")
    assert refused.code == 2
    assert "2 machines" in refused.err

    assert harchos(capsys, "jobs", "resume", job_id).code == 0
    final = settled(job_id)
    assert (final.state, final.attempt) == ("done", 2), final.message
    assert log_path(job_id).read_text().count("resumed from") >= 1
    assert same_weights(expected, root / "outputs" / WEIGHTS)


def test_a_job_moves_from_an_ssh_box_to_a_cluster_behind_an_ssh_login_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, slurm_cluster: Any,
    sshd_factory: Callable[..., Sshd],
) -> None:  # fmt: skip
    expected = straight_run(capsys, tmp_path / "straight", processes=1)
    box = sshd_factory("box")
    # The login node: Slurm's clients find the cluster through the session's environment, as
    # they find /etc/slurm/slurm.conf on a real one.
    login = sshd_factory("login", env=dict(slurm_cluster.env))
    root = project(capsys, tmp_path / "back", processes=1)
    add_hub(capsys, box, "DE")
    added = harchos(
        capsys, "hubs", "add", "remote-cluster", "--slurm", f"root@127.0.0.1:{login.port}",
        "--identity", str(login.client_key), "--partition", slurm_cluster.partition,
        "--region", "FR", "--python", sys.executable,
    )  # fmt: skip
    assert added.code == 0, added.err
    checked = harchos(capsys, "hubs", "check", "remote-cluster", "--json")
    assert checked.code == 0, checked.err + checked.out
    assert checked.json()["slurm"]["partition"] == slurm_cluster.partition
    os.chdir(root)
    job_id = start(capsys, "--hub", "box")

    moved = harchos(capsys, "jobs", "migrate", job_id, "--to", "remote-cluster")
    assert moved.code == 0, moved.err
    final = settled(job_id)
    assert (final.state, final.hub, final.attempt) == ("done", "remote-cluster", 2), final.message
    assert "resumed from" in log_path(job_id).read_text()
    assert same_weights(expected, on_hub(login, root, "outputs", WEIGHTS))
    assert [d["action"] for d in actions(capsys, job_id)][-3:] == ["paused", "migrate", "resume"]
