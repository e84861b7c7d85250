"""`--hub auto` in text: the plan says why its hub won and shows the other hubs' best options,
as `--json` has them in `alternatives`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import harchos

HUBS = (
    '[job]\nkind = "batch"\n'
    '[hubs.fr]\ntransport = "local"\nregion = "FR"\n'
    '[hubs.pl]\ntransport = "local"\nregion = "PL"\n'
)
ARGS = ("run", "batch", "--hub", "auto", "--defer-until-green", "--duration", "1h",
        "--deadline", "12h")  # fmt: skip


def test_the_text_plan_shows_why_and_the_alternatives_that_json_has(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text(HUBS)
    os.chdir(tmp_path)
    as_json = harchos(capsys, *ARGS, "--dry-run", "--json", "--", "true")
    assert as_json.code == 0, as_json.err
    plan = as_json.json()
    assert plan["hub"] == "fr"
    text = harchos(capsys, *ARGS, "--dry-run", "--", "true")
    assert text.code == 0, text.err
    assert "why: hub fr won on carbon" in text.out
    for alternative in plan["alternatives"]:
        row = next(line for line in text.out.splitlines()
                   if line.split()[:1] == [alternative["hub"]])  # fmt: skip
        assert f"start {alternative['start']}" in row
        if alternative["expected_intensity"] is not None:
            assert f"{alternative['expected_intensity']:g} gCO2eq/kWh" in row
    # Submitted, the same lines come with the plan on stderr.
    submitted = harchos(capsys, *ARGS, "--detach", "--", "true")
    assert submitted.code == 0, submitted.err
    job_id = next(line for line in submitted.err.splitlines()
                  if line.startswith("job ")).split()[1].rstrip(":")  # fmt: skip
    try:
        assert "why: hub fr won on carbon" in submitted.err
        assert "other hubs (best start on each):" in submitted.err
    finally:
        assert harchos(capsys, "jobs", "cancel", job_id).code == 0


def test_one_hub_has_no_alternatives_to_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "batch"\n[carbon]\nregion = "DE"\n')
    os.chdir(tmp_path)
    text = harchos(capsys, "run", "batch", "--dry-run", "--defer-until-green", "--duration", "1h",
                   "--deadline", "12h", "--", "true")  # fmt: skip
    assert text.code == 0, text.err
    assert "why:" not in text.out
    assert "other hubs" not in text.out
