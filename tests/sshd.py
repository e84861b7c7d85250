"""Real OpenSSH servers on 127.0.0.1, one per simulated hub, for transport and job tests.

Each `Sshd` has its own folder holding its host key, authorized_keys, config, pid file and the
hub's root. `SetEnv HOME=<root>` makes that root the hub user's home for every session, so the
hub's `~/.harchos/jobs` and `~/harchos` land there and hubs never share files (we log in as the
CI user, root, whose real home is untouched).

Fixtures (import them into the test module, with `client_key_fixture`): `sshd` (one server,
hub `h1`), `sshd_hub` gives `(Hub, client_key)`, `sshd_factory(name)` starts as many servers as
a test needs. Teardown stops every server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harchos_cli.hubs.base import Hub

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair without a passphrase at `path` (and `path.pub`)."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "harchos-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Sshd:
    """One sshd on 127.0.0.1:`port` accepting `client_key` for the current user."""

    def __init__(
        self, base: Path, client_key: Path, name: str = "h1", env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        # More of every session's environment (as a login node's profile would set it).
        self.env = dict(env or {})
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.root = base / "root"
        self.root.mkdir(exist_ok=True)
        self.client_key = client_key
        self.host_key = base / "ssh_host_ed25519_key"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        keygen(self.host_key)
        (base / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())

    def _more_env(self) -> list[str]:
        return [f"{name}={value}" for name, value in self.env.items()]

    def _config(self) -> Path:
        config = self.base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    " ".join(["SetEnv", f"HOME={self.root}", *self._more_env()]),
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        return config

    def start(self) -> Sshd:
        """Start sshd and wait until it greets."""
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = (self.base / "sshd.log").open("ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self._config()), "-p", str(self.port)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.base / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        """Stop sshd and end its established connections (which a plain sshd restart keeps),
        as a reboot or a dropped network would. Processes started in their own session (jobs)
        are not its descendants and live on."""
        if self.process is not None and self.process.poll() is None:
            connections = descendants(self.process.pid)
            self.process.terminate()
            self.process.wait(10)
            for pid in connections:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process = None

    def restart(self, *, new_host_key: bool = False) -> None:
        """Stop and start again on the same port, optionally with a new host key."""
        self.stop()
        if new_host_key:
            keygen(self.host_key)
        self.start()

    def hub(self, **changes: object) -> Hub:
        """A `Hub` reaching this server as the current user with the client key."""
        fields: dict[str, object] = {
            "name": self.name,
            "transport": "ssh",
            "host": "127.0.0.1",
            "user": os.environ.get("USER") or "root",
            "port": self.port,
            "identity": self.client_key,
            "region": "DE",
            "workdir": "~/harchos",
            "python": sys.executable,
        }
        fields.update(changes)
        return Hub(**fields)  # type: ignore[arg-type]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_processes(matches: Callable[[str, list[bytes]], bool]) -> int:
    """SIGKILL every process whose `(program, argv)` `matches`; how many."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and matches(argv[0].decode(errors="replace"), argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def kill_ssh_clients(marker: str) -> int:
    """SIGKILL every ssh client and ControlMaster whose command line holds `marker`.

    Pass the transport's ControlPath: only processes this test started carry it.
    """

    def matches(program: str, argv: list[bytes]) -> bool:
        # A ControlPersist master renames itself `ssh: <ControlPath> [mux]`.
        is_ssh = Path(program).name == "ssh" or program.startswith("ssh: ")
        return is_ssh and any(marker.encode() in arg for arg in argv)

    return kill_processes(matches)


# Fixtures carry explicit names so test modules can import them (`from sshd import
# sshd_fixture`) without the import and the test parameter sharing a name.
@pytest.fixture(name="client_key")
def client_key_fixture(tmp_path: Path) -> Path:
    return keygen(tmp_path / "client_key")


@pytest.fixture(name="sshd_factory")
def sshd_factory_fixture(tmp_path: Path, client_key: Path) -> Iterator[Callable[..., Sshd]]:
    """`make(name, env=None) -> Sshd`, started; all stopped at teardown."""
    servers: list[Sshd] = []

    def make(name: str = "h1", env: dict[str, str] | None = None) -> Sshd:
        server = Sshd(tmp_path / f"sshd-{name}", client_key, name, env).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(name="sshd")
def sshd_fixture(tmp_path: Path, client_key: Path) -> Iterator[Sshd]:
    """One started sshd (hub `h1`)."""
    server = Sshd(tmp_path / "sshd-h1", client_key).start()
    yield server
    server.stop()


@pytest.fixture(name="sshd_hub")
def sshd_hub_fixture(sshd: Sshd) -> tuple[Hub, Path]:
    """`(Hub, client_key)` for one running sshd."""
    return sshd.hub(), sshd.client_key
