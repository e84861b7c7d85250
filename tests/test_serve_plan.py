"""Serving before anything runs: where replicas go, when one moves, and the `vllm serve` line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import harchos

from harchos_cli.jobs.spec import load_project
from harchos_cli.plan.serving import next_move, place
from harchos_cli.serve.settings import ServeSettings, load


def test_replicas_go_to_the_greenest_hubs_one_per_hub_first() -> None:
    intensities = {"de": 400.0, "fr": 60.0, "es": 150.0, "pl": None}
    hubs = ["de", "fr", "es", "pl"]
    no_limit: dict[str, int | None] = dict.fromkeys(hubs)
    assert place(hubs, intensities, 2, no_limit) == ["fr", "es"]
    assert place(hubs, intensities, 5, no_limit) == ["fr", "es", "de", "pl", "fr"]
    # A hub's GPUs bound it: fr holds one replica, so the third goes round again elsewhere.
    capacity: dict[str, int | None] = {"de": 2, "fr": 1, "es": 2, "pl": 0}
    assert place(hubs, intensities, 5, capacity) == ["fr", "es", "de", "es", "de"]
    with pytest.raises(ValueError, match="hold 5 replica"):
        place(hubs, intensities, 6, capacity)


def test_a_replica_moves_only_to_an_unused_hub_that_is_greener_by_the_margin() -> None:
    hubs = ["gb", "es", "fr"]
    limits: dict[str, int | None] = dict.fromkeys(hubs)
    current = {"gb/0": "gb"}
    move = next_move(current, hubs, {"gb": 177.0, "es": 119.0, "fr": None}, limits, 0.2)
    assert move is not None
    assert (move.replica, move.source, move.target) == ("gb/0", "gb", "es")
    assert move.saving == pytest.approx(1 - 119 / 177)
    assert "hub es is greener" in move.reason()
    # 17 % greener is under a 20 % margin; a hub without data is never a target.
    assert next_move(current, hubs, {"gb": 159.0, "es": 132.0, "fr": None}, limits, 0.2) is None
    # The dirtiest replica moves first; a hub that holds one already is not a target.
    two = {"gb/0": "gb", "es/0": "es"}
    move = next_move(two, hubs, {"gb": 300.0, "es": 200.0, "fr": 50.0}, limits, 0.2)
    assert move is not None
    assert (move.replica, move.target) == ("gb/0", "fr")
    full: dict[str, int | None] = {"gb": None, "es": None, "fr": 0}
    assert next_move(two, hubs, {"gb": 300.0, "es": 200.0, "fr": 50.0}, full, 0.2) is None


def test_the_replica_command_line_is_vllm_serve_with_the_tables_settings() -> None:
    settings = ServeSettings(
        model="Qwen/Qwen2.5-0.5B-Instruct", served_model_name="qwen", max_model_len=2048,
        extra_args=["--enable-prefix-caching"], vllm_command="/opt/venv/bin/vllm",
    )  # fmt: skip
    assert settings.replica_argv(8001) == [
        "/opt/venv/bin/vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct",
        "--served-model-name", "qwen", "--max-model-len", "2048", "--dtype", "auto",
        "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "1",
        "--host", "0.0.0.0", "--port", "8001", "--shutdown-timeout", "30",
        "--enable-prefix-caching",
    ]  # fmt: skip


def test_the_vllm_command_comes_from_the_environment_before_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "harchos.toml").write_text('[serve]\nmodel = "m"\nvllm_command = "vllm"\n')
    project = load_project(tmp_path)
    assert load(project).vllm_argv() == ["vllm"]
    monkeypatch.setenv("HARCHOS_VLLM_COMMAND", "python3 -m harchos_cli.testing.vllm_double")
    assert load(project).vllm_argv() == ["python3", "-m", "harchos_cli.testing.vllm_double"]
    assert load(project, {"replicas": 3, "router_port": None}).replicas == 3


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("", "has no [serve] table"),
        ('[serve]\nmodel = "m"\nreplica = 2\n', "unknown key serve.replica"),
        ('[serve]\nmodel = "m"\nreplicas = 0\n', "serve.replicas: expected"),
        ('[serve]\nmodel = "m"\nvllm_command = "  "\n', "serve.vllm_command"),
        ('[serve]\nmodel = "m"\nreplan_interval = "soon"\n', "serve.replan_interval"),
        ('[serve]\nmodel = "m"\ngpu_memory_utilization = 1.5\n', "gpu_memory_utilization"),
    ],
)
def test_a_bad_serve_table_is_one_line_with_a_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, table: str, message: str
) -> None:
    (tmp_path / "harchos.toml").write_text('[job]\nkind = "serve"\n' + table)
    os.chdir(tmp_path)
    result = harchos(capsys, "run", "serve", "--json")
    assert result.code == 2, result.err
    assert message in result.err
    assert "hint:" in result.err
    assert "Traceback" not in result.err


def test_unknown_hubs_and_too_many_replicas_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "serve"\n[serve]\nmodel = "m"\ntensor_parallel_size = 2\n'
        '[hubs.box]\ntransport = "local"\ngpus = 2\n'
    )
    os.chdir(tmp_path)
    unknown = harchos(capsys, "run", "serve", "--hubs", "nowhere")
    assert unknown.code == 2
    assert "nowhere" in unknown.err
    full = harchos(capsys, "run", "serve", "--hubs", "box", "--replicas", "2")
    assert full.code == 2
    assert "cannot place 2 replica(s) of 2 GPU(s)" in full.err


def test_a_router_port_in_use_fails_the_deployment_with_a_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import socket
    import sys

    (tmp_path / "harchos.toml").write_text(
        '[job]\nkind = "serve"\n[carbon]\nregion = "FR"\n'
        f'[serve]\nmodel = "m"\nvllm_command = "{sys.executable} -m '
        'harchos_cli.testing.vllm_double"\n'
    )
    os.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = harchos(capsys, "run", "serve", "--router-port", str(port), "--detach", "--json")
        assert started.code == 1, started.err
        assert started.json()["state"] == "failed"
        # The project's newest deployment, failed, says why.
        shown = harchos(capsys, "serve", "status", "--json")
        assert shown.code == 0, shown.err
        assert shown.json()["state"] == "failed"
        assert f"cannot listen on 127.0.0.1:{port}" in shown.json()["message"]
        assert shown.json()["replicas"] == []
