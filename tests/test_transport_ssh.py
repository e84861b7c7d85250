"""The SSH transport against real OpenSSH servers on loopback: quoting, rsync, host keys, check."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from clirunner import harchos
from sshd import Sshd, client_key_fixture, sshd_factory_fixture, sshd_fixture  # noqa: F401

from harchos_cli.errors import ExitCode
from harchos_cli.hubs import remote_project_dir
from harchos_cli.hubs.base import HostKeyError
from harchos_cli.hubs.ssh import SshTransport, known_hosts_file


def test_run_quotes_every_argument(sshd: Sshd, tmp_path: Path) -> None:
    transport = SshTransport(sshd.hub())
    odd = ["a b", "$(touch pwned)", "x; touch pwned2", "it's", '"q"', "`id`", "*", "", "~"]
    code = "import sys; sys.stdout.write(repr(sys.argv[1:]) + sys.stdin.read())"
    result = transport.run([sys.executable, "-c", code, *odd], stdin=b"|in")
    assert result.stdout.decode() == repr(odd) + "|in"
    assert not list(sshd.root.glob("pwned*"))
    assert not list(Path.cwd().glob("pwned*"))
    failed = transport.run(["sh", "-c", "exit 3"], check=False)
    assert failed.returncode == 3


def test_options_use_a_short_control_path_and_harchos_known_hosts(
    sshd: Sshd,
    isolated_home: Path,
) -> None:
    transport = SshTransport(sshd.hub())
    opts = transport.options()
    control = transport.control_path()
    assert control is not None
    assert len(str(control)) < 40
    assert f"ControlPath={control}" in opts
    assert f"UserKnownHostsFile={isolated_home / 'ssh' / 'known_hosts'}" in opts
    assert "StrictHostKeyChecking=accept-new" in opts
    assert "BatchMode=yes" in opts
    assert not any(o.startswith("StrictHostKeyChecking=no") for o in opts)
    strict = SshTransport(sshd.hub(host_key_policy="strict"))
    assert "StrictHostKeyChecking=yes" in strict.options()
    assert strict.control_path() != control


def test_expand_uses_the_hub_users_home(sshd: Sshd) -> None:
    transport = SshTransport(sshd.hub())
    assert transport.expand("~/harchos") == f"{sshd.root}/harchos"
    assert transport.expand("rel/x") == f"{sshd.root}/rel/x"
    assert transport.expand("/abs") == "/abs"


def _project(root: Path) -> Path:
    files = {
        "train.py": "print('train')\n",
        "sub/b.txt": "b\n",
        "my file $(x); 'q'.txt": "odd\n",
        ".gitignore": "checkpoints/\n*.log\n",
        "x.log": "log\n",
        "sub/.gitignore": "secret.txt\n",
        "sub/secret.txt": "secret\n",
        ".harchosignore": "data/\n",
        "data/big.bin": "0" * 1000,
        ".git/HEAD": "ref: refs/heads/main\n",
        "vendor/.git": "gitdir: ../.git/modules/vendor\n",
        "vendor/lib.py": "x = 1\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _tree(root: Path) -> set[str]:
    """The project's files on the hub (not harchos's own `.harchos/` bookkeeping there)."""
    files = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    return {str(p) for p in files if p.parts[0] != ".harchos"}


def test_sync_up_honours_ignores_never_sends_git_and_keeps_job_outputs(
    sshd: Sshd,
    tmp_path: Path,
) -> None:
    project = _project(tmp_path / "my proj $(x)")
    (project / "stale.txt").write_text("from an old sync")
    hub = sshd.hub(workdir="~/work dir; $(touch pwned) 'w'")
    transport = SshTransport(hub)
    target = transport.sync_up(project, remote_project_dir(hub, project))
    remote = Path(target)
    assert remote.parent == sshd.root / "work dir; $(touch pwned) 'w'"
    assert _tree(remote) == {
        "train.py", "sub/b.txt", "my file $(x); 'q'.txt", ".gitignore", "sub/.gitignore",
        ".harchosignore", "vendor/lib.py", "stale.txt",
    }  # fmt: skip
    # The job writes a checkpoint (ignored) and an output (protected); a source file goes away.
    (remote / "checkpoints").mkdir()
    (remote / "checkpoints" / "ckpt.pt").write_text("state")
    (remote / "outputs").mkdir()
    (remote / "outputs" / "metrics.json").write_text("{}")
    (project / "stale.txt").unlink()
    (project / "train.py").write_text("print('v2')\n")
    (project / "sub" / "b.txt").unlink()
    assert (
        transport.sync_up(project, remote_project_dir(hub, project), protect=["/outputs/"])
        == target
    )
    assert (remote / "train.py").read_text() == "print('v2')\n"
    assert not (remote / "sub" / "b.txt").exists()
    assert not (remote / "stale.txt").exists()
    assert (remote / "checkpoints" / "ckpt.pt").read_text() == "state"
    assert (remote / "outputs" / "metrics.json").read_text() == "{}"
    assert not list(sshd.root.rglob("pwned"))
    back = tmp_path / "back here"
    transport.sync_down(f"{target}/checkpoints", back)
    assert (back / "ckpt.pt").read_text() == "state"


def test_sync_up_deletes_only_what_it_sent_never_what_jobs_wrote(
    sshd: Sshd, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "old.py").write_text("old\n")
    odd = "new\nline $(x) \\#101 é.py"
    (project / odd).write_text("odd\n")
    (project / "keep.py").write_text("keep\n")
    hub = sshd.hub()
    transport = SshTransport(hub)
    remote = Path(transport.sync_up(project, remote_project_dir(hub, project)))
    assert _tree(remote) == {"pkg/old.py", odd, "keep.py"}
    # A job writes outputs nobody ignores or protects; the user deletes two source files.
    for name in ("runs/1/events.out", "wandb/run.log", "result.json"):
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        (remote / name).write_text("written by a job")
    (project / "pkg" / "old.py").unlink()
    (project / odd).unlink()
    transport.sync_up(project, remote_project_dir(hub, project))
    assert _tree(remote) == {"keep.py", "runs/1/events.out", "wandb/run.log", "result.json"}
    # And a sync with nothing gone deletes nothing.
    transport.sync_up(project, remote_project_dir(hub, project))
    assert (remote / "result.json").read_text() == "written by a job"


def test_sync_up_refuses_to_mirror_onto_home(sshd: Sshd, tmp_path: Path) -> None:
    from harchos_cli.errors import HubError

    with pytest.raises(HubError, match="refusing"):
        SshTransport(sshd.hub()).sync_up(tmp_path, "~")


def test_unknown_host_key_is_accepted_once_then_pinned(
    capsys: pytest.CaptureFixture[str],
    sshd: Sshd,
) -> None:
    add = harchos(
        capsys, "hubs", "add", "h1", "--ssh", f"root@127.0.0.1:{sshd.port}",
        "--identity", str(sshd.client_key), "--region", "DE", "--python", sys.executable,
    )  # fmt: skip
    assert add.code == 0, add.err
    first = harchos(capsys, "hubs", "check", "h1", "--json")
    assert first.code == 0, first.out
    assert first.json()["reachable"] is True
    assert first.json()["host_key"] == "new"
    pinned = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known_hosts_file())],
        capture_output=True,
        check=False,
    )
    assert pinned.returncode == 0
    host_pub = Path(f"{sshd.host_key}.pub").read_text().split()[1]
    assert host_pub in known_hosts_file().read_text()
    second = harchos(capsys, "hubs", "check", "h1", "--json").json()
    assert second["host_key"] == "pinned"
    assert second["python"] == ".".join(str(p) for p in sys.version_info[:3])
    assert second["gpus"] == []
    assert second["free_disk_gb"] > 0


def test_changed_host_key_is_refused_with_exit_4_and_a_fix(
    capsys: pytest.CaptureFixture[str],
    sshd: Sshd,
) -> None:
    transport = SshTransport(sshd.hub())
    transport.run(["true"])
    before = known_hosts_file().read_text()
    sshd.restart(new_host_key=True)
    with pytest.raises(HostKeyError) as refused:
        transport.run(["true"])
    error = refused.value
    assert error.changed is True
    assert error.exit_code == ExitCode.HUB_FAILED
    assert "'h1'" in error.message
    assert "has changed" in error.message
    assert error.hint is not None
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {known_hosts_file()}" in error.hint
    assert known_hosts_file().read_text() == before  # never re-pinned silently

    harchos(
        capsys, "hubs", "add", "h1", "--ssh", f"root@127.0.0.1:{sshd.port}",
        "--identity", str(sshd.client_key), "--python", sys.executable,
    )  # fmt: skip
    checked = harchos(capsys, "hubs", "check", "h1", "--json")
    assert checked.code == 4
    assert checked.json()["host_key"] == "changed"
    assert checked.json()["reachable"] is False
    assert "ssh-keygen -R" in checked.json()["error"]
    # Following the hint lets harchos pin the new key.
    subprocess.run(
        ["ssh-keygen", "-R", f"[127.0.0.1]:{sshd.port}", "-f", str(known_hosts_file())],
        capture_output=True,
        check=True,
    )
    assert harchos(capsys, "hubs", "check", "h1", "--json").json()["host_key"] == "new"


def test_strict_hub_refuses_an_unknown_key(sshd: Sshd) -> None:
    transport = SshTransport(sshd.hub(host_key_policy="strict"))
    with pytest.raises(HostKeyError) as refused:
        transport.run(["true"])
    assert refused.value.changed is False
    assert "strict" in refused.value.message
    assert refused.value.hint is not None
    assert "ssh-keyscan" in refused.value.hint
    assert not known_hosts_file().exists() or known_hosts_file().read_text() == ""
    SshTransport(sshd.hub()).run(["true"])  # pin it (accept-new)
    assert transport.run(["echo", "ok"]).stdout == b"ok\n"


def test_wrong_key_is_a_login_error_not_unreachable(sshd: Sshd, tmp_path: Path) -> None:
    from sshd import keygen

    from harchos_cli.errors import HubError
    from harchos_cli.hubs.base import HubUnreachableError

    other = keygen(tmp_path / "other key")
    with pytest.raises(HubError) as refused:
        SshTransport(sshd.hub(identity=other)).run(["true"])
    assert not isinstance(refused.value, HubUnreachableError)
    assert "refused the login" in refused.value.message


def test_check_several_hubs_concurrently(
    capsys: pytest.CaptureFixture[str],
    sshd_factory: Callable[[str], Sshd],
) -> None:
    servers = [sshd_factory("h1"), sshd_factory("h2")]
    for server in servers:
        result = harchos(
            capsys, "hubs", "add", server.name, "--ssh", f"127.0.0.1:{server.port}",
            "--identity", str(server.client_key), "--python", sys.executable,
            "--workdir", "~/w",
        )  # fmt: skip
        assert result.code == 0, result.err
    checked = harchos(capsys, "hubs", "check", "h1", "h2", "--json")
    assert checked.code == 0, checked.out
    data = checked.json()
    assert [d["hub"] for d in data] == ["h1", "h2"]
    assert all(d["reachable"] and d["host_key"] == "new" and d["error"] is None for d in data)
    text = harchos(capsys, "hubs", "check")
    assert text.code == 0
    assert "h2: ok, host key pinned" in text.out
    assert "local: ok" in text.out


def test_user_and_port_are_left_to_ssh_config_when_not_given(sshd: Sshd) -> None:
    opts = SshTransport(replace(sshd.hub(), user=None, port=None)).options()
    assert "-l" not in opts
    assert "-p" not in opts


def test_check_keeps_to_one_budget_per_hub(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harchos_cli.hubs import check

    # A hub whose Python hangs: each command would be allowed its own 9 s.
    hanging = tmp_path / "python3"
    hanging.write_text("#!/bin/sh\nexec sleep 5\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(check, "CHECK_BUDGET_S", 1.5)
    found = check.check_hub(sshd.hub(python=str(hanging)))
    assert found.reachable is False
    assert found.error is not None
    assert "within the 1.5 s allowed in all" in found.error
