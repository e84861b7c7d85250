"""Project paths, job arguments and hub workdirs reach the workload literally, locally and over
SSH: nothing a user types is ever interpreted by a shell on the way."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from clirunner import harchos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sshd import Sshd, client_key_fixture, sshd_fixture

__all__ = ["client_key_fixture", "sshd_fixture"]

NASTY_DIR = "p q 'x' \"y\" $(touch PWNED); `touch PWNED2` \\ z"
PRINT_ARGS = "import json, os, sys; print('ARGS=' + json.dumps([os.getcwd(), *sys.argv[1:]]))"
# Everything a shell would act on, plus ordinary text.
ALPHABET = st.sampled_from(list(" '\"$();`\\|&<>*?~#!{}[]\t") + list("abcXYZ019-_=/.,:@%^+"))


def printed_args(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("ARGS="))
    parsed: list[str] = json.loads(line.removeprefix("ARGS="))
    return parsed


def run_batch(capsys: pytest.CaptureFixture[str], hub: str, args: list[str]) -> list[str]:
    result = harchos(
        capsys, "run", "batch", "--hub", hub, "--json", "--", sys.executable, "-c", PRINT_ARGS,
        *args,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads(result.out)["exit_code"] == 0
    return printed_args(result.err)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(args=st.lists(st.text(ALPHABET, min_size=0, max_size=12), max_size=4))
def test_local_arguments_and_project_path_are_literal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str]
) -> None:
    project = tmp_path / NASTY_DIR
    project.mkdir(exist_ok=True)
    os.chdir(project)
    cwd, *received = run_batch(capsys, "local", args)
    assert received == args
    assert Path(cwd) == project
    assert not list(tmp_path.rglob("PWNED*"))


def test_ssh_arguments_project_path_and_workdir_are_literal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sshd: Sshd, client_key: Path
) -> None:
    project = tmp_path / NASTY_DIR
    project.mkdir()
    (project / "data file; $(x).txt").write_text("kept\n")
    os.chdir(project)
    workdir = "~/work dir 'q' $(touch PWNED3); `x`"
    added = harchos(
        capsys, "hubs", "add", "odd", "--ssh", f"root@127.0.0.1:{sshd.port}", "--identity",
        str(client_key), "--region", "DE", "--python", sys.executable, "--workdir", workdir,
    )  # fmt: skip
    assert added.code == 0, added.err
    args = ["a b", "$(touch PWNED4)", ";", "`id`", "'q'", '"dq"', "x|y", "*"]
    cwd, *received = run_batch(capsys, "odd", args)
    assert received == args
    remote = Path(cwd)
    assert str(remote).startswith(str(sshd.root / "work dir 'q' $(touch PWNED3); `x`"))
    assert (remote / "data file; $(x).txt").read_text() == "kept\n"
    for root in (tmp_path, sshd.root):
        assert not list(root.rglob("PWNED*"))
