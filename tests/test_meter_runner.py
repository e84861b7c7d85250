"""The meter beside a job on its hub (`_runner._Meter`): `meter.jsonl`, read back with `read_meter`.

This machine has no GPU and no RAPL: the CPU is estimated from its TDP, or read from a powercap
tree laid out like sysfs in a temporary folder (`HARCHOS_POWERCAP_ROOT`) that the test advances.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sshd import Sshd, client_key_fixture, kill_ssh_clients, sshd_fixture  # noqa: F401
from test_remote_jobs import wait_exited, wait_log

from harchos_cli.hubs import _runner, jobs_for
from harchos_cli.hubs.base import LaunchSpec
from harchos_cli.hubs.inventory import local_hub
from harchos_cli.hubs.processes import HubJobs
from harchos_cli.hubs.ssh import SshTransport

PY = sys.executable
KEYS = {"t", "gpu_j", "cpu_j", "gpu_w", "cpu_w", "gpu_source", "cpu_source", "gpus", "gpu_names",
        "shared_gpu", "cpu_tdp_w"}  # fmt: skip
# Burns CPU for `seconds`, then prints the CPU time it used (its own, measured by the kernel).
BURN = (
    "import os, sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: sum(i * i for i in range(1000))\n"
    "t = os.times(); print('cpu', t.user + t.system, flush=True)\n"
)


@pytest.fixture(autouse=True)
def _stop_leftover_jobs(tmp_path: Path, isolated_home: Path) -> Iterator[None]:
    yield
    for pid_file in [*tmp_path.glob("**/.harchos/jobs/*/pid"), *isolated_home.glob("jobs/*/pid")]:
        if not (pid_file.parent / "exit_code").exists():
            with contextlib.suppress(OSError):
                os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> HubJobs:
    # No GPU figure here whatever the test machine has: the CPU part is what these tests check.
    folders = os.environ["PATH"].split(os.pathsep)
    monkeypatch.setenv(
        "PATH", os.pathsep.join(p for p in folders if not Path(p, "nvidia-smi").exists())
    )
    monkeypatch.setenv("HARCHOS_POWERCAP_ROOT", "/nonexistent")
    return jobs_for(local_hub())


def samples(jobs: HubJobs, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jobs.read_meter(job_id, 0).decode().splitlines()]


def burned_cpu_s(jobs: HubJobs, job_id: str) -> float:
    line = next(x for x in jobs.read_log(job_id, 0).decode().splitlines() if x.startswith("cpu"))
    return float(line.split()[1])


def make_powercap(root: Path, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    """A sysfs-like powercap tree: one package zone, with a sub-zone the meter must not add."""
    package = root / "intel-rapl:0"
    (package / "intel-rapl:0:0").mkdir(parents=True)
    (package / "name").write_text("package-0\n")
    (package / "energy_uj").write_text(f"{energy_uj}\n")
    (package / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (package / "intel-rapl:0:0" / "name").write_text("core\n")
    (package / "intel-rapl:0:0" / "energy_uj").write_text("999999999\n")
    (package / "intel-rapl:0:0" / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return package / "energy_uj"


def test_a_burning_job_is_estimated_from_its_cpu_time_and_the_tdp(jobs: HubJobs) -> None:
    spec = LaunchSpec("burn", [PY, "-c", BURN, "1.5"], cwd="/", meter={"interval_s": 0.2})
    jobs.launch(spec)
    assert wait_exited(jobs, "burn").exit_code == 0
    lines = samples(jobs, "burn")
    assert len(lines) >= 3
    assert all(set(line) == KEYS for line in lines)
    assert lines[0]["cpu_j"] == 0.0
    assert lines[0]["cpu_w"] == 0.0
    energies = [line["cpu_j"] for line in lines]
    assert energies == sorted(energies)
    assert energies[-1] > 0
    assert {line["cpu_source"] for line in lines} == {"tdp-estimate"}
    assert {line["cpu_tdp_w"] for line in lines} == {85.0}
    assert {line["gpu_source"] for line in lines} == {None}
    assert {line["gpu_j"] for line in lines} == {None}
    assert all(line["gpus"] == [] and line["shared_gpu"] is False for line in lines)
    expected_j = burned_cpu_s(jobs, "burn") * 85.0 / (os.cpu_count() or 1)
    # The interpreter's start and exit add a little CPU time outside what the job measured.
    assert 0.8 * expected_j <= energies[-1] <= 1.5 * expected_j
    times = [line["t"] for line in lines]
    assert times == sorted(times)


def test_the_tdp_comes_from_the_spec(jobs: HubJobs) -> None:
    meter = {"interval_s": 0.2, "cpu_tdp_w": 170.0}
    jobs.launch(LaunchSpec("tdp", [PY, "-c", BURN, "0.5"], cwd="/", meter=meter))
    assert wait_exited(jobs, "tdp").exit_code == 0
    lines = samples(jobs, "tdp")
    assert {line["cpu_tdp_w"] for line in lines} == {170.0}
    expected_j = burned_cpu_s(jobs, "tdp") * 170.0 / (os.cpu_count() or 1)
    assert 0.8 * expected_j <= lines[-1]["cpu_j"] <= 1.5 * expected_j


def test_rapl_package_energy_is_shared_out_by_busy_cpu_time(
    jobs: HubJobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_uj = 262_143_000_000  # close to the range: the counter wraps during the job
    energy = make_powercap(tmp_path / "powercap", start_uj)
    monkeypatch.setenv("HARCHOS_POWERCAP_ROOT", str(tmp_path / "powercap"))
    spec = LaunchSpec("rapl", [PY, "-c", BURN, "1.5"], cwd="/", meter={"interval_s": 0.2})
    stop = threading.Event()
    advanced_uj = 0

    def advance() -> None:  # a package drawing 50 W
        nonlocal advanced_uj
        while not stop.wait(0.05):
            advanced_uj += 2_500_000
            tmp = energy.with_suffix(".tmp")
            tmp.write_text(f"{(start_uj + advanced_uj) % 262_143_328_850}\n")
            tmp.replace(energy)

    ticker = threading.Thread(target=advance)
    ticker.start()
    try:
        jobs.launch(spec)
        assert wait_exited(jobs, "rapl").exit_code == 0
    finally:
        stop.set()
        ticker.join()
    lines = samples(jobs, "rapl")
    assert len(lines) >= 3
    assert {line["cpu_source"] for line in lines} == {"rapl"}
    assert {line["cpu_tdp_w"] for line in lines} == {None}
    energies = [line["cpu_j"] for line in lines]
    assert energies == sorted(energies)
    assert 0 < energies[-1] <= advanced_uj / 1e6
    assert all(line["cpu_w"] >= 0 for line in lines)


def test_a_spec_without_meter_or_with_interval_zero_writes_no_samples(jobs: HubJobs) -> None:
    jobs.launch(LaunchSpec("plain", [PY, "-c", "print('hi')"], cwd="/"))
    jobs.launch(LaunchSpec("off", [PY, "-c", "print('hi')"], cwd="/", meter={"interval_s": 0}))
    for job_id in ("plain", "off"):
        assert wait_exited(jobs, job_id).exit_code == 0
        assert not (Path(jobs.job_dir(job_id)) / "meter.jsonl").exists()
        assert jobs.read_meter(job_id, 0) == b""
    assert "meter" not in json.loads((Path(jobs.job_dir("plain")) / "spec.json").read_text())
    assert jobs.read_meter("never", 0) == b""


def test_read_meter_from_an_offset_returns_the_rest(jobs: HubJobs, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    code = (
        "import os, time\nprint('up', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
    )
    jobs.launch(LaunchSpec("follow", [PY, "-c", code], cwd="/", meter={"interval_s": 0.1}))
    wait_log(jobs, "follow", b"up")
    deadline = time.monotonic() + 30
    while jobs.read_meter("follow", 0).count(b"\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = jobs.read_meter("follow", 0)
    whole = first[: first.rindex(b"\n") + 1]
    gate.touch()
    wait_exited(jobs, "follow")
    everything = jobs.read_meter("follow", 0)
    assert everything.startswith(whole)
    assert jobs.read_meter("follow", len(whole)) == everything[len(whole) :]
    assert jobs.read_meter("follow", len(everything)) == b""
    assert jobs.read_meter("follow", 3, limit=5) == everything[3:8]
    assert all(set(json.loads(line)) == KEYS for line in everything.splitlines())


def test_a_broken_sampler_leaves_the_job_and_its_exit_code_alone(
    jobs: HubJobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_powercap(tmp_path / "powercap", 1_000_000)
    monkeypatch.setenv("HARCHOS_POWERCAP_ROOT", str(tmp_path / "powercap"))
    gate = tmp_path / "go"
    code = (
        "import os, time\nprint('up', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "print('done', flush=True); raise SystemExit(5)\n"
    )
    jobs.launch(LaunchSpec("broken", [PY, "-c", code], cwd="/", meter={"interval_s": 0.1}))
    wait_log(jobs, "broken", b"up")
    # The zone goes away under the meter, as it does when the powercap driver is unloaded.
    shutil.rmtree(tmp_path / "powercap" / "intel-rapl:0")
    deadline = time.monotonic() + 30
    while b"error" not in jobs.read_meter("broken", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # no further sample after the error
    before_exit = jobs.read_meter("broken", 0)
    gate.touch()
    done = wait_exited(jobs, "broken")
    assert done.exit_code == 5
    assert jobs.read_log("broken", 0) == b"up\ndone\n"
    lines = [json.loads(line) for line in jobs.read_meter("broken", 0).splitlines()]
    assert jobs.read_meter("broken", 0) == before_exit
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1
    assert set(errors[0]) == {"t", "error"}
    assert "FileNotFoundError" in errors[0]["error"]
    assert lines[-1] is errors[0]
    assert lines[0]["cpu_source"] == "rapl"


FAKE_PYNVML = """
import json, os
STATE = os.environ["FAKE_NVML_STATE"]
class NVMLError(Exception): pass
class Process:
    def __init__(self, pid): self.pid = pid
def _state(): return json.load(open(STATE))
def nvmlInit(): pass
def nvmlDeviceGetCount(): return len(_state()["gpus"])
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return _state()["gpus"][h]["name"].encode()
def nvmlDeviceGetTotalEnergyConsumption(h):
    gpu = _state()["gpus"][h]
    if "energy_mj" not in gpu: raise NVMLError("Not Supported")
    return gpu["energy_mj"]
def nvmlDeviceGetPowerUsage(h): return _state()["gpus"][h]["power_mw"]
def nvmlDeviceGetComputeRunningProcesses(h):
    return [Process(pid) for pid in _state()["gpus"][h].get("pids", [])]
"""


@pytest.mark.parametrize("counter", [True, False], ids=["nvml-energy", "nvml-power"])
def test_gpus_through_nvml_only_those_the_job_sees_and_a_shared_gpu_is_flagged(
    jobs: HubJobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counter: bool
) -> None:
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "pynvml.py").write_text(FAKE_PYNVML)
    state = tmp_path / "nvml.json"
    gpus: list[dict[str, Any]] = [
        {"name": f"GPU {i}", "power_mw": 100_000 * (i + 1), "energy_mj": 0} for i in range(3)
    ]
    gpus[1]["pids"] = [1]  # someone else's process (init's pid, never the job's) on GPU 1
    if not counter:
        for gpu in gpus:
            del gpu["energy_mj"]

    def save() -> None:
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gpus": gpus}))
        tmp.replace(state)

    save()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("FAKE_NVML_STATE", str(state))
    stop = threading.Event()

    def advance() -> None:  # each GPU's counter at its power draw: 100, 200 and 300 W
        while not stop.wait(0.05):
            for gpu in gpus:
                if "energy_mj" in gpu:
                    gpu["energy_mj"] += gpu["power_mw"] * 0.05
            save()

    ticker = threading.Thread(target=advance)
    ticker.start()
    env = {"CUDA_VISIBLE_DEVICES": "2,1"}
    spec = LaunchSpec("gpu", [PY, "-c", BURN, "1.0"], cwd="/", env=env, meter={"interval_s": 0.2})
    try:
        jobs.launch(spec)
        assert wait_exited(jobs, "gpu").exit_code == 0
    finally:
        stop.set()
        ticker.join()
    lines = samples(jobs, "gpu")
    assert len(lines) >= 3
    source = "nvml-energy" if counter else "nvml-power"
    assert {line["gpu_source"] for line in lines} == {source}
    assert all(line["gpus"] == [2, 1] for line in lines)
    assert all(line["gpu_names"] == ["GPU 2", "GPU 1"] for line in lines)
    assert (lines[0]["gpu_j"], lines[0]["gpu_w"], lines[0]["shared_gpu"]) == (0.0, 0.0, False)
    assert lines[-1]["shared_gpu"] is True
    energies = [line["gpu_j"] for line in lines]
    assert energies == sorted(energies)
    elapsed = lines[-1]["t"] - lines[0]["t"]
    # GPUs 2 and 1 draw 500 W together (the ticker's timing is loose under load).
    assert 0.5 * 500 * elapsed <= energies[-1] <= 1.5 * 500 * elapsed
    if not counter:
        assert all(line["gpu_w"] == pytest.approx(500.0) for line in lines[1:])


def test_gpus_through_nvidia_smi_power_sampling(
    jobs: HubJobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=index,name) printf "0, GPU A\\n1, GPU B\\n" ;;\n'
        '  --query-gpu=index,power.draw) printf "0, 70.0\\n1, 250.5\\n" ;;\n'
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    spec = LaunchSpec("smi", [PY, "-c", BURN, "0.6"], cwd="/", env=env, meter={"interval_s": 0.2})
    jobs.launch(spec)
    assert wait_exited(jobs, "smi").exit_code == 0
    lines = samples(jobs, "smi")
    assert {line["gpu_source"] for line in lines} == {"nvidia-smi"}
    assert all(line["gpus"] == [1] and line["gpu_names"] == ["GPU B"] for line in lines)
    assert all(line["gpu_w"] == pytest.approx(250.5) for line in lines[1:])
    elapsed = lines[-1]["t"] - lines[0]["t"]
    assert lines[-1]["gpu_j"] == pytest.approx(250.5 * elapsed, rel=0.1)
    assert {line["shared_gpu"] for line in lines} == {False}
    # nvidia-smi runs as the monitor's child: its CPU time is not the job's.
    expected_j = burned_cpu_s(jobs, "smi") * 85.0 / (os.cpu_count() or 1)
    assert lines[-1]["cpu_j"] <= 1.5 * expected_j


def test_the_job_tree_cpu_time_matches_with_and_without_psutil() -> None:
    import psutil  # a test dependency: the hub's meter uses it when the hub's Python has it

    child = subprocess.Popen([PY, "-c", BURN, "0.5"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        with_psutil, pids = _runner._tree_cpu_seconds(psutil)
        from_proc, proc_pids = _runner._tree_cpu_seconds(None)
        assert child.pid in pids
        assert child.pid in proc_pids
        assert abs(with_psutil - from_proc) < 0.1
    finally:
        child.wait()


def test_cuda_visible_devices_chooses_the_gpus() -> None:
    assert _runner._visible_gpus({}, None) is None
    assert _runner._visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 0"}, None) == [2, 0]
    assert _runner._visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, None) == []
    assert _runner._visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, None) == [1]


def test_samples_survive_a_dropped_link_and_come_back_over_ssh(sshd: Sshd) -> None:
    transport = SshTransport(sshd.hub())
    over_ssh = HubJobs(transport)
    spec = LaunchSpec("far", [PY, "-c", BURN, "1.0"], cwd="/", meter={"interval_s": 0.2})
    over_ssh.launch(spec)
    # The link drops while the job runs; the meter keeps writing on the hub.
    assert kill_ssh_clients(str(transport.control_path())) == 1  # the ControlMaster
    sshd.stop()  # and every server-side connection
    time.sleep(1.5)
    sshd.start()
    assert wait_exited(over_ssh, "far").exit_code == 0
    lines = [json.loads(line) for line in over_ssh.read_meter("far", 0).decode().splitlines()]
    assert len(lines) >= 3
    assert lines[-1]["cpu_j"] > 0
    assert {line["cpu_source"] for line in lines} <= {"tdp-estimate", "rapl"}
