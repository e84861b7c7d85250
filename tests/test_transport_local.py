"""The local transport: commands and files on this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harchos_cli.errors import ExitCode, HubError
from harchos_cli.hubs import transport_for
from harchos_cli.hubs.inventory import local_hub
from harchos_cli.hubs.local import LocalTransport


@pytest.fixture
def local() -> LocalTransport:
    transport = transport_for(local_hub())
    assert isinstance(transport, LocalTransport)
    return transport


def test_run_passes_arguments_and_stdin_literally(local: LocalTransport) -> None:
    odd = ["a b", "$(touch pwned)", "x; rm -rf /", "'\"`"]
    code = "import sys; sys.stdout.write(repr(sys.argv[1:]) + sys.stdin.read())"
    result = local.run([sys.executable, "-c", code, *odd], stdin=b"|in")
    assert result.stdout.decode() == repr(odd) + "|in"
    assert not Path("pwned").exists()


def test_failures_are_hub_errors_with_exit_4(local: LocalTransport) -> None:
    kept = local.run([sys.executable, "-c", "import sys; sys.exit(3)"], check=False)
    assert kept.returncode == 3
    with pytest.raises(HubError) as failed:
        local.run([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert failed.value.exit_code == ExitCode.HUB_FAILED
    assert "boom" in failed.value.message
    assert "exit 1" in failed.value.message
    with pytest.raises(HubError, match="no-such-program"):
        local.run(["no-such-program-harchos"])
    with pytest.raises(HubError, match="timed out"):
        local.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3)


def test_sync_up_runs_in_place_and_sync_down_copies(local: LocalTransport, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "checkpoints" / "c1").mkdir(parents=True)
    (project / "checkpoints" / "c1" / "state.bin").write_bytes(b"\x00\x01")
    assert local.sync_up(project, "~/ignored") == str(project.resolve())
    back = tmp_path / "back"
    local.sync_down(str(project / "checkpoints"), back)
    assert (back / "c1" / "state.bin").read_bytes() == b"\x00\x01"
    local.sync_down(str(project / "checkpoints"), project / "checkpoints")  # same folder: no-op
    assert (project / "checkpoints" / "c1" / "state.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(HubError, match="no folder"):
        local.sync_down(str(tmp_path / "missing"), back)


def test_expand(local: LocalTransport) -> None:
    assert local.expand("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert local.expand("rel") == os.path.abspath("rel")
