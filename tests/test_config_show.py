"""`harchos config show` never cuts a setting's key or its environment variable: at 80 columns
on a terminal, and piped."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from harchos_cli.cli import render
from harchos_cli.config import SETTINGS, Config


def test_piped_at_80_columns_every_key_and_variable_is_whole(tmp_path: object) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "harchos_cli", "config", "show"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, check=True,
    ).stdout  # fmt: skip
    assert "…" not in shown
    for setting in SETTINGS:
        row = next(line for line in shown.splitlines() if line.startswith(setting.key + " "))
        assert setting.env in row.split()


def test_an_80_column_terminal_gets_every_key_and_variable_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    console = Console(
        file=screen, width=80, force_terminal=True, color_system=None, highlight=False
    )
    monkeypatch.setattr(render, "stdout", console)
    render.print_config(Config.load())
    shown = screen.getvalue()
    assert "…" not in shown
    assert all(len(line) <= 80 for line in shown.splitlines() if "http" not in line)
    words = shown.split()
    for setting in SETTINGS:
        assert setting.key in words
        assert setting.env in words
