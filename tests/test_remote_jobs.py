"""Detached jobs on a hub (`HubJobs`), on the local hub and over a real sshd on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sshd import Sshd, client_key_fixture, kill_ssh_clients, sshd_fixture  # noqa: F401

from harchos_cli.errors import HubError, UsageError
from harchos_cli.hubs import jobs_for
from harchos_cli.hubs.base import JobStatus, LaunchSpec
from harchos_cli.hubs.inventory import local_hub
from harchos_cli.hubs.processes import HubJobs
from harchos_cli.hubs.ssh import SshTransport

PY = sys.executable


def wait_exited(jobs: HubJobs, job_id: str, timeout: float = 30.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.status(job_id)
        if status.state == "exited":
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {jobs.status(job_id)} after {timeout} s")


def wait_log(jobs: HubJobs, job_id: str, text: bytes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in jobs.read_log(job_id, 0):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log of {job_id}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.fixture(autouse=True)
def _stop_leftover_jobs(tmp_path: Path, isolated_home: Path) -> Iterator[None]:
    """A failed test must not leave its workload running: kill what has no exit code yet."""
    yield
    for pid_file in [*tmp_path.glob("**/.harchos/jobs/*/pid"), *isolated_home.glob("jobs/*/pid")]:
        if not (pid_file.parent / "exit_code").exists():
            with contextlib.suppress(OSError):
                os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(params=["local", "ssh"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> HubJobs:
    if request.param == "local":
        return jobs_for(local_hub())
    server: Sshd = request.getfixturevalue("sshd")
    return HubJobs(SshTransport(server.hub()))


def test_launch_records_pid_log_and_real_exit_code(jobs: HubJobs, tmp_path: Path) -> None:
    script = (
        "import os; print('hello', os.environ['HARCHOS_JOB_ID'], flush=True); raise SystemExit(7)"
    )
    spec = LaunchSpec(
        "job-1", [PY, "-c", script], cwd=str(tmp_path), env={"HARCHOS_JOB_ID": "job-1"}
    )
    started = jobs.launch(spec)
    assert started.state in ("running", "exited")
    assert started.pid is not None
    done = wait_exited(jobs, "job-1")
    assert (done.exit_code, done.pid) == (7, started.pid)
    assert jobs.read_log("job-1", 0) == b"hello job-1\n"
    assert done.log_size == len(b"hello job-1\n")
    job_dir = Path(jobs.job_dir("job-1"))
    assert (job_dir / "exit_code").read_text() == "7"
    assert json.loads((job_dir / "spec.json").read_text())["argv"] == [PY, "-c", script]
    assert int((job_dir / "pid").read_text().split()[0]) == started.pid


def test_job_dirs_live_under_the_hubs_home(
    jobs: HubJobs, tmp_path: Path, isolated_home: Path
) -> None:
    job_dir = Path(jobs.job_dir("j"))
    if jobs.hub.name == "local":
        assert job_dir == isolated_home / "jobs" / "j"
    else:
        assert job_dir == tmp_path / "sshd-h1" / "root" / ".harchos" / "jobs" / "j"


def test_launch_is_idempotent_by_job_id(jobs: HubJobs, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    code = f"open({str(marker)!r}, 'a').write('x')"
    first = jobs.launch(LaunchSpec("same", [PY, "-c", code], cwd=str(tmp_path)))
    wait_exited(jobs, "same")
    again = jobs.launch(LaunchSpec("same", [PY, "-c", code + "; raise SystemExit(9)"], cwd="/"))
    assert again.state == "exited"
    assert (again.pid, again.exit_code) == (first.pid, 0)
    assert marker.read_text() == "x"


def test_concurrent_launches_with_one_id_start_it_once(jobs: HubJobs, tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    spec = LaunchSpec("race", [PY, "-c", f"open({str(marker)!r}, 'a').write('x')"], cwd="/")
    results: list[JobStatus] = []
    threads = [threading.Thread(target=lambda: results.append(jobs.launch(spec))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_exited(jobs, "race")
    assert marker.read_text() == "x"
    assert len({r.pid for r in results}) == 1


def test_unknown_job_is_absent(jobs: HubJobs) -> None:
    assert jobs.status("never") == JobStatus("absent")
    assert jobs.read_log("never", 0) == b""
    assert jobs.signal("never", signal.SIGTERM) is False


def test_read_log_from_an_offset_follows_a_live_job(jobs: HubJobs, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = (
        "import os, time\n"
        "print('line one', flush=True)\n"
        "for _ in range(3000):  # at most a minute\n"
        f"    if os.path.exists({str(gate)!r}): break\n"
        "    time.sleep(0.02)\n"
        "print('line two', flush=True)\n"
    )
    jobs.launch(LaunchSpec("follow", [PY, "-c", code], cwd="/"))
    wait_log(jobs, "follow", b"line one\n")
    first = jobs.read_log("follow", 0)
    assert first == b"line one\n"
    assert jobs.read_log("follow", len(first)) == b""
    gate.touch()
    wait_exited(jobs, "follow")
    assert jobs.read_log("follow", len(first)) == b"line two\n"
    assert jobs.read_log("follow", 5, limit=3) == b"one"


def test_signal_reaches_the_whole_process_group(jobs: HubJobs, tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    shell = f"sleep 60 & echo $! > {str(child)!r}; echo ready; wait"
    jobs.launch(LaunchSpec("group", ["sh", "-c", shell], cwd="/"))
    wait_log(jobs, "group", b"ready")
    grandchild = int(child.read_text())
    assert alive(grandchild)
    assert jobs.signal("group", signal.SIGTERM) is True
    done = wait_exited(jobs, "group")
    assert done.exit_code == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)
    assert jobs.signal("group", signal.SIGTERM) is False


def test_terminate_reaches_the_workload_alone_and_secrets_leave_no_copy(
    jobs: HubJobs, tmp_path: Path
) -> None:
    # A server that stops its own children on SIGTERM (as `vllm serve`): they must not get it.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print('key', os.environ['API_KEY'], 'child', child.pid, flush=True)\n"
        "def drain(*_):\n"
        "    print('child alive', child.poll() is None, flush=True); child.kill(); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, drain)\n"
        "time.sleep(60)\n"
    )
    env = {"API_KEY": "s3cret-value", "PLAIN": "seen"}
    spec = LaunchSpec("server", [PY, "-c", script], str(tmp_path), env, secret_env=["API_KEY"])
    jobs.launch(spec)
    wait_log(jobs, "server", b"child")
    saved = json.loads((Path(jobs.job_dir("server")) / "spec.json").read_text())
    assert saved["env"] == {"API_KEY": "", "PLAIN": "seen"}
    assert jobs.terminate("server", signal.SIGTERM) is True
    done = wait_exited(jobs, "server")
    assert done.exit_code == 0
    log = jobs.read_log("server", 0)
    assert b"key s3cret-value" in log
    assert b"child alive True" in log
    assert jobs.terminate("server", signal.SIGTERM) is False


def test_cancel_escalates_to_sigkill_after_the_grace_period(jobs: HubJobs) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('saving', flush=True))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    jobs.launch(LaunchSpec("stubborn", [PY, "-c", code], cwd="/"))
    wait_log(jobs, "stubborn", b"ready")
    final = jobs.cancel("stubborn", grace_s=0.5, poll_s=0.05)
    assert (final.state, final.exit_code) == ("exited", 128 + signal.SIGKILL)
    assert b"saving" in jobs.read_log("stubborn", 0)


def test_cancel_lets_a_cooperative_job_exit_on_its_own(jobs: HubJobs) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(85))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    jobs.launch(LaunchSpec("polite", [PY, "-c", code], cwd="/"))
    wait_log(jobs, "polite", b"ready")
    assert jobs.cancel("polite", grace_s=20).exit_code == 85


def test_missing_program_is_recorded_as_127(jobs: HubJobs) -> None:
    jobs.launch(LaunchSpec("nope", ["/no/such/program"], cwd="/"))
    assert wait_exited(jobs, "nope").exit_code == 127
    assert b"cannot start '/no/such/program'" in jobs.read_log("nope", 0)


def test_bad_requests_are_refused_before_anything_starts(jobs: HubJobs, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="does not exist on the hub"):
        jobs.launch(LaunchSpec("nocwd", ["true"], cwd=str(tmp_path / "missing")))
    assert jobs.status("nocwd").state == "absent"
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(UsageError):
            jobs.status(bad)


def test_missing_python_on_the_hub_is_a_clear_error(jobs: HubJobs) -> None:
    from dataclasses import replace

    broken = HubJobs(type(jobs.transport)(replace(jobs.hub, python="/no/python3")))  # type: ignore[call-arg]
    with pytest.raises(HubError, match="Python '/no/python3' was not found"):
        broken.status("x")


ODD = st.text(
    alphabet=st.sampled_from(list("ab ;'\"$()`\\|&*?~!#{}<>\n\té-")), min_size=0, max_size=12
)


def _echo_args(jobs: HubJobs, job_id: str, args: list[str], cwd: Path, value: str) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    code = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ['ODD']]))"
    jobs.launch(LaunchSpec(job_id, [PY, "-c", code, *args], cwd=str(cwd), env={"ODD": value}))
    assert wait_exited(jobs, job_id).exit_code == 0
    assert json.loads(jobs.read_log(job_id, 0)) == [args, str(cwd), value]


_counter = iter(range(10**6))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(ODD, max_size=4),
    folder=ODD.filter(lambda s: s.strip("~ ") != "" and "\n" not in s),
    value=ODD,
)
@example(args=["$(touch pwned)", "; rm -rf x", "it's", '"q"'], folder="a $(b); 'c'", value="$HOME")
def test_arguments_cwd_and_env_pass_literally_on_the_local_hub(
    args: list[str], folder: str, value: str, tmp_path: Path
) -> None:
    jobs = jobs_for(local_hub())
    cwd = tmp_path / "p" / folder.replace("/", "_").lstrip("~")
    _echo_args(jobs, f"odd-{next(_counter)}", args, cwd, value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("args", "folder", "value"),
    [
        (
            ["$(touch pwned)", "; touch pwned2", "it's", '"q"', "a\\b", "*"],
            "a $(b); 'c'",
            "$HOME `id`",
        ),
        (["", " ", "\n", "-c", "--"], "sp ace\ttab", "x'y\"z"),
    ],
)
def test_arguments_cwd_and_env_pass_literally_over_ssh(
    sshd: Sshd,
    tmp_path: Path,
    args: list[str],
    folder: str,
    value: str,
) -> None:
    jobs = HubJobs(SshTransport(sshd.hub()))
    _echo_args(jobs, "odd", args, tmp_path / folder, value)
    assert not list(tmp_path.glob("**/pwned*"))
    assert not list(sshd.root.glob("**/pwned*"))


def test_job_survives_the_ssh_connection_dying(sshd: Sshd, tmp_path: Path) -> None:
    transport = SshTransport(sshd.hub())
    jobs = HubJobs(transport)
    gate = tmp_path / "gate"
    code = (
        "import os, time\n"
        "print('started', flush=True)\n"
        "for _ in range(3000):  # at most a minute\n"
        f"    if os.path.exists({str(gate)!r}): break\n"
        "    time.sleep(0.02)\n"
        "print('finished', flush=True)\n"
        "raise SystemExit(3)\n"
    )
    jobs.launch(LaunchSpec("survivor", [PY, "-c", code], cwd="/"))
    wait_log(jobs, "survivor", b"started")
    assert kill_ssh_clients(str(transport.control_path())) == 1  # the ControlMaster
    sshd.stop()  # and every server-side connection
    gate.touch()
    sshd.start()
    done = wait_exited(jobs, "survivor")
    assert done.exit_code == 3
    assert jobs.read_log("survivor", 0) == b"started\nfinished\n"


def test_a_blip_does_not_fail_a_step(sshd: Sshd) -> None:
    jobs = HubJobs(SshTransport(sshd.hub()), backoff_s=0.2)
    assert jobs.status("x").state == "absent"
    sshd.stop()
    restarter = threading.Timer(0.5, sshd.start)
    restarter.start()
    try:
        assert jobs.status("x").state == "absent"
    finally:
        restarter.join()


def test_a_dead_hub_fails_after_several_tries(sshd: Sshd) -> None:
    from harchos_cli.hubs.base import HubUnreachableError

    sleeps: list[float] = []
    transport = SshTransport(sshd.hub(), attempts=2, sleep=sleeps.append)
    jobs = HubJobs(transport, attempts=3, backoff_s=0.1, sleep=sleeps.append)
    sshd.stop()
    with pytest.raises(HubUnreachableError) as failed:
        jobs.status("x")
    assert failed.value.exit_code == 4
    assert "unreachable" in failed.value.message
    assert sleeps == [0.5, 0.1, 0.5, 0.2, 0.5]


def test_launch_reclaims_a_folder_whose_launcher_died_before_its_monitor(jobs: HubJobs) -> None:
    # What a runner killed between creating the job's folder and starting its monitor leaves.
    spec = LaunchSpec("orphan", [PY, "-c", "print('ran')"], cwd="/")
    folder = Path(jobs.job_dir("orphan"))
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"argv": list(spec.argv), "cwd": "/"}))
    old = time.time() - 120
    os.utime(folder / "spec.json", (old, old))
    jobs.launch(spec)
    assert wait_exited(jobs, "orphan").exit_code == 0
    assert jobs.read_log("orphan", 0) == b"ran\n"
