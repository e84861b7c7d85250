"""`harchos run serve` end to end: replicas on two sshd hubs in two replayed grids, behind the
router, through the very path users take, with harchos's vLLM TEST DOUBLE standing in for
`vllm serve` (`[serve] vllm_command`).

Great Britain and Spain on 2022-02-13: at 07:00 GB is greener (117 against 180 gCO2eq/kWh), from
09:00 Spain is (132 against 159), and at 10:00 by a third (119 against 177). At 600× a clock hour
lasts 6 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirunner import harchos
from polling import wait_until
from sshd import Sshd, client_key_fixture, sshd_factory_fixture
from test_pause_migrate import add_hub
from test_remote_jobs import alive

__all__ = ["client_key_fixture", "sshd_factory_fixture"]

MODEL = "acme/tiny-chat"
START = "2022-02-13T07:00:00Z"


def serving_project(where: Path, hubs: list[str], replicas: int) -> Path:
    where.mkdir(parents=True)
    (where / "harchos.toml").write_text(
        '[job]\nname = "svc"\nkind = "serve"\n\n'
        "[serve]\n"
        f'model = "{MODEL}"\n'
        f'vllm_command = "{sys.executable} -m harchos_cli.testing.vllm_double"\n'
        "port = 18500\nrouter_port = 0\n"
        f"replicas = {replicas}\nhubs = {hubs!r}\n".replace("'", '"')
        + 'shutdown_timeout = 5\nreplan_interval = "1h"\nmin_time_between_moves = "1h"\n'
        'extra_args = ["--token-delay", "0.005"]\n'
    )
    return where


@pytest.fixture
def grid(
    capsys: pytest.CaptureFixture[str], sshd_factory: Callable[[str], Sshd], traces: Path
) -> Iterator[tuple[Sshd, Sshd, list[str]]]:
    gb, es = sshd_factory("gb"), sshd_factory("es")
    add_hub(capsys, gb, "GB")
    add_hub(capsys, es, "ES")
    eco4cast = traces / "eco4cast"
    replay = f"replay:{eco4cast / 'GB_2022_hourly.csv'},{eco4cast / 'ES_2022_hourly.csv'}"
    yield gb, es, ["--provider", replay, "--at", START, "--speedup", "600"]
    # A failed test must not leave replicas or a controller behind.
    with contextlib.suppress(Exception):
        harchos(capsys, "serve", "stop", "--wait", "30")


def status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    shown = harchos(capsys, "serve", "status", "--json")
    assert shown.code == 0, shown.err
    return dict(shown.json())


def replicas(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in status(capsys)["replicas"]}


def all_ready(capsys: pytest.CaptureFixture[str], count: int) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        now = replicas(capsys)
        ready = len(now) == count and all(r["state"] == "ready" for r in now.values())
        return now if ready else None

    return wait_until(check, timeout=60)  # type: ignore[no-any-return]


def complete(router: str, text: str = "hello there") -> httpx.Response:
    return httpx.post(
        f"{router}/v1/completions",
        json={"model": MODEL, "prompt": text, "max_tokens": 4},
        timeout=30,
    )


def served(capsys: pytest.CaptureFixture[str], replica: str, at_least: int) -> int:
    """Wait until the status (saved every second) shows `replica` served `at_least` requests."""

    def check() -> int | None:
        count = int(replicas(capsys)[replica].get("requests") or 0)
        return count if count >= at_least else None

    return wait_until(check, timeout=20)  # type: ignore[no-any-return]


def hub_pid(server: Sshd, hub_job_id: str) -> int:
    return int((server.root / ".harchos" / "jobs" / hub_job_id / "pid").read_text().split()[0])


def test_replicas_take_traffic_by_their_grid_survive_a_crash_and_stop_without_a_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, grid: tuple[Sshd, Sshd, list[str]]
) -> None:
    gb, es, clock = grid
    os.chdir(serving_project(tmp_path / "svc", ["gb", "es"], replicas=2))
    started = harchos(capsys, "run", "serve", "--detach", "--json", *clock)
    assert started.code == 0, started.err
    data = started.json()
    router = data["router_url"]
    assert sorted(r["hub"] for r in data["replicas"]) == ["es", "gb"]
    assert {r["region"] for r in data["replicas"]} == {"GB", "ES"}
    # Two hubs on one machine: the replicas never share a port.
    assert len({r["url"] for r in data["replicas"]}) == 2
    all_ready(capsys, 2)

    # Before 09:00 Great Britain is greener: every request goes there.
    for _ in range(5):
        assert complete(router).status_code == 200
    assert served(capsys, "gb/0", 5) == 5
    assert int(replicas(capsys)["es/0"].get("requests") or 0) == 0

    # From 10:00 (clock) Spain is: the same client, nothing changed, and the traffic moves.
    wait_until(lambda: (replicas(capsys)["es/0"].get("intensity") or 999) < 125, timeout=60)
    for _ in range(5):
        assert complete(router).status_code == 200
    assert served(capsys, "es/0", 5) == 5
    shown = replicas(capsys)
    assert shown["es/0"]["share"] == pytest.approx(0.5, abs=0.01)
    assert shown["gb/0"]["intensity"] > shown["es/0"]["intensity"]

    # Spain's replica crashes: requests fail over to Great Britain, and it comes back.
    first = shown["es/0"]["hub_job_id"]
    os.kill(hub_pid(es, first), signal.SIGKILL)
    for _ in range(5):
        assert complete(router).status_code == 200
    back = wait_until(
        lambda: (r := replicas(capsys)["es/0"])["state"] == "ready" and r["restarts"] == 1 and r,
        timeout=60,
    )
    assert back["hub_job_id"] != first
    restarts = [d for d in status(capsys)["decisions"] if d["action"] == "restart"]
    assert len(restarts) == 1
    assert "es/0" in restarts[0]["reason"]

    # Stop drains and stops everything: no replica, no controller, no router is left.
    ids = [r["hub_job_id"] for r in replicas(capsys).values()]
    pids = [hub_pid(gb if i.startswith(f"{data['deployment_id']}-gb") else es, i) for i in ids]
    stopped = harchos(capsys, "serve", "stop", "--json")
    assert stopped.code == 0, stopped.err
    assert stopped.json()["state"] == "stopped"
    assert stopped.json()["replicas"] == []
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(httpx.ConnectError):
        complete(router)
    logs = harchos(capsys, "serve", "logs", "gb/0")
    assert logs.code == 0, logs.err
    assert "test double, not vLLM" in logs.out


def test_a_replica_follows_the_sun_under_steady_load_and_no_request_is_dropped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, grid: tuple[Sshd, Sshd, list[str]]
) -> None:
    _, es, clock = grid
    os.chdir(serving_project(tmp_path / "svc", ["gb", "es"], replicas=1))
    started = harchos(capsys, "run", "serve", "--detach", "--json", *clock)
    assert started.code == 0, started.err
    router = started.json()["router_url"]
    assert [r["hub"] for r in started.json()["replicas"]] == ["gb"]
    all_ready(capsys, 1)

    failures: list[str] = []
    answered: list[float] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                response = complete(router, f"{len(answered)} steady words")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text}")
            else:
                answered.append(time.monotonic())

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        moved = wait_until(
            lambda: next((d for d in status(capsys)["decisions"] if d["action"] == "move"), None),
            timeout=120,
        )
        after = len(answered)
        wait_until(lambda: len(answered) > after + 20, timeout=30)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    assert failures == []
    assert moved["hub"] == "es"
    assert moved["replaced"] == "gb/0"
    started_move = next(d for d in status(capsys)["decisions"] if d["action"] == "move-started")
    assert started_move["target_intensity"] < 0.8 * started_move["source_intensity"]
    now = replicas(capsys)
    assert list(now) == ["es/0"]
    assert now["es/0"]["state"] == "ready"
    assert int(now["es/0"].get("requests") or 0) > 0
    assert alive(hub_pid(es, now["es/0"]["hub_job_id"]))
