"""What a plan refuses to do: wait for a window that saves next to nothing, and plan a hub on a
replayed trace of another zone (issue: a 0.26 % saving was worth an 11-minute wait; an FR trace
planned a DE hub with only a warning)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clirunner import harchos
from test_planner import HOUR, T0, choose, forecast, hub
from test_run_local import new_project

from harchos_cli.plan import planner
from harchos_cli.plan.planner import Candidate

DE_TRACE = "eco4cast/DE_2022_hourly.csv"


def test_a_window_saving_less_than_the_minimum_is_not_waited_for() -> None:
    # The greenest hour is 1 % under now's.
    values = [100.0, 99.0] + [120.0] * 11
    waits = choose(values)
    assert waits.choice.start == T0 + HOUR
    assert waits.choice.reason == "greenest window"
    at_once = choose(values, min_saving=0.02)
    assert at_once.choice.start == T0
    assert at_once.choice.reason == (
        "the greenest window saves only 1.0% (under the 2% minimum): starting at once"
    )
    # A saving at or above the minimum is still waited for.
    assert choose([100.0, 90.0] + [120.0] * 11, min_saving=0.02).choice.start == T0 + HOUR
    # A threshold the user set is followed as given.
    under = choose(values, min_saving=0.5, threshold=99.5)
    assert (under.choice.start, under.choice.reason) == (T0 + HOUR, "under threshold")


def test_a_waiting_job_keeps_to_its_greenest_window_however_small_the_saving() -> None:
    # At submission the minimum decides whether to wait at all; a re-plan (`waiting`) of a job
    # that already waits moves to the greenest window even when it saves under the minimum, as
    # the rolling policy of `plan evaluate` measures (checking every hour lost 3 points of share).
    values = [100.0, 99.0] + [120.0] * 11
    assert choose(values, min_saving=0.02).choice.start == T0
    replanned = choose(values, min_saving=0.02, waiting=True)
    assert (replanned.choice.start, replanned.choice.reason) == (T0 + HOUR, "greenest window")


def test_the_minimum_counts_from_the_soonest_start_a_queue_allows() -> None:
    # Queued until hour 2 (120), the greenest hour after it is 110: 8 % saved, over a 5 % minimum.
    values = [10.0, 10.0, 120.0, 110.0] + [130.0] * 9
    queued = Candidate(hub("c"), forecast(values), earliest=T0 + 2 * HOUR)
    plan = planner.choose([queued], now=T0, duration=HOUR, deadline=T0 + 12 * HOUR,
                          threshold=None, gpus=0, min_saving=0.05)  # fmt: skip
    assert plan.choice.start == T0 + 3 * HOUR


def test_the_minimum_saving_is_a_setting_and_refuses_nonsense(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    os.chdir(new_project(capsys, tmp_path, "region=DE"))
    run = ["run", "train", "--hub", "local", "--defer-until-green", "--deadline", "12h",
           "--provider", f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T00:00:00Z",
           "--dry-run", "--json"]  # fmt: skip
    waited = json.loads(harchos(capsys, *run).out)
    assert waited["planned_start"] != waited["now"]
    monkeypatch.setenv("HARCHOS_MIN_SAVING", "100")
    now = json.loads(harchos(capsys, *run).out)
    assert now["planned_start"] == now["now"]
    assert "under the 100% minimum" in now["reason"]
    monkeypatch.setenv("HARCHOS_MIN_SAVING", "150")
    refused = harchos(capsys, *run)
    assert refused.code == 2
    assert "plan.min_saving_percent 150 is not a percentage" in refused.err


def test_a_trace_of_another_zone_is_refused_unless_told(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    os.chdir(new_project(capsys, tmp_path, "region=eu-west"))  # Ireland: zone IE
    run = ["run", "train", "--hub", "local", "--defer-until-green", "--provider",
           f"replay:{traces / DE_TRACE}", "--at", "2022-03-01T00:00:00Z", "--dry-run"]  # fmt: skip
    refused = harchos(capsys, *run)
    assert refused.code == 2
    assert "the replayed trace is for DE, but hub 'local' is in eu-west (IE)" in refused.err
    assert "HARCHOS_REPLAY_ANY_ZONE=1" in refused.err
    monkeypatch.setenv("HARCHOS_REPLAY_ANY_ZONE", "1")
    applied = harchos(capsys, *run)
    assert applied.code == 0, applied.err
    assert "the replayed trace is for DE, not IE" in applied.err + applied.out
