"""Multi-node training, before anything runs: options, flags, GPU claims and the plan."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clirunner import harchos
from test_run_local import new_project

from harchos_cli.carbon.regions import resolve
from harchos_cli.carbon.types import Forecast, Point, Source
from harchos_cli.hubs.base import Hub
from harchos_cli.jobs.launchers import NodeRank, accelerate_flags
from harchos_cli.jobs.request import combine
from harchos_cli.jobs.spec import JobTable
from harchos_cli.jobs.store import Job, JobStore, held_gpus, new_id
from harchos_cli.plan.planner import Candidate

T0 = datetime(2022, 3, 1, tzinfo=UTC)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_each_machine_gets_its_rank_and_the_world_counts_every_machine() -> None:
    hub = Hub("h2", "ssh", host="10.0.0.2", gpus=4)
    flags, env = accelerate_flags(JobTable(gpus=4), hub, NodeRank(3, 2, "10.0.0.1", 29501))
    assert (flag(flags, "--num_machines"), flag(flags, "--machine_rank")) == ("3", "2")
    assert (flag(flags, "--main_process_ip"), flag(flags, "--main_process_port")) == (
        "10.0.0.1", "29501",
    )  # fmt: skip
    assert flag(flags, "--num_processes") == "12"
    assert "--multi_gpu" in flags
    assert env == {}
    # On CPU hubs: `[job] processes` per machine, one gloo group over all of them.
    flags, env = accelerate_flags(JobTable(gpus=0, processes=1), hub, NodeRank(2, 1, "h", 1))
    assert flag(flags, "--num_processes") == "2"
    assert "--cpu" not in flags
    assert env == {"ACCELERATE_USE_CPU": "true"}


def running_on(store: JobStore, hub: str, gpu_ids: str) -> str:
    row = Job(
        id=new_id(), kind="train", name="p", project_dir="/p", state="running",
        request={"kind": "train"}, hub=hub, gpu_ids=gpu_ids,
    )  # fmt: skip
    return store.create(row).id


def test_gpus_are_claimed_on_every_machine_at_once_or_not_at_all() -> None:
    store = JobStore()
    try:
        holder = running_on(store, "h1", "0")  # stored before multi-node: GPUs of its own hub
        waiting = running_on(store, "h1", "")
        store.update(waiting, gpu_ids=None, state="syncing")
        wants = {"h1": (1, 1), "h2": (1, 1)}
        assert store.claim_gpus(waiting, wants) is None
        assert store.get(waiting).gpu_ids is None  # nothing held on h2 while h1 is busy
        store.update(holder, state="done")
        assert store.claim_gpus(waiting, wants) == {"h1": (0,), "h2": (0,)}
        assert held_gpus("h1", store.get(waiting).gpu_ids) == {"h1": {0}, "h2": {0}}
        # A one-GPU job on h2 now waits for the multi-node job.
        other = running_on(store, "h2", "")
        store.update(other, gpu_ids=None, state="syncing")
        assert store.claim_gpus(other, {"h2": (1, 1)}) is None
        assert store.claim_gpus(other, {"h2": (2, 1)}) == {"h2": (1,)}
    finally:
        store.close()


def forecast(zone: str, values: list[float], offset_h: int = 0) -> Forecast:
    source = Source("replay", "average", "test", "replayed", T0)
    points = [
        Point(T0 + timedelta(hours=offset_h + i), T0 + timedelta(hours=offset_h + i + 1), v,
              v - 10, v + 10)
        for i, v in enumerate(values)
    ]  # fmt: skip
    return Forecast(resolve(zone), points, source)


def test_the_machines_are_planned_on_the_mean_of_their_regions() -> None:
    h1, h2 = Hub("h1", "ssh", host="a"), Hub("h2", "ssh", host="b")
    combined = combine(
        [Candidate(h1, forecast("DE", [300, 100, 200])), Candidate(h2, forecast("FR", [50, 150]))]
    )
    assert combined.hub is h1
    assert combined.forecast is not None
    # Only the hours both forecasts cover; each the mean of the two machines.
    assert [p.intensity for p in combined.forecast.points] == [175.0, 125.0]
    assert [(p.low, p.high) for p in combined.forecast.points] == [(165, 185), (115, 135)]
    assert "mean of 2 machines" in combined.forecast.region.display_name
    assert (combined.forecast.region.name, combined.forecast.region.zone) == ("DE+FR", "DE+FR")
    shifted = combine(
        [Candidate(h1, forecast("DE", [300, 100])), Candidate(h2, forecast("FR", [50], 1))]
    )
    assert shifted.forecast is not None
    assert [p.intensity for p in shifted.forecast.points] == [75.0]
    # A machine without carbon data: no data for the job (it starts at once).
    assert combine([Candidate(h1, forecast("DE", [1])), Candidate(h2, None)]).forecast is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nodes", "3", "--hubs", "a,b"], "--nodes 3 but --hubs names 2 hub(s)"),
        (["--nodes", "2"], "--nodes needs --hubs"),
        (["--hubs", "a,a"], "names a hub twice"),
        (["--hubs", "auto,b"], "names a hub twice, or auto"),
        (["--hubs", ", ,"], "--nodes needs --hubs"),
        (["--hub", "a", "--hubs", "a,b"], "--hub and --hubs together"),
        (["--hubs", "a,b", "--migrate", "auto"], "not moved or rescaled"),
        (["--hubs", "a,b", "--scale", "1:2"], "not moved or rescaled"),
        (["--main-address", "10.0.0.1"], "--main-address applies to multi-node"),
        (["--hubs", "a,b", "--main-address", " "], "--main-address is empty"),
        # --nodes on one hub means machines of a Slurm cluster.
        (["--hub", "local", "--nodes", "2"], "which is not a Slurm cluster"),
        (["--hub", "auto", "--nodes", "2"], "--nodes with --hub auto"),
        (
            ["--hub", "local", "--nodes", "2", "--main-address", "10.0.0.1"],
            "--main-address with a Slurm cluster",
        ),
        (["--hub", "local", "--nodes", "2", "--scale", "1:2"], "not moved or rescaled"),
    ],
)
def test_bad_multi_node_options_are_refused_with_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], message: str
) -> None:
    os.chdir(new_project(capsys, tmp_path))
    result = harchos(capsys, "run", "train", *options, "--dry-run")
    assert result.code == 2, result.err
    assert message in result.err
    assert "hint:" in result.err
    assert "Traceback" not in result.err


def test_machines_on_unknown_hubs_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.chdir(new_project(capsys, tmp_path))
    result = harchos(capsys, "run", "train", "--hubs", "local,nowhere", "--dry-run")
    assert result.code == 2, result.err
    assert "nowhere" in result.err


def test_a_main_node_on_this_machine_needs_an_address_the_others_reach(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.chdir(new_project(capsys, tmp_path))
    # A hub that refuses at once (nothing listens there): the dry run's launcher check gives up
    # on it quickly, where an unroutable address would wait for its timeouts.
    added = harchos(capsys, "hubs", "add", "far", "--ssh", "me@127.0.0.2:9", "--region", "FR")
    assert added.code == 0, added.err
    refused = harchos(capsys, "run", "train", "--hubs", "local,far", "--dry-run")
    assert refused.code == 2, refused.err
    assert "--main-address" in refused.err
    given = harchos(capsys, "run", "train", "--hubs", "local,far", "--main-address",
                    "192.0.2.1", "--dry-run", "--json")  # fmt: skip
    assert given.code == 0, given.err
    (far,) = given.json()["nodes"]
    assert flag(far["argv"], "--main_process_ip") == "192.0.2.1"
    # The SSH hub first: the others reach the main node at its SSH host.
    ssh_first = harchos(capsys, "run", "train", "--hubs", "far,local", "--dry-run", "--json")
    assert ssh_first.code == 0, ssh_first.err
    assert flag(ssh_first.json()["launch"]["argv"], "--main_process_ip") == "127.0.0.2"
    # Deferred: one start for both machines, planned on the mean of their two regions (compared
    # over the same duration: a start inside an hour makes a longer window span the next one).
    deferred = harchos(capsys, "run", "train", "--hubs", "far,local", "--defer-until-green",
                       "--dry-run", "--json")  # fmt: skip
    assert deferred.code == 0, deferred.err
    alone = [
        harchos(capsys, "run", "train", "--hub", hub, "--defer-until-green", "--at",
                deferred.json()["planned_start"], "--dry-run", "--json")
        for hub in ("far", "local")
    ]  # fmt: skip
    assert deferred.json()["region"] == "FR+eu-west"
    assert deferred.json()["expected_intensity"] == pytest.approx(
        sum(a.json()["now_intensity"] for a in alone) / 2, rel=1e-3
    )


def test_an_interruptible_multi_node_job_pauses_on_the_mean_of_its_machines_grids(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    traces: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harchos_cli.jobs import autoshift
    from harchos_cli.jobs.clock import SimulatedClock
    from harchos_cli.plan.shifting import Step

    root = new_project(capsys, tmp_path)
    for name, region in (("de", "DE"), ("fr", "FR")):
        added = harchos(capsys, "hubs", "add", name, "--ssh", f"me@{name}.example",
                        "--region", region)  # fmt: skip
        assert added.code == 0, added.err
    eco4cast = traces / "eco4cast"
    replay = f"replay:{eco4cast / 'DE_2022_hourly.csv'},{eco4cast / 'FR_2022_hourly.csv'}"
    clock = SimulatedClock(datetime(2022, 3, 1, 3, tzinfo=UTC), 1.0, time.time())
    request = {
        "kind": "train", "argv": [], "hub": "de", "defer": False, "duration_s": 7200.0,
        "deadline": "2022-03-01T15:00:00Z", "threshold": None, "provider": replay, "gpus": 0,
        "clock": clock.as_json(), "nodes": ["de", "fr"],
        "shift": {"migrate": False, "interruptible": True, "scale": None},
    }  # fmt: skip
    seen: dict[str, object] = {}

    def step(**kwargs: object) -> Step:
        seen.update(kwargs)
        return Step("run", str(kwargs["hub"]), 1, "stay", {})

    monkeypatch.setattr(autoshift, "plan_step", step)
    store = JobStore()
    try:
        row = store.create(Job(
            id=new_id(), kind="train", name="demo", project_dir=str(root), state="running",
            request=request, hub="de",
        ))  # fmt: skip
        assert autoshift.consider(store, row, clock) is None
    finally:
        store.close()
    outlooks = seen["outlooks"]
    assert isinstance(outlooks, dict)
    assert list(outlooks) == ["de"]
    # 03:00 on 2022-03-01: Germany 543 g, France 98 g (the traces' lifecycle column).
    assert outlooks["de"][0] == pytest.approx((543.31 + 97.55) / 2)
