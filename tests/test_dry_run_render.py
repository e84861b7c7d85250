"""`--dry-run` prints commands a user can paste into a shell on the hub and get the same thing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harchos_cli.jobs.launchers import render


def test_rendered_line_runs_literally_in_a_shell(tmp_path: Path) -> None:
    home = tmp_path / "home"
    workdir = home / "harchos" / "p q $(x); 'y'"
    workdir.mkdir(parents=True)
    script = "import os, sys; print(os.getcwd()); print(sys.argv[1:]); print(os.environ['V'])"
    line = render(
        ["python3", "-c", script, "a b", "$(id)"], {"V": "~/ckpt dir"}, "~/harchos/p q $(x); 'y'"
    )
    done = subprocess.run(
        ["sh", "-c", line],
        check=False,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    cwd, args, value = done.stdout.splitlines()
    assert Path(cwd) == workdir
    assert args == "['a b', '$(id)']"
    assert value == f"{home}/ckpt dir"
