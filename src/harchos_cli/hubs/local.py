"""The local hub: this machine, reached with plain subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harchos_cli.errors import HubError
from harchos_cli.hubs.base import Hub


def command_failed(
    hub: Hub, argv: Sequence[str], result: subprocess.CompletedProcess[bytes]
) -> HubError:
    """The error for a hub command that ran and failed, with the tail of its stderr."""
    tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
    detail = f": {' / '.join(tail)}" if tail else ""
    return HubError(
        f"{Path(argv[0]).name} failed on hub {hub.name!r} (exit {result.returncode}){detail}",
        hint=f"check the hub with: harchos hubs check {hub.name}",
    )


class LocalTransport:
    """`Transport` for this machine: commands run directly, projects run in place."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` here; see `Transport.run`. It does not inherit harchos's own provider
        credentials: a workload gets only what its spec gives it."""
        from harchos_cli.secrets import workload_environ

        args = list(argv)
        try:
            result = subprocess.run(
                args,
                env=workload_environ(os.environ),
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            result = subprocess.CompletedProcess(args, 127, b"", f"{exc}\n".encode())
        except subprocess.TimeoutExpired as exc:
            raise HubError(
                f"{Path(args[0]).name} timed out after {timeout:g} s on hub {self.hub.name!r}"
            ) from exc
        if check and result.returncode != 0:
            raise command_failed(self.hub, args, result)
        return result

    def sync_up(self, local_dir: Path, remote_dir: str, *, protect: Sequence[str] = ()) -> str:
        """Nothing to copy: the local hub runs the project where it is."""
        del remote_dir, protect
        return str(local_dir.resolve())

    def sync_down(self, remote_dir: str, local_dir: Path) -> None:
        """Copy `remote_dir` into `local_dir` (merging), unless they are the same folder."""
        source = Path(self.expand(remote_dir))
        if not source.is_dir():
            raise HubError(f"no folder {str(source)!r} on hub {self.hub.name!r}")
        if local_dir.exists() and source.resolve() == local_dir.resolve():
            return
        shutil.copytree(source, local_dir, symlinks=True, dirs_exist_ok=True)

    def push_dir(self, local_dir: Path, remote_dir: str) -> None:
        """Copy `local_dir` into `remote_dir` (merging), unless they are the same folder."""
        target = Path(self.expand(remote_dir))
        if target.exists() and target.resolve() == local_dir.resolve():
            return
        shutil.copytree(local_dir, target, symlinks=True, dirs_exist_ok=True)

    def expand(self, path: str) -> str:
        """`path` made absolute on this machine."""
        return os.path.abspath(os.path.expanduser(path))
