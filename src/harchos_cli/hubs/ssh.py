"""The SSH transport: the system OpenSSH client and rsync, as Ansible and SkyPilot use them.

Using the system client means ~/.ssh/config (Host aliases, ProxyJump, User, Port), the agent and
hardware keys all work as they do in the user's own terminal. harchos adds:

- BatchMode (never a prompt), ConnectTimeout, ServerAliveInterval/CountMax;
- connection sharing with a short hashed ControlPath (`/tmp/harchos-<uid>/<12 hex>`; the socket
  path limit is 104-108 bytes) and a short ControlPersist;
- its own known_hosts file (`<data dir>/ssh/known_hosts`), `StrictHostKeyChecking=accept-new` or
  `yes` for strict hubs, never `no`;
- every remote argument quoted with `shlex.quote`, because ssh joins them into one shell line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from harchos_cli import paths
from harchos_cli.errors import HubError
from harchos_cli.hubs.base import HostKeyError, Hub, HubUnreachableError
from harchos_cli.hubs.local import command_failed

CONNECT_TIMEOUT_S = 10
SERVER_ALIVE_INTERVAL_S = 15
SERVER_ALIVE_COUNT_MAX = 4
CONTROL_PERSIST_S = 60
RSYNC_IO_TIMEOUT_S = 120
_SSH_FAILED = 255
_RSYNC_OK = (0, 24)  # 24: source files vanished while copying (editor temp files)
SYNC_MANIFEST = ".harchos/synced"  # in the project's folder on the hub; never synced itself
_ESCAPED = re.compile(r"\\#([0-7]{3})")  # rsync writes unprintable bytes as \#ooo
_CHANGED = "REMOTE HOST IDENTIFICATION HAS CHANGED"
_STRICT_UNKNOWN = ("you have requested strict checking", "No matching host key")
_AUTH = "Permission denied"
# The connection was never (or no longer) up: the command did not run, or its outcome is unknown.
_UNREACHABLE = (
    "Connection refused",
    "Connection timed out",
    "Operation timed out",
    "No route to host",
    "Network is unreachable",
    "Could not resolve hostname",
    "Connection closed",
    "Connection reset",
    "kex_exchange_identification",
    "Broken pipe",
    "Timeout, server",
    "session request failed",
    "mux_client",
    "Control socket",
    "connection unexpectedly closed",
    "unexplained error",
)


def synced_files(itemized: bytes) -> set[str]:
    """The files (not folders) an `rsync -ii --out-format='%i %n'` run sent or found current."""
    names = set()
    for line in itemized.decode(errors="surrogateescape").splitlines():
        flags, name = line[:11], line[12:]  # unchanged files' flags are padded with spaces
        if len(line) > 12 and line[11] == " " and flags[1] != "d":
            names.add(_ESCAPED.sub(_unescape, name))
    return names


def _unescape(match: re.Match[str]) -> str:
    byte = int(match.group(1), 8)
    return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)  # as surrogateescape decodes it


def _protected(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` lies under an anchored folder pattern such as `/checkpoints/`."""
    for pattern in patterns:
        folder = pattern.strip("/")
        if folder and (name == folder or name.startswith(f"{folder}/")):
            return True
    return False


# A copy ends with the harchos that started it: harchos holds the other end of this shell's stdin
# (`run_holding_stdin`), and a watcher stops rsync when it closes (harchos died, even by SIGKILL),
# so the copy of a killed supervisor never runs on beside the next one's.
_WATCHED_COPY = (
    'exec 3<&0; "$@" < /dev/null 3<&- & copy=$!; '
    '{ cat > /dev/null; kill -TERM "$copy" 2>/dev/null; } <&3 > /dev/null 2>&1 & watch=$!; '
    'exec 3<&-; wait "$copy"; code=$?; kill "$watch" 2>/dev/null; exit "$code"'
)


def run_holding_stdin(
    command: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `command` with its stdin a pipe that stays open until it exits, capturing its
    output. The pipe's other end is this process's alone, so it closes when this process dies
    (even by SIGKILL): a command that watches its stdin (`[job] setup`'s lock holder on a hub,
    here or over ssh, which forwards the end of its stdin) learns that harchos is gone.

    Raises:
        subprocess.TimeoutExpired: `timeout` passed (the command is killed).
    """
    process = subprocess.Popen(
        list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=_read_all, args=(process.stdout, out), daemon=True),
        threading.Thread(target=_read_all, args=(process.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        for reader in readers:
            reader.join()
    finally:
        process.stdin.close()
        process.stdout.close()
        process.stderr.close()
    return subprocess.CompletedProcess(list(command), code, b"".join(out), b"".join(err))


def _read_all(stream: IO[bytes], into: list[bytes]) -> None:
    into.append(stream.read())


def known_hosts_file() -> Path:
    """harchos's own known_hosts, beside the state database (moves with `HARCHOS_HOME`)."""
    return paths.data_dir() / "ssh" / "known_hosts"


def control_dir() -> Path | None:
    """`/tmp/harchos-<uid>`, private to this user; None (no sharing) if it cannot be made safe.

    `/tmp`, not the platform's temp dir: macOS's `$TMPDIR` alone eats half the socket path limit.
    """
    path = Path(f"/tmp/harchos-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def _ssh_path(path: Path | str) -> str:
    """A path as an ssh_config value: `%` escaped, quoted when it has spaces."""
    text = str(path).replace("%", "%%")
    if '"' in text:
        raise HubError(f"harchos cannot pass a path containing '\"' to ssh: {text}")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def known_hosts_name(host: str, port: int | None) -> str:
    """How OpenSSH names a host in known_hosts: `host`, or `[host]:port` off port 22."""
    return host if port in (None, 22) else f"[{host}]:{port}"


class SshTransport:
    """`Transport` over the system `ssh` and `rsync`.

    `attempts` tries, with exponential backoff from `backoff_s`, are made when the connection
    could not be set up (the command never ran); a changed host key or refused authentication is
    never retried.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        attempts: int = 3,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        budget_s: float | None = None,
    ) -> None:
        if hub.transport not in ("ssh", "slurm") or not hub.host:
            raise HubError(f"hub {hub.name!r} is not an SSH hub")
        self.hub = hub
        self.connect_timeout_s = connect_timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._sleep = sleep
        # One deadline for every command and retry from now on (`hubs check`'s 10 s promise).
        self.budget_s = budget_s
        self._deadline = None if budget_s is None else time.monotonic() + budget_s
        self.ssh = shutil.which("ssh") or "ssh"
        self._home: str | None = None

    @property
    def host(self) -> str:
        assert self.hub.host is not None
        return self.hub.host

    def control_path(self) -> Path | None:
        """The multiplexing socket for this hub: short, hashed, per harchos state directory."""
        directory = control_dir()
        if directory is None:
            return None
        key = "|".join(
            [
                f"{self.hub.user}@{self.host}:{self.hub.port}",
                str(self.hub.identity),
                str(known_hosts_file()),
                self.hub.host_key_policy,
            ]
        )
        return directory / hashlib.sha1(key.encode()).hexdigest()[:12]

    def options(self) -> list[str]:
        """The ssh options harchos adds (before the destination)."""
        known = known_hosts_file()
        known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        strict = "yes" if self.hub.host_key_policy == "strict" else "accept-new"
        opts = [
            "-T",
            "-x",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(self.connect_timeout_s))}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
            "-o", f"StrictHostKeyChecking={strict}",
            "-o", f"UserKnownHostsFile={_ssh_path(known)}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        control = self.control_path()
        if control is not None:
            opts += [
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={_ssh_path(control)}",
                "-o", f"ControlPersist={CONTROL_PERSIST_S}",
            ]  # fmt: skip
        if self.hub.identity is not None:
            opts += ["-i", str(self.hub.identity).replace("%", "%%"), "-o", "IdentitiesOnly=yes"]
        if self.hub.port is not None:
            opts += ["-p", str(self.hub.port)]
        if self.hub.user:
            opts += ["-l", self.hub.user]
        return opts

    def ssh_argv(self, argv: Sequence[str]) -> list[str]:
        """The full local command line that runs `argv` on the hub, each argument quoted."""
        return [self.ssh, *self.options(), "--", self.host, shlex.join(argv)]

    def _failure(self, stderr: bytes, what: str, code: int) -> HubError | None:
        """The error an ssh-level failure means, or None when `stderr` shows none."""
        text = stderr.decode(errors="replace")
        where = f"hub {self.hub.name!r} ({self.host}{f':{self.hub.port}' if self.hub.port else ''})"
        name = known_hosts_name(self.host, self.hub.port)
        if _CHANGED in text or ("Host key for" in text and "has changed" in text):
            return HostKeyError(
                f"the host key of {where} has changed since harchos pinned it; refusing to connect",
                hint=(
                    "if the machine was reinstalled and you trust its new key, forget the old one: "
                    f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(known_hosts_file()))}"
                    "; otherwise someone may be intercepting the connection"
                ),
                changed=True,
            )
        if any(marker in text for marker in _STRICT_UNKNOWN) or (
            "Host key verification failed" in text
        ):
            return HostKeyError(
                f"{where} presents a host key harchos has not pinned, and its policy is strict",
                hint=(
                    "verify the key's fingerprint, then pin it: ssh-keyscan "
                    f"{f'-p {self.hub.port} ' if self.hub.port else ''}{shlex.quote(self.host)} "
                    f">> {shlex.quote(str(known_hosts_file()))}"
                ),
            )
        if _AUTH in text:
            return HubError(
                f"{where} refused the login: {text.strip().splitlines()[-1]}",
                hint="check --identity, your ssh-agent and the user name "
                "(harchos never prompts for a passphrase or password)",
            )
        lines = [line for line in text.strip().splitlines() if line.strip()]
        # ssh exits 255 with nothing said when the connection dies under a running command.
        silent = code == _SSH_FAILED and not lines
        if any(marker in text for marker in _UNREACHABLE) or text.startswith("ssh:") or silent:
            detail = lines[-1] if lines else "no answer"
            return HubUnreachableError(
                f"{where} is unreachable ({what}): {detail}",
                hint=f"check the machine and the network; harchos hubs check {self.hub.name}",
            )
        return None

    def _with_retries(
        self,
        attempt: Callable[[], subprocess.CompletedProcess[bytes]],
        ok: Callable[[int], bool],
        what: str,
    ) -> subprocess.CompletedProcess[bytes]:
        delay = self.backoff_s
        for number in range(1, self.attempts + 1):
            result = attempt()
            if ok(result.returncode):
                return result
            error = self._failure(result.stderr, what, result.returncode)
            if error is None:
                return result
            if not isinstance(error, HubUnreachableError) or number == self.attempts:
                raise error
            if self._deadline is not None and time.monotonic() + delay >= self._deadline:
                raise error
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
        hold_stdin: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` on the hub; see `Transport.run`.

        Exit 255 with an ssh diagnostic is a transport failure (`HubUnreachableError`,
        `HostKeyError` or `HubError`), retried while the connection could not be set up.
        With `hold_stdin` (and no `stdin`) the command's stdin stays open until it exits and
        ends when this process dies (`run_holding_stdin`).
        """
        args = list(argv)
        command = self.ssh_argv(args)

        def attempt() -> subprocess.CompletedProcess[bytes]:
            limit, within = timeout, f"{timeout or 0:g} s"
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if timeout is None or left < timeout:
                    limit, within = max(left, 0.0), f"the {self.budget_s:g} s allowed in all"
            try:
                if hold_stdin and stdin is None:
                    return run_holding_stdin(command, timeout=limit)
                return subprocess.run(
                    command,
                    input=stdin,
                    stdin=subprocess.DEVNULL if stdin is None else None,
                    capture_output=True,
                    timeout=limit,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise HubUnreachableError(
                    f"hub {self.hub.name!r} did not finish {args[0]!r} within {within}",
                    hint=f"check the hub: harchos hubs check {self.hub.name}",
                ) from exc

        result = self._with_retries(attempt, lambda code: code != _SSH_FAILED, f"running {args[0]}")
        if check and result.returncode != 0:
            raise command_failed(self.hub, args, result)
        return result

    def expand(self, path: str) -> str:
        """`path` absolute on the hub; `~` is the hub user's home (asked once, then cached)."""
        if path == "~" or path.startswith("~/"):
            if self._home is None:
                home = self.run(["sh", "-c", 'printf %s "$HOME"'], timeout=60).stdout.decode()
                if not home.startswith("/"):
                    raise HubError(f"hub {self.hub.name!r} reported no home directory")
                self._home = home.rstrip("/") or "/"
            return self._home + path[1:] if path != "~" else self._home
        if not path.startswith("/"):
            return self.expand(f"~/{path}")
        return path

    def _rsync_shell(self) -> str:
        return shlex.join([self.ssh, *self.options()])

    def _remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{path}"

    def _rsync(self, args: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise HubError("rsync is not installed here", hint="install rsync (apt, brew, dnf)")
        command = [
            rsync,
            "--archive",
            "--protect-args",
            f"--timeout={RSYNC_IO_TIMEOUT_S}",
            "--rsh",
            self._rsync_shell(),
            *args,
        ]

        def attempt() -> subprocess.CompletedProcess[bytes]:
            return run_holding_stdin(["sh", "-c", _WATCHED_COPY, "harchos-rsync", *command])

        result = self._with_retries(attempt, lambda code: code in _RSYNC_OK, what)
        if result.returncode not in _RSYNC_OK:
            raise command_failed(self.hub, command, result)
        return result

    def sync_up(self, local_dir: Path, remote_dir: str, *, protect: Sequence[str] = ()) -> str:
        """Mirror `local_dir` into `remote_dir` on the hub; see `Transport.sync_up`.

        `.git` is never sent; `.gitignore` and `.harchosignore` rules (in any folder) exclude
        files. Only files an earlier sync sent (listed in `<remote>/.harchos/synced`) and that
        are gone locally are deleted: whatever a job wrote on the hub (checkpoints, outputs,
        runs/, wandb/) stays, even while another job of the project runs there.
        """
        source = local_dir.resolve()
        if not source.is_dir():
            raise HubError(f"no project folder at {str(source)!r}")
        target = self.expand(remote_dir).rstrip("/")
        if target in ("", "/") or target == self.expand("~"):
            raise HubError(f"refusing to mirror a project onto {target or '/'!r} on the hub")
        previous = self.run(
            ["sh", "-c", 'mkdir -p -- "$1/.harchos" && { cat -- "$1/$2" 2>/dev/null || true; }',
             "harchos-sync", target, SYNC_MANIFEST],
            timeout=60,
        ).stdout  # fmt: skip
        filters = [
            "--exclude=.git",
            "--exclude=/.harchos/",
            "--filter=:- .gitignore",
            "--filter=:- .harchosignore",
        ]
        copied = self._rsync(
            [*filters, "-ii", "--out-format=%i %n", f"{source}/", self._remote(f"{target}/")],
            "copying the project",
        )
        current = synced_files(copied.stdout)
        gone = sorted(
            name
            for name in {n for n in previous.decode(errors="surrogateescape").split("\0") if n}
            if name not in current and not _protected(name, protect)
        )
        manifest = "\0".join(sorted(current)).encode(errors="surrogateescape")
        self.run(
            # A temporary file of this shell's own: two syncs of one project at once (two
            # jobs started together) must not take each other's away before the rename.
            ["sh", "-c", 'cd -- "$1" && shift 2 && cat > "$0.tmp.$$" && mv -f -- "$0.tmp.$$" '
             '"$0" && if [ "$#" -gt 0 ]; then rm -f -- "$@"; fi',
             SYNC_MANIFEST, target, "--", *gone],
            stdin=manifest,
            timeout=120,
        )  # fmt: skip
        return target

    def sync_down(self, remote_dir: str, local_dir: Path) -> None:
        """Copy `remote_dir` from the hub into `local_dir` (merging; nothing is deleted)."""
        source = self.expand(remote_dir).rstrip("/")
        local_dir.mkdir(parents=True, exist_ok=True)
        self._rsync([self._remote(f"{source}/"), f"{local_dir}/"], "copying files back")

    def push_dir(self, local_dir: Path, remote_dir: str) -> None:
        """Copy `local_dir` into `remote_dir` on the hub (merging; `--partial` keeps a cut
        transfer's progress, so a retry sends only the rest)."""
        target = self.expand(remote_dir).rstrip("/")
        self.run(["mkdir", "-p", "--", target], timeout=60)
        self._rsync(["--partial", f"{local_dir}/", self._remote(f"{target}/")], "copying files")

    @functools.cached_property
    def resolved_name(self) -> str:
        """The name known_hosts records this hub under, after ~/.ssh/config (`ssh -G`)."""
        result = subprocess.run(
            [self.ssh, "-G", *self.options(), "--", self.host],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        config: dict[str, str] = {}
        for line in result.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            config.setdefault(key, value)
        if "hostkeyalias" in config:
            return config["hostkeyalias"]
        port = int(config.get("port", self.hub.port or 22))
        return known_hosts_name(config.get("hostname", self.host), port)

    def host_key_pinned(self) -> bool:
        """Whether harchos's known_hosts already holds a key for this hub."""
        known = known_hosts_file()
        if not known.is_file():
            return False
        result = subprocess.run(
            ["ssh-keygen", "-F", self.resolved_name, "-f", str(known)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0 and bool(result.stdout.strip())
