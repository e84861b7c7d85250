"""harchos.toml describes one job that may move between the hubs and rescale within limits."""

from __future__ import annotations

import tomllib

import train
from conftest import PROJECT


def test_every_carbon_hub_is_described_with_its_region() -> None:
    config = tomllib.loads((PROJECT / "harchos.toml").read_text())
    hubs = config["hubs"]
    assert config["carbon"]["hubs"] == list(hubs)
    assert len(hubs) >= 2
    assert len({hub["region"] for hub in hubs.values()}) == len(hubs)
    assert all(hub["gpus"] >= 1 and hub["host"] for hub in hubs.values())


def test_limits_agree_with_the_training_script() -> None:
    config = tomllib.loads((PROJECT / "harchos.toml").read_text())
    job = config["job"]
    assert 1 <= job["min_processes"] <= job["max_processes"]
    assert job["pause_exit_code"] == train.PAUSED_EXIT_CODE
    cfg = train.load_config(train.PROJECT_CONFIG, [])
    assert job["checkpoint_dir"] == cfg.checkpoint_dir
    assert config["checkpoints"]["keep"] == cfg.keep_checkpoints
    assert config["carbon"]["allow_migration"] and config["carbon"]["allow_rescale"]


def test_the_job_trains_on_the_gpus_of_one_hub() -> None:
    config = tomllib.loads((PROJECT / "harchos.toml").read_text())
    job = config["job"]
    assert 1 <= job["gpus"] == job["max_processes"]
    assert all(job["gpus"] <= hub["gpus"] for hub in config["hubs"].values())
    # Both ends of the rescaling range split the global batch evenly (train.py refuses a number of
    # processes that does not; train.toml lists the ones that do).
    cfg = train.load_config(train.PROJECT_CONFIG, [])
    assert cfg.batch_size % job["min_processes"] == 0
    assert cfg.batch_size % job["max_processes"] == 0
