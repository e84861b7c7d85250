"""The hub inventory and the `harchos hubs` commands (no network: see test_transport_ssh.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli.errors import UsageError
from harchos_cli.hubs import inventory, remote_project_dir
from harchos_cli.hubs.base import Hub


def test_local_hub_always_exists_and_cannot_be_removed(capsys: pytest.CaptureFixture[str]) -> None:
    listed = harchos(capsys, "hubs", "list", "--json").json()
    assert [h["name"] for h in listed] == ["local"]
    assert listed[0]["transport"] == "local"
    assert listed[0]["python"] == sys.executable
    removed = harchos(capsys, "hubs", "remove", "local")
    assert removed.code == 2
    assert "cannot be removed" in removed.err


def test_add_show_list_remove_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_home: Path
) -> None:
    key = tmp_path / "id key"
    key.write_text("not really a key")
    added = harchos(
        capsys,
        "hubs", "add", "gpu-1", "--ssh", "alice@gpu.example.org:2222", "--identity", str(key),
        "--region", "aws:eu-central-1", "--gpus", "4", "--gpu-type", "A100",
        "--price-per-gpu-hour", "1.5", "--pue", "1.2", "--workdir", "/data/my runs",
        "--python", "/opt/py/bin/python3", "--strict-host-key", "--json",
    )  # fmt: skip
    assert added.code == 0, added.err
    shown = harchos(capsys, "hubs", "show", "gpu-1", "--json").json()
    assert shown == {
        **added.json(),
        "jobs_dir": "~/.harchos/jobs",
        "known_hosts": str(isolated_home / "ssh" / "known_hosts"),
    }
    assert (shown["user"], shown["host"], shown["port"]) == ("alice", "gpu.example.org", 2222)
    assert shown["identity"] == str(key.resolve())
    assert shown["region"] == "aws:eu-central-1"
    assert (shown["gpus"], shown["gpu_type"], shown["price_per_gpu_hour"]) == (4, "A100", 1.5)
    assert (shown["pue"], shown["workdir"], shown["python"]) == (
        1.2,
        "/data/my runs",
        "/opt/py/bin/python3",
    )
    assert shown["host_key_policy"] == "strict"
    names = [h["name"] for h in harchos(capsys, "hubs", "list", "--json").json()]
    assert names == ["local", "gpu-1"]
    table = harchos(capsys, "hubs", "list")
    assert "gpu-1" in table.out
    assert "ssh alice@gpu.example.org:2222" in table.out
    assert harchos(capsys, "hubs", "remove", "gpu-1").code == 0
    assert [h["name"] for h in harchos(capsys, "hubs", "list", "--json").json()] == ["local"]


def test_defaults_leave_user_port_and_gpus_to_ssh_config_and_detection() -> None:
    hub = inventory.add(Hub(name="box", transport="ssh", host="box"))
    stored = inventory.get("box")
    assert stored == hub
    assert (stored.user, stored.port, stored.gpus, stored.identity) == (None, None, None, None)
    assert stored.host_key_policy == "accept-new"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name", "--ssh", "h"], "invalid hub name"),
        (["local", "--ssh", "h"], "reserved"),
        (["auto", "--ssh", "h"], "reserved"),
        (["h", "--ssh", "h", "--region", "eu-wset"], "unknown region"),
        (["h", "--ssh", "h", "--identity", "/nonexistent/key"], "does not exist"),
        (["h", "--ssh", "h:99999"], "invalid SSH port"),
        (["h", "--ssh", "-oProxyCommand=x"], "invalid SSH target"),
        (["h", "--ssh", "@h"], "invalid SSH target"),
        (["h", "--ssh", "h", "--gpus", "two"], "invalid --gpus"),
        (["h", "--ssh", "h", "--pue", "0.9"], "below 1.0"),
    ],
)
def test_add_rejects_bad_input_with_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    result = harchos(capsys, "hubs", "add", *args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
    assert [h["name"] for h in harchos(capsys, "hubs", "list", "--json").json()] == ["local"]


def test_unknown_region_suggests_near_names(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "hubs", "add", "h", "--ssh", "h", "--region", "eu-wset")
    assert "did you mean" in result.err
    assert "eu-west" in result.err


def test_duplicate_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert harchos(capsys, "hubs", "add", "h", "--ssh", "one").code == 0
    again = harchos(capsys, "hubs", "add", "h", "--ssh", "two")
    assert again.code == 2
    assert "exists already" in again.err
    assert inventory.get("h").host == "one"


def test_unknown_hub_suggests_near_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert harchos(capsys, "hubs", "add", "gpu-box", "--ssh", "h").code == 0
    for command in (["show", "gpu-bx"], ["remove", "gpu-bx"], ["check", "gpu-bx"]):
        result = harchos(capsys, "hubs", *command)
        assert result.code == 2
        assert "did you mean gpu-box?" in result.err


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("host", (None, "host", None)),
        ("u@host", ("u", "host", None)),
        ("u@10.0.0.1:2200", ("u", "10.0.0.1", 2200)),
        ("[2001:db8::1]:22", (None, "2001:db8::1", 22)),
        ("u@2001:db8::1", ("u", "2001:db8::1", None)),
        ("me@my-alias", ("me", "my-alias", None)),
    ],
)
def test_parse_ssh_target(target: str, expected: tuple[str | None, str, int | None]) -> None:
    assert inventory.parse_ssh_target(target) == expected


def test_parse_ssh_target_rejects_option_injection() -> None:
    with pytest.raises(UsageError):
        inventory.parse_ssh_target("-oProxyCommand=touch /tmp/pwned")


def test_check_local_reports_python_gpus_and_disk(capsys: pytest.CaptureFixture[str]) -> None:
    result = harchos(capsys, "hubs", "check", "local", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["hub"] == "local"
    assert data["reachable"] is True
    assert data["error"] is None
    assert data["python"] == ".".join(str(p) for p in sys.version_info[:3])
    assert data["gpus"] == []  # this machine has no nvidia-smi
    assert data["free_disk_gb"] > 0
    assert data["workdir_writable"] is True
    assert data["accelerate"] is True  # the suite's Python has it
    assert data["warnings"] == []
    assert set(data) == {
        "hub", "reachable", "host_key", "python", "gpus", "free_disk_gb", "workdir_writable",
        "accelerate", "rsync", "slurm", "warnings", "error",
    }  # fmt: skip
    assert data["slurm"] is None  # not a Slurm hub


def test_check_unreachable_hub_exits_4_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert harchos(capsys, "hubs", "add", "gone", "--ssh", f"127.0.0.1:{port}").code == 0
    result = harchos(capsys, "hubs", "check", "--json")
    assert result.code == 4
    by_hub = {entry["hub"]: entry for entry in result.json()}
    assert by_hub["local"]["reachable"] is True
    assert by_hub["gone"]["reachable"] is False
    assert "unreachable" in by_hub["gone"]["error"]
    assert "Connection refused" in by_hub["gone"]["error"]
    assert by_hub["gone"]["host_key"] == "unpinned"


def test_remote_project_dir_is_per_project_and_stable(tmp_path: Path) -> None:
    hub = Hub(name="h", transport="ssh", host="h", workdir="/w d/")
    one, two = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    assert remote_project_dir(hub, one) == remote_project_dir(hub, one)
    assert remote_project_dir(hub, one) != remote_project_dir(hub, two)
    assert remote_project_dir(hub, one).startswith("/w d/demo-")
    odd = tmp_path / "it's $(odd); x"
    odd.mkdir()
    assert "/" not in remote_project_dir(hub, odd).removeprefix("/w d/")
