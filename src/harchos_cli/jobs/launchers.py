"""The exact command lines harchos starts on a hub.

Training runs under `accelerate launch` with flags that fit the hub: one process per GPU the job
asks for, or on a CPU-only run `--cpu` (one process) or `--multi_gpu --num_processes N` over gloo
with `ACCELERATE_USE_CPU=true` (N from `[job] processes`). accelerate is started as
`PYTHON -m accelerate.commands.launch`, so the hub's Python decides which accelerate runs, and no
PATH on the hub matters.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from harchos_cli.errors import UsageError
from harchos_cli.hubs.base import Hub, in_place
from harchos_cli.jobs.spec import JobTable, Project

DEFAULT_TRAIN_COMMAND = "accelerate launch train.py"
ACCELERATE_MODULE = "accelerate.commands.launch"
# The job's own files and what never travels (mirrors the transport's sync rules).
ALWAYS_IGNORED = (".git", ".hg", ".svn", "__pycache__", ".venv", ".harchos")


@dataclass(frozen=True)
class Command:
    """What to start on the hub: argv (never through a shell) and extra environment."""

    argv: list[str]
    env: dict[str, str]
    note: str | None = None


def hub_python(hub: Hub, project_root: Path) -> str:
    """The Python to run the workload with: on this machine a project's own `.venv` wins."""
    if in_place(hub):
        venv = project_root / ".venv" / "bin" / "python"
        if venv.is_file() and os.access(venv, os.X_OK):
            return str(venv)
    return hub.python


@dataclass(frozen=True)
class NodeRank:
    """This launch's place in a multi-node job: `rank` of `machines`, all rendezvousing at the
    main node's `address:port`."""

    machines: int
    rank: int
    address: str
    port: int
    in_slurm: bool = False  # placed by Slurm: each machine fills in its own (see `slurm`)

    @classmethod
    def slurm(cls, machines: int) -> NodeRank:
        """Every machine of a multi-node job inside a Slurm cluster: one command line, in which
        the hub runner on each machine puts its rank (`SLURM_PROCID`), the first machine's
        address and the job's port in place of the `SLURM_SLOTS` values."""
        return cls(machines, 0, "", 0, in_slurm=True)

    def flags(self) -> list[str]:
        if self.in_slurm:
            rank, address, port = (SLURM_SLOTS[flag] for flag in SLURM_SLOTS)
        else:
            rank, address, port = str(self.rank), self.address, str(self.port)
        return [
            "--num_machines", str(self.machines), "--machine_rank", rank,
            "--main_process_ip", address, "--main_process_port", port,
        ]  # fmt: skip


# The values a machine of a Slurm multi-node job fills in (the hub runner's `node` command keeps
# the same table: it follows each flag in harchos's part of the command line).
SLURM_SLOTS = {
    "--machine_rank": "{SLURM_PROCID}",
    "--main_process_ip": "{FIRST_NODE_ADDRESS}",
    "--main_process_port": "{JOB_PORT}",
}


def accelerate_flags(
    job: JobTable, hub: Hub, node: NodeRank | None = None
) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` flags and environment for `job` on `hub`; with `node`, one machine
    of a multi-node launch (`--num_processes` counts every machine's processes)."""
    machines = node.machines if node else 1
    where = node.flags() if node else ["--num_machines", "1"]
    if job.gpus > 0:
        if hub.gpus is not None and hub.gpus < job.gpus:
            raise UsageError(
                f"the job needs {job.gpus} GPU(s) but hub {hub.name!r} has {hub.gpus}",
                hint="pick another --hub, use --hub auto, or lower [job] gpus in harchos.toml",
            )
        total = job.gpus * machines
        flags = [*where, "--num_processes", str(total)]
        if total > 1:
            flags.insert(0, "--multi_gpu")
        return [*flags, "--dynamo_backend", "no"], {}
    common = [*where, "--mixed_precision", "no", "--dynamo_backend", "no"]
    total = job.processes * machines
    if total == 1:
        return ["--cpu", "--num_processes", "1", *common], {}
    # `--cpu` would start one process; two or more run as a gloo group on the CPU.
    flags = ["--multi_gpu", "--num_processes", str(total), *common]
    return flags, {"ACCELERATE_USE_CPU": "true"}


def split_command(command: str | Sequence[str] | None, default: str) -> list[str]:
    """`[job] command` as argv (a string is split like a POSIX shell would, never run by one)."""
    if command is None:
        command = default
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise UsageError(
            "[job] command is empty", hint='e.g. command = "accelerate launch train.py"'
        )
    return argv


def train_command(
    project: Project, hub: Hub, args: Sequence[str], node: NodeRank | None = None
) -> Command:
    """The training command for `project` on `hub` (as machine `node` of a multi-node job),
    with the user's extra `args` at the end."""
    job = project.spec.job
    argv = split_command(job.command, DEFAULT_TRAIN_COMMAND)
    python = hub_python(hub, project.root)
    if argv[:2] == ["accelerate", "launch"]:
        rest = argv[2:]
    elif Path(argv[0]).name.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        rest = argv[1:]
    elif node is not None:
        raise UsageError(
            f"multi-node training runs under accelerate launch; [job] command is {argv[0]!r}",
            hint='use command = "accelerate launch train.py" (or "python train.py")',
        )
    else:
        return Command([*argv, *args], dict(job.env), "not an accelerate command: run as it is")
    flags, env = accelerate_flags(job, hub, node)
    # Flags in [job] command come after harchos's, so a value given there wins.
    return Command([python, "-m", ACCELERATE_MODULE, *flags, *rest, *args], {**env, **job.env})


def missing_launcher(project: Project, hub: Hub) -> str | None:
    """Why the project's training could not start on `hub`, or None: its Python (the project's
    `.venv` here) must find `accelerate`. Asked before a job waits, so that a green window is not
    waited for in vain. Not asked (None) where `[job] setup` may install it first, or when the
    hub cannot be reached now (the job's own retries handle that)."""
    from harchos_cli.errors import HubError

    job = project.spec.job
    argv = split_command(job.command, DEFAULT_TRAIN_COMMAND)
    wraps = argv[:2] == ["accelerate", "launch"] or (
        Path(argv[0]).name.startswith("python") and len(argv) > 1 and argv[1].endswith(".py")
    )
    if not wraps or (job.setup and not in_place(hub)):
        return None
    from harchos_cli.hubs import transport_for

    python = hub_python(hub, project.root)
    probe = (
        "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('accelerate') else 3)"
    )
    try:
        result = transport_for(hub).run([python, "-c", probe], check=False, timeout=60)
    except HubError:
        return None
    if result.returncode == 3:
        return f"{python} on hub {hub.name} cannot import accelerate, which runs the training"
    if result.returncode == 127:
        return f"there is no {python} on hub {hub.name}"
    return None


def batch_command(project: Project, argv: Sequence[str]) -> Command:
    """`harchos run batch -- CMD ARGS...`, or `[job] command` when no command is given."""
    if argv:
        return Command(list(argv), dict(project.spec.job.env))
    if project.spec.job.command is None:
        raise UsageError(
            "no command to run",
            hint="give one after --: harchos run batch -- python pipeline.py",
        )
    return Command(split_command(project.spec.job.command, ""), dict(project.spec.job.env))


def job_env(*, job_id: str, hub: str, region: str | None, checkpoint_dir: str) -> dict[str, str]:
    """The environment of the training contract (DESIGN.md), plus unbuffered Python output so
    the log streams as it is written."""
    return {
        "HARCHOS_JOB_ID": job_id,
        "HARCHOS_HUB": hub,
        "HARCHOS_REGION": region or "",
        "HARCHOS_CHECKPOINT_DIR": checkpoint_dir,
        "PYTHONUNBUFFERED": "1",
    }


def checkpoint_dir(remote_project: str, project: Project, run_id: str) -> str:
    """The run's checkpoint folder, under the project's `[job] checkpoint_dir` on the hub.

    It belongs to the training run, not to one job: a job started after a cancel or a failure
    (same run id) resumes from it, and `harchos run train --fresh` starts a run of its own."""
    base = project.spec.job.checkpoint_dir.rstrip("/") or "checkpoints"
    if base.startswith(("/", "~")):
        return f"{base}/{run_id}"
    return f"{remote_project.rstrip('/')}/{base}/{run_id}"


def with_scale(project: Project, workers: int | None) -> Project:
    """`project` with the job run on `workers` GPUs (or processes on a CPU job), for a rescale."""
    if workers is None:
        return project
    job = project.spec.job
    update = {"gpus": workers} if job.gpus > 0 else {"processes": workers}
    spec = project.spec.model_copy(update={"job": job.model_copy(update=update)})
    return replace(project, spec=spec)


def setup_argv(remote_project: str, setup: str) -> list[str]:
    """`[job] setup` is the user's own shell command: run by `sh` in the project folder, with the
    folder passed as an argument rather than pasted into the script."""
    return ["sh", "-c", 'cd -- "$1" && exec sh -c "$2"', "harchos-setup", remote_project, setup]


def setup_marker_argv(
    remote_project: str, digest: str, action: Literal["check", "record"]
) -> list[str]:
    """Check (exit 0: done) or record that setup ran for `digest` in this project folder:
    `<project>/.harchos/setup-<digest>` on the hub, in a folder git and the sync ignore."""
    scripts = {
        "check": 'test -e "$1/.harchos/setup-$2"',
        "record": 'mkdir -p -- "$1/.harchos" && printf "*\\n" > "$1/.harchos/.gitignore" '
        '&& : > "$1/.harchos/setup-$2"',
    }
    return ["sh", "-c", scripts[action], "harchos-setup", remote_project, digest]


# `[job] setup` under the project folder's lock on the hub (`sh -c SCRIPT harchos-setup FOLDER
# DIGEST SETUP`). POSIX sh (dash), with util-linux's `flock` and `setsid`:
# - `flock` on `.harchos/setup.lock`, held by this shell (fd 9) while setup runs, so two
#   harchos runs of one project never run setup at once; the kernel releases it when this
#   shell dies. Under the lock the marker is checked again: the second one skips setup.
# - setup runs in a session of its own, its id (and the boot's) in `.harchos/setup.pid`; a
#   group left there by a holder that died (a `kill -9`) is ended by the next holder.
# - this shell's stdin is a pipe that harchos holds open while setup runs: when harchos dies,
#   the pipe (and the SSH session) closes, and the watcher below ends the setup's group.
_LOCKED_SETUP = r"""
cd -- "$1" || exit
d=.harchos
mkdir -p "$d" && printf '*\n' > "$d/.gitignore" || exit
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$d/setup.lock" || exit
  if ! flock -n 9; then
    echo "harchos: another setup of this project runs on this hub; waiting for it to end" >&2
    flock 9 || exit
  fi
else
  echo "harchos: no flock on this hub: setup runs without its lock" >&2
fi
if [ -e "$d/setup-$2" ]; then
  echo "harchos: setup already done for this content by another harchos run" >&2
  exit 0
fi
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
if [ -s "$d/setup.pid" ]; then
  read -r old oldboot < "$d/setup.pid"
  case $old in
    '' | 0 | 1 | *[!0-9]*) ;;
    *) if [ "$oldboot" = "$boot" ] && kill -0 -"$old" 2>/dev/null; then
         kill -KILL -"$old" 2>/dev/null
         echo "harchos: ended setup process group $old, left running by a harchos that died" >&2
       fi ;;
  esac
fi
rm -f "$d/setup.pid"
exec 8<&0
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c 'printf "%s %s\n" "$$" "$2" > .harchos/setup.pid && exec sh -c "$1"' \
    harchos-setup "$3" "$boot" < /dev/null 8<&- 9>&- &
else
  sh -c 'printf "%s %s\n" "$$" "$2" > .harchos/setup.pid && exec sh -c "$1"' \
    harchos-setup "$3" "$boot" < /dev/null 8<&- 9>&- &
fi
pg=$!
{
  cat > /dev/null 2>&1
  kill -TERM -"$pg" 2>/dev/null || kill -TERM "$pg" 2>/dev/null
  sleep 2
  kill -KILL -"$pg" 2>/dev/null || kill -KILL "$pg" 2>/dev/null
} <&8 > /dev/null 2>&1 9>&- &
watcher=$!
exec 8<&-
wait "$pg"
code=$?
kill "$watcher" 2>/dev/null
rm -f "$d/setup.pid"
if [ "$code" -eq 0 ]; then
  : > "$d/setup-$2" || exit
fi
exit "$code"
"""


def setup_locked_argv(remote_project: str, digest: str, setup: str) -> list[str]:
    """Run `[job] setup` in the project folder on the hub once per `digest`, serialised by a
    lock there and ended when harchos dies (see `_LOCKED_SETUP`): exit 0 when it ran, or
    another harchos run ran it meanwhile, and the marker is recorded; else setup's own exit
    code. Its stdin must stay open while it runs (`run_holding_stdin`)."""
    return ["sh", "-c", _LOCKED_SETUP, "harchos-setup", remote_project, digest, setup]


def content_hash(root: Path, setup: str) -> str:
    """A digest of the project's files (as synced) and the setup command: setup runs once per
    hub and digest."""
    digest = hashlib.sha256(setup.encode())
    for path in _project_files(root):
        rel = path.relative_to(root).as_posix()
        digest.update(b"\0" + rel.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:16]


def _ignore_patterns(root: Path) -> list[str]:
    patterns: list[str] = []
    for name in (".gitignore", ".harchosignore"):
        try:
            lines = (root / name).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        patterns.extend(
            line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))
        )
    return patterns


def _ignored(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        bare = pattern.strip("/")
        if "/" in bare:
            if fnmatch.fnmatch(rel, bare):
                return True
        elif fnmatch.fnmatch(name, bare):
            return True
    return False


def _project_files(root: Path) -> Iterator[Path]:
    patterns = _ignore_patterns(root)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        dirs[:] = sorted(
            d for d in dirs if d not in ALWAYS_IGNORED and not _ignored(prefix + d, True, patterns)
        )
        for name in sorted(files):
            if not _ignored(prefix + name, False, patterns):
                yield here / name


def render(
    argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str:
    """A command as a copy-pasteable shell line (for `--dry-run`; never executed)."""
    parts = [f"{k}={_quote_path(v)}" for k, v in (env or {}).items()]
    # A `~/` path is resolved on the hub before it is used: shown so that a pasted line does too.
    line = " ".join([*parts, *(_quote_path(a) for a in argv)])
    return f"cd {_quote_path(cwd)} && {line}" if cwd else line


def _quote_path(value: str) -> str:
    """Quote for the shell, leaving a leading `~/` outside the quotes so it still expands."""
    if value.startswith("~/"):
        return "~/" + shlex.quote(value[2:])
    return shlex.quote(value)
