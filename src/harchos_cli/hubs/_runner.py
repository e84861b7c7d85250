"""The hub-side half of harchos: run as `PYTHON - COMMAND ARGS...` with this file on stdin.

It runs on the hub's own Python (3.8 or newer), so it uses only the standard library and nothing
from harchos. Every argument arrives as one literal argv element; nothing here goes through a shell.

Job directory `<root>/<job_id>/`:
    spec.json    what to run (argv, cwd, env), written before the directory appears; the values
                 of the variables it names in `secret_env` are blanked once the workload started
    runner.py    a copy of this file; the monitor runs from it
    monitor.pid  the monitor process (waits for the workload, records its exit code)
    pid          the workload's pid, which is also its process group and session id
    log          the workload's stdout and stderr, appended as it runs
    exit_code    the workload's exit code (128 + N when killed by signal N), written atomically;
                 85 (paused) when every registered worker confirmed a pause, whatever the
                 launcher above them exited with (`accelerate launch` turns 85 into 1)
    launcher_exit_code  what the workload's top process itself exited with, when that differs
    meter.jsonl  energy samples, one JSON object a line, appended while the workload runs (only
                 when the spec has a `meter` with a non-zero `interval_s`; see `_Meter`):
                 {"t", "gpu_j", "cpu_j", "gpu_w", "cpu_w", "gpu_source", "cpu_source", "gpus",
                 "gpu_names", "shared_gpu", "cpu_tdp_w"}, energies cumulative since the start
                 (the first line: zeros), or, once, {"t", "error"} when sampling broke and stopped
    slurm_job_id the Slurm job running this job (a Slurm hub: the job dir is on the cluster's
                 shared filesystem, and `sbatch` runs the monitor on a compute node)
    job.sh       the batch script Slurm runs: `exec PYTHON runner.py monitor JOB_DIR`
    squeue.json  what `squeue` last said of that job, reused for a few seconds by `status`
    control/     the workload's `$HARCHOS_CONTROL_DIR` (training contract): each worker of the
                 launch creates `control/workers/<pid>` once its signal handlers are in place,
                 and `control/workers/<pid>.paused` (JSON) after it saved its state on a pause
                 request, just before it exits

Commands (each prints one JSON object on stdout unless noted):
    launch ROOT JOB_ID SPEC_JSON   start the job unless its directory exists; print its status
                                   (SPEC_JSON `-`: the spec came with this file on stdin, so no
                                   secret in it shows in the hub's process list)
    status ROOT JOB_ID             print its status
    log ROOT JOB_ID OFFSET LIMIT   write up to LIMIT raw log bytes from OFFSET (no JSON)
    meter ROOT JOB_ID OFFSET LIMIT write up to LIMIT raw bytes of meter.jsonl from OFFSET (no
                                   JSON of its own; may end in part of a line still being written)
    signal ROOT JOB_ID SIGNUM      deliver SIGNUM to the workload's workers (see `_targets`);
                                   print {"sent": bool, "to": "workers"|"groups"|"pending"}
                                   (pending: a SIGUSR1 waits for the workers to register)
    terminate ROOT JOB_ID SIGNUM   deliver SIGNUM to the workload's own process only (a server
                                   that drains its children itself, as `vllm serve` on SIGTERM);
                                   print {"sent": bool}
    digest DIR                     print {relative path: sha256} of every file under DIR
    port START                     print {"port": N}: the first TCP port from START up that is
                                   free on the hub now (START 0: any free port), for the main
                                   node of a multi-node launch or a replica to listen on
    info WORKDIR                   print Python version, GPUs, free disk, whether WORKDIR (or
                                   the folder that would hold it) is writable, and whether
                                   accelerate and rsync are there
    monitor JOB_DIR                (internal) run the workload and record its exit code
    node JOB_DIR                   (internal) one machine of a multi-node job in a Slurm
                                   cluster: run its `accelerate launch`, pass signals on

A spec with a `slurm` key (`{"sbatch": [argv...], "job_name": NAME}`) is submitted with that
`sbatch` command instead of started here; the monitor then runs as the batch script on a compute
node. There, Slurm's `--signal=B:USR1@N` before the time limit reaches the monitor, which passes
it to the workers (they save and exit 85) and requeues the job (`scontrol requeue`) unless harchos
asked for the stop itself (`control/stop_requested`, written by the `signal` command); the requeued
job runs the monitor again, which resumes from the checkpoint. With `"nodes": N` (N > 1) in the
`slurm` key the monitor starts `srun ... runner.py node JOB_DIR`, one task per machine: each
fills its rank, the first machine's address and a port into the spec's `accelerate launch` flags
(the values `{SLURM_PROCID}`, `{FIRST_NODE_ADDRESS}` and `{JOB_PORT}`), runs it, and passes the
signals srun forwards (USR1, TERM, INT) to the workers on its machine.

`status` asks `squeue` while no exit code is recorded; `signal` reaches the monitor with `scancel
--batch --signal`, and SIGKILL, or any signal before the job started, is `scancel` itself.

The meter uses `pynvml` (nvidia-ml-py) and `psutil` when the hub's Python can import them, and
falls back to `nvidia-smi` and /proc otherwise. `HARCHOS_POWERCAP_ROOT` (tests only) replaces
/sys/class/powercap, where the RAPL counters are read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EXIT_BAD_REQUEST = 3
_LAUNCH_WAIT_S = 15.0
_ABANDONED_S = 30.0  # a job directory whose monitor never started within this is reclaimed
_PAUSED_EXIT_CODE = 85
_LEFTOVER_GRACE_S = 20.0  # workers still alive after their launcher exited get this to save
_PR_SET_CHILD_SUBREAPER = 36
# A pause (SIGUSR1) sent before the workers registered would kill a launcher that forwards
# nothing; it waits this long after the start for them, then goes to the process groups.
_REGISTER_GRACE_S = 120.0


def _fail(message: str) -> None:
    sys.stderr.write("harchos-runner: " + message + "\n")
    sys.exit(_EXIT_BAD_REQUEST)


def _job_dir(root: str, job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        _fail(f"invalid job id {job_id!r}")
    return os.path.join(os.path.expanduser(root), job_id)


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live job from a recycled pid."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid_file: str) -> int | None:
    """The pid recorded in `pid_file` when that very process is still alive."""
    text = _read(pid_file)
    if not text:
        return None
    fields = text.split()
    pid = int(fields[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    if len(fields) > 1 and os.path.exists(f"/proc/{pid}") and _start_time(pid) != fields[1]:
        return None
    return pid


def _status(job_dir: str) -> dict[str, object]:
    if not os.path.isdir(job_dir):
        return {"state": "absent", "pid": None, "exit_code": None, "log_size": 0}
    try:
        log_size = os.path.getsize(os.path.join(job_dir, "log"))
    except OSError:
        log_size = 0
    slurm_id = _read(os.path.join(job_dir, "slurm_job_id"))
    if slurm_id:
        return _slurm_status(job_dir, slurm_id, log_size)
    code = _read(os.path.join(job_dir, "exit_code"))
    pid_text = _read(os.path.join(job_dir, "pid"))
    pid = int(pid_text.split()[0]) if pid_text else None
    if code is not None and code != "":
        return {"state": "exited", "pid": pid, "exit_code": int(code), "log_size": log_size}
    if _alive(os.path.join(job_dir, "pid")) is not None:
        return {"state": "running", "pid": pid, "exit_code": None, "log_size": log_size}
    if pid is None and _alive(os.path.join(job_dir, "monitor.pid")) is not None:
        return {"state": "running", "pid": None, "exit_code": None, "log_size": log_size}
    # Once the workload is gone, the monitor writes exit_code within moments; give it the chance.
    for _ in range(20):
        time.sleep(0.05)
        code = _read(os.path.join(job_dir, "exit_code"))
        if code:
            return {"state": "exited", "pid": pid, "exit_code": int(code), "log_size": log_size}
        if _alive(os.path.join(job_dir, "monitor.pid")) is None:
            break
    # Gone without a record: the hub rebooted, or the monitor was killed.
    return {"state": "exited", "pid": pid, "exit_code": None, "log_size": log_size}


def _abandoned(job_dir: str) -> bool:
    """Whether `job_dir` has no workload, no exit code and no monitor, and is not new."""
    for name in ("pid", "exit_code", "slurm_job_id"):
        if os.path.exists(os.path.join(job_dir, name)):
            return False
    if _alive(os.path.join(job_dir, "monitor.pid")) is not None:
        return False
    try:
        age = time.time() - os.path.getmtime(os.path.join(job_dir, "spec.json"))
    except OSError:
        return False
    return age > _ABANDONED_S


def _print(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _launch(root: str, job_id: str, spec_json: str) -> None:
    spec = json.loads(_SPEC if spec_json == "-" else spec_json)
    job_dir = _job_dir(root, job_id)
    cwd = os.path.expanduser(spec["cwd"])
    if not os.path.isdir(cwd):
        _fail(f"working directory {cwd!r} does not exist on the hub")
    parent = os.path.dirname(job_dir)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    if _abandoned(job_dir):
        # A launcher died between creating the directory and starting its monitor: nothing
        # ran, so move it aside (one of several concurrent launches wins the rename).
        tomb = tempfile.mkdtemp(dir=parent, prefix="." + job_id + ".abandoned.")
        with contextlib.suppress(OSError):
            os.rename(job_dir, os.path.join(tomb, job_id))
        shutil.rmtree(tomb, ignore_errors=True)
    if not os.path.isdir(job_dir):
        staging = tempfile.mkdtemp(dir=parent, prefix="." + job_id + ".")
        _write_atomic(os.path.join(staging, "spec.json"), json.dumps(spec))
        with open(os.path.join(staging, "runner.py"), "w") as handle:
            handle.write(_own_source())
        try:
            # The lock: renaming onto an existing (never empty) job directory fails, so only
            # one of several concurrent launches with this id starts anything.
            os.rename(staging, job_dir)
            owner = True
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            owner = False
        if owner and spec.get("slurm"):
            _submit(job_dir, spec["slurm"])
        elif owner:
            subprocess.Popen(
                [sys.executable, os.path.join(job_dir, "runner.py"), "monitor", job_dir],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
    deadline = time.monotonic() + _LAUNCH_WAIT_S
    while time.monotonic() < deadline:
        if any(
            os.path.exists(os.path.join(job_dir, name))
            for name in ("pid", "exit_code", "slurm_job_id")
        ):
            break
        time.sleep(0.01)
    _print(_status(job_dir))


_SQUEUE_FRESH_S = 5.0
_SLURM_ACTIVE = frozenset({
    "UNKNOWN", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})  # fmt: skip


def _slurm_run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """A Slurm command; in UTC, since Slurm reads and prints times in its client's time zone."""
    try:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False, env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _submit(job_dir: str, slurm: dict[str, object]) -> None:
    """Hand the job to Slurm: the batch script runs the monitor. A job of this name that Slurm
    already has (a launcher killed between `sbatch` and recording its id) is adopted."""
    import shlex

    name = str(slurm.get("job_name") or os.path.basename(job_dir))
    known = _slurm_run(["squeue", "-h", "-n", name, "-o", "%i"])
    ids = known.stdout.split() if known.returncode == 0 else []
    if ids:
        _write_atomic(os.path.join(job_dir, "slurm_job_id"), ids[0])
        return
    script = os.path.join(job_dir, "job.sh")
    runner = os.path.join(job_dir, "runner.py")
    with open(script, "w") as handle:
        handle.write(
            "#!/bin/sh\n# harchos: the job's monitor runs the workload (see runner.py)\n"
            f"exec {shlex.quote(sys.executable)} {shlex.quote(runner)} monitor "
            f"{shlex.quote(job_dir)}\n"
        )
    os.chmod(script, 0o700)
    argv = [str(arg) for arg in slurm["sbatch"]]  # type: ignore[attr-defined]
    argv += [f"--job-name={name}", f"--output={os.path.join(job_dir, 'slurm.out')}", script]
    result = _slurm_run(argv)
    job_id = result.stdout.strip().split(";")[0] if result.returncode == 0 else ""
    if not job_id.isdigit() and not re.match(r"^\d+(_\d+)?$", job_id):
        # Nothing was queued: remove the folder so that a retry submits afresh.
        shutil.rmtree(job_dir, ignore_errors=True)
        reason = (result.stderr.strip().splitlines() or ["no job id"])[-1]
        _fail(f"sbatch refused the job: {reason}")
    _write_atomic(os.path.join(job_dir, "slurm_job_id"), job_id)


def _squeue(slurm_id: str) -> tuple[str, str, str] | None:
    """Slurm's (state, reason, start) of the job; None when Slurm no longer knows it. When
    `squeue` itself fails (the controller is restarting), the state is UNKNOWN: the job is taken
    as still there, and asked about again at the next poll."""
    result = _slurm_run(["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T|%r|%S"])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        return "UNKNOWN", (result.stderr.strip().splitlines() or ["squeue failed"])[-1], ""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    state, reason, start = [*lines[0].split("|"), "", ""][:3]
    return state.strip(), reason.strip(), start.strip()


def _squeue_recent(job_dir: str, slurm_id: str) -> tuple[str, str, str] | None:
    """`_squeue`, answered from the job folder when asked within the last `_SQUEUE_FRESH_S`: a
    supervisor polls every second, and a cluster's controller should not answer that often."""
    path = os.path.join(job_dir, "squeue.json")
    try:
        if time.time() - os.path.getmtime(path) < _SQUEUE_FRESH_S:
            with open(path) as handle:
                kept = json.load(handle)
            return None if kept is None else (str(kept[0]), str(kept[1]), str(kept[2]))
    except (OSError, ValueError, IndexError, TypeError):
        pass
    queued = _squeue(slurm_id)
    if queued is None or queued[0] != "UNKNOWN":
        with contextlib.suppress(OSError):
            _write_atomic(path, json.dumps(queued))
    return queued


def _slurm_status(job_dir: str, slurm_id: str, log_size: int) -> dict[str, object]:
    code = _read(os.path.join(job_dir, "exit_code"))
    if code:
        return {"state": "exited", "pid": None, "exit_code": int(code), "log_size": log_size}
    queued = _squeue_recent(job_dir, slurm_id)
    if queued is not None and queued[0] in _SLURM_ACTIVE:
        state, reason, start = queued
        begin = start if start not in ("", "N/A", "Unknown") else None
        return {"state": "running", "pid": None, "exit_code": None, "log_size": log_size,
                "queue": {"job_id": slurm_id, "state": state, "reason": reason,
                          "start": begin}}  # fmt: skip
    # Ended: the monitor wrote its exit code before the job ended, unless the job never ran
    # (cancelled while pending, a node failure) or the shared filesystem is behind.
    for _ in range(20):
        code = _read(os.path.join(job_dir, "exit_code"))
        if code:
            return {"state": "exited", "pid": None, "exit_code": int(code), "log_size": log_size}
        time.sleep(0.05)
    return {"state": "exited", "pid": None, "exit_code": None, "log_size": log_size,
            "queue": {"job_id": slurm_id, "state": queued[0] if queued else "GONE",
                      "reason": queued[1] if queued else "", "start": None}}  # fmt: skip


def _slurm_signal(job_dir: str, slurm_id: str, number: int) -> None:
    if os.path.exists(os.path.join(job_dir, "exit_code")):
        _print({"sent": False, "to": None})
        return
    queued = _squeue(slurm_id)
    if queued is None or queued[0] not in _SLURM_ACTIVE:
        _print({"sent": False, "to": None})
        return
    started = queued[0] not in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")
    if number == signal.SIGKILL or not started:
        # Nothing to save before it started; SIGKILL ends the allocation and all in it.
        result = _slurm_run(["scancel", slurm_id])
        _print({"sent": result.returncode == 0, "to": "slurm"})
        return
    # harchos asked for this stop: the monitor must not requeue as after a time-limit signal.
    os.makedirs(os.path.join(job_dir, "control"), mode=0o700, exist_ok=True)
    _write_atomic(os.path.join(job_dir, "control", "stop_requested"), str(number))
    name = signal.Signals(number).name[3:]  # SIGUSR1 -> USR1
    result = _slurm_run(["scancel", "--batch", f"--signal={name}", slurm_id])
    _print({"sent": result.returncode == 0, "to": "batch"})


def _own_source() -> str:
    if _SOURCE:
        return _SOURCE
    with open(os.path.abspath(__file__)) as handle:
        return handle.read()


def _monitor(job_dir: str) -> None:
    # The workload runs in its own session; these handlers (reset on exec, unlike SIG_IGN) keep
    # the monitor alive to record the exit code whatever reaches its own group.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, lambda *_: None)
    slurm_id = _read(os.path.join(job_dir, "slurm_job_id"))
    received: list[int] = []  # Slurm's signals to the batch script, for the workers
    if slurm_id:
        _fresh_run(job_dir)
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: received.append(number))
    _write_atomic(os.path.join(job_dir, "monitor.pid"), str(os.getpid()))
    with open(os.path.join(job_dir, "spec.json")) as handle:
        spec = json.load(handle)
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    secret = [name for name in spec.get("secret_env") or [] if name in env]
    env["HARCHOS_CONTROL_DIR"] = os.path.join(job_dir, "control")
    os.makedirs(os.path.join(job_dir, "control", "workers"), mode=0o700, exist_ok=True)
    argv = spec["argv"]
    machines = int((spec.get("slurm") or {}).get("nodes") or 1)
    if slurm_id and machines > 1:
        argv = _srun_argv(job_dir, machines, env)
    # Workers a launcher leaves behind (it was killed, or died) are re-parented to the monitor
    # rather than to init, so they can be found, stopped and reaped before the exit is recorded.
    _become_subreaper()
    log = open(os.path.join(job_dir, "log"), "ab")  # noqa: SIM115 - held for the job's life
    try:
        process = subprocess.Popen(
            argv,
            cwd=os.path.expanduser(spec["cwd"]),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        log.write(f"harchos: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
        log.close()
        _write_atomic(os.path.join(job_dir, "exit_code"), "127")
        return
    started = _start_time(process.pid)
    _write_atomic(
        os.path.join(job_dir, "pid"),
        str(process.pid) + (" " + started if started else ""),
    )
    if secret:
        # The workload has its environment; the copy on disk keeps only the names.
        spec["env"] = {k: ("" if k in secret else v) for k, v in (spec.get("env") or {}).items()}
        _write_atomic(os.path.join(job_dir, "spec.json"), json.dumps(spec))
    finish_meter = _start_meter(job_dir, spec, env)
    delivered = 0
    while True:
        try:
            code = process.wait(timeout=0.2 if slurm_id else None)
            break
        except InterruptedError:
            continue
        except subprocess.TimeoutExpired:
            delivered = _deliver(job_dir, process.pid, received, delivered)
    _stop_leftovers()
    finish_meter()
    code = 128 - code if code < 0 else code
    recorded = _outcome(job_dir, code)
    if slurm_id and _time_limit_stop(job_dir, recorded, received):
        log.write(b"harchos: Slurm's time limit is near: the job saved a checkpoint; requeued to "
                  b"resume from it\n")  # fmt: skip
        log.flush()
        requeued = _slurm_run(["scontrol", "requeue", slurm_id])
        if requeued.returncode == 0:
            log.close()
            return  # no exit code: the requeued job runs this monitor again
        log.write(f"harchos: scontrol requeue failed ({requeued.stderr.strip()}); recorded as "
                  "paused\n".encode())  # fmt: skip
    log.close()
    if recorded != code:
        _write_atomic(os.path.join(job_dir, "launcher_exit_code"), str(code))
    _write_atomic(os.path.join(job_dir, "exit_code"), str(recorded))


# The values `node` fills in, each after its flag (harchos_cli.jobs.launchers.SLURM_SLOTS).
_NODE_SLOTS = {
    "--machine_rank": "{SLURM_PROCID}",
    "--main_process_ip": "{FIRST_NODE_ADDRESS}",
    "--main_process_port": "{JOB_PORT}",
}


def _srun_argv(job_dir: str, machines: int, env: dict[str, str]) -> list[str]:
    """One `node` task on each of the job's machines. The batch script runs on the first
    machine, where task 0 (the main process) runs too: its address as Slurm knows it and a port
    free here now reach every task through the environment `srun` passes on."""
    host = os.environ.get("SLURMD_NODENAME", "")
    shown = _slurm_run(["scontrol", "-o", "show", "node", host]) if host else None
    said = shown.stdout if shown and shown.returncode == 0 else ""
    found = re.search(r"\bNodeAddr=(\S+)", said)
    env["HARCHOS_FIRST_NODE_ADDRESS"] = found.group(1) if found else (host or "127.0.0.1")
    env["HARCHOS_JOB_PORT"] = str(_free_port(0))
    return [
        "srun", f"--nodes={machines}", f"--ntasks={machines}", "--ntasks-per-node=1",
        "--label", sys.executable, os.path.join(job_dir, "runner.py"), "node", job_dir,
    ]  # fmt: skip


def _node(job_dir: str) -> None:
    received: list[int] = []
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: received.append(number))
    with open(os.path.join(job_dir, "spec.json")) as handle:
        argv = list(json.load(handle)["argv"])
    values = {
        "{SLURM_PROCID}": os.environ.get("SLURM_PROCID", "0"),
        "{FIRST_NODE_ADDRESS}": os.environ.get("HARCHOS_FIRST_NODE_ADDRESS", "127.0.0.1"),
        "{JOB_PORT}": os.environ.get("HARCHOS_JOB_PORT", "29500"),
    }
    for index in range(1, len(argv)):
        if _NODE_SLOTS.get(argv[index - 1]) == argv[index]:
            argv[index] = values[argv[index]]
    _become_subreaper()
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True
        )
    except OSError as exc:
        print(f"harchos: cannot start {argv[0]!r}: {exc}", flush=True)
        sys.exit(127)
    delivered = 0
    while True:
        try:
            code = process.wait(timeout=0.2)
            break
        except InterruptedError:
            continue
        except subprocess.TimeoutExpired:
            delivered = _deliver(job_dir, process.pid, received, delivered)
    _stop_leftovers()
    sys.exit(128 - code if code < 0 else code)


def _fresh_run(job_dir: str) -> None:
    """A requeued Slurm job runs its monitor again in the same folder: forget the last run's
    workload, workers and stop request (the log and the meter's samples go on)."""
    control = os.path.join(job_dir, "control")
    for path in (os.path.join(job_dir, "pid"), os.path.join(job_dir, "launcher_exit_code"),
                 os.path.join(control, "stop_requested")):  # fmt: skip
        with contextlib.suppress(OSError):
            os.remove(path)
    workers = _workers_dir(job_dir)
    for name in os.listdir(workers) if os.path.isdir(workers) else []:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(workers, name))


def _deliver(job_dir: str, pid: int, received: list[int], delivered: int) -> int:
    """Pass the signals Slurm sent the batch script on to the workload's workers (a SIGUSR1
    waits until the workers registered, as the `signal` command does); how many are done."""
    while delivered < len(received):
        number = received[delivered]
        if number == signal.SIGUSR1 and not _workers(job_dir) and _age(job_dir) < _REGISTER_GRACE_S:
            return delivered
        workers, groups = _targets(job_dir, pid, number)
        for worker in workers:
            with contextlib.suppress(OSError):
                os.kill(worker, number)
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, number)
        delivered += 1
    return delivered


def _time_limit_stop(job_dir: str, code: int, received: list[int]) -> bool:
    """Whether the workload saved and exited because Slurm's time limit is near (its USR1),
    rather than because harchos asked (which writes `control/stop_requested` first)."""
    asked = os.path.exists(os.path.join(job_dir, "control", "stop_requested"))
    return code == _PAUSED_EXIT_CODE and signal.SIGUSR1 in received and not asked


def _become_subreaper() -> None:
    """Linux's PR_SET_CHILD_SUBREAPER, best effort (elsewhere orphans go to init as before)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _workers_dir(job_dir: str) -> str:
    return os.path.join(job_dir, "control", "workers")


def _workers(job_dir: str) -> list[int]:
    """The pids registered under `control/workers/` (the training contract)."""
    try:
        names = os.listdir(_workers_dir(job_dir))
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def _outcome(job_dir: str, code: int) -> int:
    """The exit code to record: a pause confirmed by every registered worker is a pause."""
    if code in (0, _PAUSED_EXIT_CODE):
        return code
    workers = _workers(job_dir)
    folder = _workers_dir(job_dir)
    if workers and all(os.path.exists(os.path.join(folder, f"{pid}.paused")) for pid in workers):
        return _PAUSED_EXIT_CODE
    return code


def _children() -> dict[int, list[int]]:
    """pid -> child pids, from /proc (Linux); empty elsewhere."""
    tree: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return tree
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if stat is None:
            continue
        try:
            parent = int(stat.rsplit(")", 1)[-1].split()[1])
        except (IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree = _children()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def _stop_leftovers() -> None:
    """Stop what the workload left running (orphaned workers now re-parented here): SIGTERM,
    which the training contract answers by saving and exiting, then SIGKILL after a grace."""
    me = os.getpid()
    leftovers = _descendants(me)
    if not leftovers:
        return
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _LEFTOVER_GRACE_S
    while time.monotonic() < deadline and _reap_all(me):
        time.sleep(0.1)
    for pid in _descendants(me):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not _reap_all(me):
            break
        time.sleep(0.05)


def _reap_all(me: int) -> bool:
    """Reap exited children; True while descendants remain."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    return bool(_descendants(me))


_METER_INTERVAL_S = 10.0
# CodeCarbon's fallback constant when a CPU's TDP is unknown.
_DEFAULT_CPU_TDP_W = 85.0
_METER_JOIN_S = 15.0  # the final sample may wait this long (nvidia-smi has a 5 s timeout)


def _optional(module: str) -> object | None:
    """`module` when the hub's Python can import it (pynvml, psutil), else None."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception:  # a broken install (or driver) is as good as none
        return None


def _tree_cpu_seconds(psutil: Any) -> tuple[float, set[int]]:
    """CPU seconds the job used so far, and the pids of its live process tree.

    The tree is every descendant of this monitor (the workload, its children, and the orphans
    re-parented here as subreaper). Each live member counts its own time and that of the children
    it reaped; what this monitor reaped counts through its own children's times. Those are read
    first: a process reaped between the two reads is missed for one sample, never counted twice.
    """
    reaped = os.times()
    total = reaped.children_user + reaped.children_system
    me = os.getpid()
    if psutil is not None:
        pids: set[int] = set()
        for child in psutil.Process(me).children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            pids.add(child.pid)
            total += times.user + times.system + times.children_user + times.children_system
        return total, pids
    tick = float(os.sysconf("SC_CLK_TCK"))
    members = _descendants(me)
    for pid in members:
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 12 to 15 after the name
        total += sum(int(value) for value in fields[11:15]) / tick
    return total, set(members)


def _machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    line = (_read("/proc/stat") or "").splitlines()[0].split()
    ticks = [int(value) for value in line[1:9]]  # guest time is already inside user
    return (sum(ticks) - ticks[3] - ticks[4]) / float(os.sysconf("SC_CLK_TCK"))


def _rapl_packages(root: str) -> list[str]:
    """The top-level RAPL zones (one a CPU package; `intel-rapl:N`, not the `intel-rapl:N:M`
    sub-zones inside them, which the package already counts), readable now; [] without."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    zones = [os.path.join(root, name) for name in names if re.match(r"^intel-rapl:\d+$", name)]
    for zone in zones:
        try:
            _read_int(os.path.join(zone, "energy_uj"))
            _read_int(os.path.join(zone, "max_energy_range_uj"))
        except (OSError, ValueError):
            return []
    return zones


def _read_int(path: str) -> int:
    with open(path) as handle:
        return int(handle.read().strip())


def _visible_gpus(env: dict[str, str], pynvml: Any) -> list[int] | None:
    """The GPU indices `CUDA_VISIBLE_DEVICES` gives the job (UUIDs through pynvml), or None
    when it is unset (all GPUs)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    indices: list[int] = []
    for entry in value.split(","):
        token = entry.strip()
        if not token:
            continue
        if token.lstrip("-").isdigit():
            if int(token) < 0:
                break  # CUDA stops at the first invalid entry
            indices.append(int(token))
        elif pynvml is not None:
            with contextlib.suppress(Exception):
                handle = pynvml.nvmlDeviceGetHandleByUUID(token)
                indices.append(int(pynvml.nvmlDeviceGetIndex(handle)))
    return indices


class _Meter:
    """Energy of one job: GPUs through NVML (its energy counter, else its power reading) or
    `nvidia-smi` power sampling; CPU through RAPL shared out by the job's part of the busy CPU
    time, else estimated from the TDP per logical CPU and the job's CPU time."""

    def __init__(self, meter: dict[str, Any], env: dict[str, str]) -> None:
        self.interval_s = float(meter.get("interval_s", _METER_INTERVAL_S))
        if not self.interval_s > 0:
            raise ValueError(f"meter interval_s must be positive, not {self.interval_s}")
        tdp = meter.get("cpu_tdp_w")
        self.psutil: Any = _optional("psutil")
        self.rapl = _rapl_packages(os.environ.get("HARCHOS_POWERCAP_ROOT") or "/sys/class/powercap")
        self.cpu_tdp_w = None if self.rapl else float(tdp or _DEFAULT_CPU_TDP_W)
        self.cpus = os.cpu_count() or 1
        self.gpu_source: str | None = None
        self.gpus: list[int] = []
        self.gpu_names: list[str] = []
        self.handles: list[Any] = []
        self.pynvml: Any = _optional("pynvml")
        self.smi_children_s = 0.0  # nvidia-smi runs as this monitor's child: not the job's
        self._open_gpus(env)
        self.gpu_j: float | None = 0.0 if self.gpu_source else None
        self.cpu_j = 0.0
        self.shared_gpu = False
        self.at = time.monotonic()
        self.job_cpu_s = 0.0  # all the tree's CPU time is the job's, from its first moment
        self.busy_s = _machine_busy_seconds() if self.rapl else 0.0
        self.package_uj = self._package_counters()
        self.gpu_reading = self._gpu_reading()

    def _open_gpus(self, env: dict[str, str]) -> None:
        pynvml = self.pynvml
        wanted = _visible_gpus(env, pynvml)
        if pynvml is not None:
            try:
                pynvml.nvmlInit()
                count = int(pynvml.nvmlDeviceGetCount())
                self.gpus = [i for i in (range(count) if wanted is None else wanted) if i < count]
                self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.gpus]
                names = [pynvml.nvmlDeviceGetName(handle) for handle in self.handles]
                self.gpu_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            except Exception:
                self.handles, self.gpus, self.gpu_names = [], [], []
            else:
                if not self.handles:
                    return
                try:
                    for handle in self.handles:
                        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    self.gpu_source = "nvml-energy"
                except Exception:  # pre-Volta GPUs have no energy counter
                    self.gpu_source = "nvml-power"
                return
        readings = self._smi("index,name")
        if readings:
            rows = [(int(row[0]), ", ".join(row[1:])) for row in readings if row[0].isdigit()]
            chosen = [row for row in rows if wanted is None or row[0] in wanted]
            self.gpus = [index for index, _ in chosen]
            self.gpu_names = [name for _, name in chosen]
            if self.gpus and self._smi_watts() is not None:
                self.gpu_source = "nvidia-smi"
            else:
                self.gpus, self.gpu_names = [], []

    def _smi(self, fields: str) -> list[list[str]]:
        before = os.times()
        try:
            out = _smi_query(fields)
        finally:
            after = os.times()
            self.smi_children_s += (after.children_user + after.children_system) - (
                before.children_user + before.children_system
            )
        if out is None:
            return []
        return [[part.strip() for part in line.split(",")] for line in out.splitlines() if line]

    def _smi_watts(self) -> float | None:
        watts = 0.0
        rows = {row[0]: row[1] for row in self._smi("index,power.draw") if len(row) == 2}
        for index in self.gpus:
            try:
                watts += float(rows[str(index)])
            except (KeyError, ValueError):  # "[N/A]": this GPU reports no power
                return None
        return watts

    def _gpu_reading(self) -> float | None:
        """Millijoules on the energy counters (nvml-energy), else watts drawn now."""
        if self.gpu_source == "nvml-energy":
            return float(
                sum(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles)
            )
        if self.gpu_source == "nvml-power":
            return float(sum(self.pynvml.nvmlDeviceGetPowerUsage(h) for h in self.handles)) / 1e3
        if self.gpu_source == "nvidia-smi":
            watts = self._smi_watts()
            if watts is None:
                raise RuntimeError("nvidia-smi stopped reporting power.draw")
            return watts
        return None

    def _package_counters(self) -> list[int]:
        return [_read_int(os.path.join(zone, "energy_uj")) for zone in self.rapl]

    def _job_cpu(self) -> tuple[float, set[int]]:
        seconds, pids = _tree_cpu_seconds(self.psutil)
        return seconds - self.smi_children_s, pids

    def _gpu_pids(self) -> set[int]:
        pids: set[int] = set()
        for handle in self.handles:
            with contextlib.suppress(Exception):
                pids.update(p.pid for p in self.pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        return pids

    def line(self, first: bool = False) -> dict[str, Any]:
        """One sample: the first (zeros), or what was used since the last one."""
        now = time.monotonic()
        elapsed = max(now - self.at, 1e-9)
        gpu_w: float | None = None
        cpu_w = 0.0
        if not first:
            job_cpu_s, pids = self._job_cpu()
            # Cumulative and never falling: a reap between the two reads must not look negative.
            used_s = max(job_cpu_s - self.job_cpu_s, 0.0)
            self.job_cpu_s = max(job_cpu_s, self.job_cpu_s)
            if self.rapl:
                counters = self._package_counters()
                package_j = 0.0
                for zone, old, new in zip(self.rapl, self.package_uj, counters):  # noqa: B905 - 3.8
                    wrap = _read_int(os.path.join(zone, "max_energy_range_uj"))
                    package_j += ((new - old) if new >= old else (new + wrap - old)) / 1e6
                self.package_uj = counters
                busy_s = _machine_busy_seconds()
                busy_delta = busy_s - self.busy_s
                self.busy_s = busy_s
                share = min(used_s / busy_delta, 1.0) if busy_delta > 0 else 0.0
                cpu_delta_j = package_j * share
            else:
                cpu_delta_j = used_s * (self.cpu_tdp_w or 0.0) / self.cpus
            self.cpu_j += cpu_delta_j
            cpu_w = cpu_delta_j / elapsed
            if self.gpu_source is not None and self.gpu_j is not None:
                reading = self._gpu_reading()
                assert reading is not None
                assert self.gpu_reading is not None
                if self.gpu_source == "nvml-energy":
                    gpu_delta_j = (reading - self.gpu_reading) / 1000.0
                else:  # the mean of the two power readings around the interval
                    gpu_delta_j = (reading + self.gpu_reading) / 2.0 * elapsed
                self.gpu_reading = reading
                self.gpu_j += gpu_delta_j
                gpu_w = gpu_delta_j / elapsed
                if self.handles and not self.shared_gpu:
                    others = self._gpu_pids() - pids - {os.getpid()}
                    self.shared_gpu = bool(others)
            self.at = now
        elif self.gpu_source is not None:
            gpu_w = 0.0
        return {
            "t": time.time(),
            "gpu_j": self.gpu_j,
            "cpu_j": self.cpu_j,
            "gpu_w": gpu_w,
            "cpu_w": cpu_w,
            "gpu_source": self.gpu_source,
            "cpu_source": "rapl" if self.rapl else "tdp-estimate",
            "gpus": self.gpus,
            "gpu_names": self.gpu_names,
            "shared_gpu": self.shared_gpu,
            "cpu_tdp_w": self.cpu_tdp_w,
        }


def _append_line(path: str, obj: object) -> None:
    # One write of a whole line to an O_APPEND file: a reader sees a part line only at the end.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    finally:
        os.close(fd)


def _run_meter(path: str, meter: dict[str, Any], env: dict[str, str], stop: Any) -> None:
    """The sampler thread: a line at the start, one every interval, a last one once `stop` is
    set. Whatever fails is written once as an `error` line and ends sampling, never the job."""
    try:
        sampler = _Meter(meter, env)
        _append_line(path, sampler.line(first=True))
        while not stop.wait(sampler.interval_s):
            _append_line(path, sampler.line())
        _append_line(path, sampler.line())
    except Exception as exc:
        with contextlib.suppress(Exception):
            _append_line(path, {"t": time.time(), "error": f"{type(exc).__name__}: {exc}"})


def _start_meter(job_dir: str, spec: dict[str, Any], env: dict[str, str]) -> Callable[[], None]:
    """Start sampling when the spec asks for it; returns what takes the last sample and stops."""
    meter = spec.get("meter")
    # Checked without converting: nothing here may raise before the workload's exit is recorded.
    if not isinstance(meter, dict) or not meter.get("interval_s", _METER_INTERVAL_S):
        return lambda: None
    import threading

    stop = threading.Event()
    thread = threading.Thread(
        target=_run_meter,
        args=(os.path.join(job_dir, "meter.jsonl"), meter, env, stop),
        name="harchos-meter",
        daemon=True,
    )
    try:
        thread.start()
    except RuntimeError:  # no thread to be had: the job runs unmetered
        return lambda: None

    def finish() -> None:
        stop.set()
        thread.join(_METER_JOIN_S)

    return finish


def _log(root: str, job_id: str, offset: str, limit: str, name: str = "log") -> None:
    path = os.path.join(_job_dir(root, job_id), name)
    try:
        with open(path, "rb") as handle:
            handle.seek(int(offset))
            data = handle.read(int(limit))
    except OSError:
        data = b""
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _meter(root: str, job_id: str, offset: str, limit: str) -> None:
    _log(root, job_id, offset, limit, name="meter.jsonl")


def _signal(root: str, job_id: str, signum: str) -> None:
    job_dir = _job_dir(root, job_id)
    slurm_id = _read(os.path.join(job_dir, "slurm_job_id"))
    if slurm_id:
        _slurm_signal(job_dir, slurm_id, int(signum))
        return
    if os.path.exists(os.path.join(job_dir, "exit_code")):
        _print({"sent": False, "to": None})
        return
    pid = _alive(os.path.join(job_dir, "pid"))
    if pid is None:
        _print({"sent": False, "to": None})
        return
    number = int(signum)
    if number == signal.SIGUSR1 and not _workers(job_dir) and _age(job_dir) < _REGISTER_GRACE_S:
        _print({"sent": False, "to": "pending"})  # ask again once the workers registered
        return
    workers, groups = _targets(job_dir, pid, number)
    sent = False
    for worker in workers:
        with contextlib.suppress(OSError):
            os.kill(worker, number)
            sent = True
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, number)
            sent = True
    _print({"sent": sent, "to": "workers" if workers and not groups else "groups"})


def _terminate(root: str, job_id: str, signum: str) -> None:
    job_dir = _job_dir(root, job_id)
    pid = (
        None
        if os.path.exists(os.path.join(job_dir, "exit_code"))
        else _alive(os.path.join(job_dir, "pid"))
    )
    sent = False
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, int(signum))
            sent = True
    _print({"sent": sent})


def _age(job_dir: str) -> float:
    """Seconds since the workload started (its pid file was written)."""
    try:
        return time.time() - os.path.getmtime(os.path.join(job_dir, "pid"))
    except OSError:
        return 0.0


def _targets(job_dir: str, pid: int, signum: int) -> tuple[list[int], list[int]]:
    """Whom a signal for the workload reaches: (pids, process groups).

    A launcher (`accelerate launch`, torchrun) dies of SIGUSR1 and turns SIGTERM into its own
    exit, while its workers sit in process groups of their own. So the signal goes to the
    workers registered under `control/workers/` (those alive in the workload's tree); without
    any, to the process groups of the workload's descendants other than its own, or, when
    there are none, to the workload's group (a plain `python train.py`). SIGKILL reaches every
    group of the tree.
    """
    tree = [pid, *_descendants(pid)]
    if signum == signal.SIGKILL:
        groups = {pid}
        for member in tree:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(member))
        return [], sorted(groups)
    workers = [worker for worker in _workers(job_dir) if worker in tree]
    if workers:
        return workers, []
    groups = set()
    for member in tree[1:]:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(member))
    groups.discard(pid)
    return [], sorted(groups) or [pid]


def _digest(folder: str) -> None:
    import hashlib

    root = os.path.expanduser(folder)
    if not os.path.isdir(root):
        _fail(f"no folder {root!r} on the hub")
    sums: dict[str, str] = {}
    for here, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(here, name)
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            sums[os.path.relpath(path, root)] = digest.hexdigest()
    _print(sums)


def _free_port(first: int) -> int | None:
    import socket

    for port in [0] if first == 0 else range(first, min(first + 1000, 65536)):
        # Bound on every interface, as torch's rendezvous store and vLLM bind it.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    return None


def _port(start: str) -> None:
    first = int(start)
    port = _free_port(first)
    if port is None:
        _fail(f"no free port from {first} to {first + 999}")
    _print({"port": port})


def _smi_query(fields: str) -> str | None:
    """`nvidia-smi --query-gpu=FIELDS` as CSV rows; None without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        return subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return None


def _gpus() -> list[dict[str, object]]:
    out = _smi_query("name,memory.total")
    if out is None:
        return []
    gpus: list[dict[str, object]] = []
    for line in out.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            try:
                mib: object = int(float(memory.strip()))
            except ValueError:
                mib = None
            gpus.append({"name": name.strip(), "memory_mib": mib})
    return gpus


def _findable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _writable(workdir: str) -> bool:
    """Whether WORKDIR exists as a folder harchos can write in, or could be made: its nearest
    existing ancestor is a folder a file can be created in (tried, since permission bits say
    nothing to root or of a read-only filesystem)."""
    path = workdir
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return False
    try:
        probe = tempfile.mkdtemp(dir=path, prefix=".harchos-check-")
    except OSError:
        return False
    os.rmdir(probe)
    return True


def _info(workdir: str) -> None:
    wanted = os.path.expanduser(workdir)
    path = wanted
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    usage = shutil.disk_usage(path or "/")
    _print(
        {
            "python": ".".join(str(part) for part in sys.version_info[:3]),
            "executable": sys.executable,
            "home": os.path.expanduser("~"),
            "gpus": _gpus(),
            "free_disk_gb": round(usage.free / 1e9, 2),
            "disk_path": path,
            "workdir_writable": _writable(wanted),
            "accelerate": _findable("accelerate"),
            "rsync": shutil.which("rsync") is not None,
        }
    )


_SOURCE = ""
_SPEC = ""


def main(argv: list[str], source: str = "", spec: str = "") -> None:
    """Dispatch one command; see the module docstring.

    Sent on stdin, this file has no path of its own, so the sender appends a call passing its
    text as `source` (the monitor runs from a copy in the job directory), and a launch's `spec`.
    """
    global _SOURCE, _SPEC  # set once, before anything reads them
    _SOURCE, _SPEC = source, spec
    commands: dict[str, tuple[Callable[..., None], int]] = {
        "launch": (_launch, 3),
        "status": (lambda root, job_id: _print(_status(_job_dir(root, job_id))), 2),
        "log": (_log, 4),
        "meter": (_meter, 4),
        "signal": (_signal, 3),
        "terminate": (_terminate, 3),
        "info": (_info, 1),
        "digest": (_digest, 1),
        "port": (_port, 1),
        "monitor": (_monitor, 1),
        "node": (_node, 1),
    }
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        names = "|".join(commands)
        _fail(f"usage: {names} ARGS (got {argv!r})")
    function, _ = commands[argv[0]]
    function(*argv[1:])


if __name__ == "__main__" and sys.argv[0] != "-":
    main(sys.argv[1:])
