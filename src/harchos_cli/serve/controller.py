"""The serving controller: runs one deployment's replicas on hubs, behind its router.

One controller per deployment, guaranteed by the same `flock` as a job's supervisor (released by
the kernel when it dies, even by SIGKILL). Replicas are launched detached on their hubs (the hub
runner, as jobs), so a dead controller loses nothing: the next `harchos serve` command revives it,
and it takes the recorded replicas over (a launch is idempotent by its hub job id) and binds the
router to the same address.

On one asyncio loop: the router (requests, health and load of every replica, intensities), and
this controller's loop:
- a replica that died (its process exited, or `/health` answers 503) is launched again, with
  backoff (1, 2, 4 … 60 s between restarts);
- follow the sun: every `replan_interval` (on the deployment's clock) the replicas' hubs are
  re-planned (`plan.serving.next_move`); a move starts the new replica, waits until it is ready,
  drains the old one (the router sends it nothing new; running + waiting + in flight reach 0),
  then stops it with SIGTERM (vLLM's `--shutdown-timeout` drain), so no request is dropped;
- stop (`harchos serve stop`, or SIGTERM/SIGINT to a foreground `harchos run serve`): every
  replica is drained, then stopped, then the router closes.
Every restart, move and stop is recorded with its reason (`harchos serve status --json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harchos_cli.errors import HarchosError, HubError, UsageError
from harchos_cli.hubs.base import LOCAL, Hub, LaunchSpec
from harchos_cli.jobs.clock import from_json
from harchos_cli.plan.serving import Move, next_move
from harchos_cli.serve.routing import Replica, ReplicaTable, RoutingPolicy
from harchos_cli.serve.settings import ServeSettings
from harchos_cli.serve.store import Deployment, ReplicaRow, ServeStore
from harchos_cli.timeparse import iso, parse_duration, utcnow

POLL_S = 0.5
STATUS_EVERY_S = 5.0  # a replica's process is asked for on its hub this often
SAVE_EVERY_S = 1.0  # what `serve status` shows is this fresh
MAX_BACKOFF_S = 60.0
READY_TIMEOUT_S = 1800.0  # a move's new replica gets this long to load its model
STOP_GRACE_S = 15.0  # beyond `shutdown_timeout`, before SIGKILL
DEAD_CONFIRM_S = 3.0  # a replica answering as dead this long is launched again


class Controller:
    """Runs a deployment until it is stopped. Use `run()`."""

    def __init__(
        self, deployment_id: str, notice: Callable[[str], None] | None = None,
        on_ready: Callable[[Deployment, list[ReplicaRow]], None] | None = None,
    ) -> None:  # fmt: skip
        self.deployment_id = deployment_id
        self.notice = notice or (lambda _message: None)
        self.on_ready = on_ready
        self.store = ServeStore()
        self.stop_event: asyncio.Event | None = None
        self.moving_in: set[str] = set()  # replicas a move is bringing up

    def run(self) -> Deployment:
        """Serve until stopped; the deployment's final row.

        Raises:
            AlreadySupervisedError: another process runs this deployment.
        """
        from harchos_cli.jobs.liveness import supervisor_lock

        with supervisor_lock(self.deployment_id):
            try:
                asyncio.run(self._main())
            except HarchosError as exc:
                self.store.update(self.deployment_id, state="failed", message=str(exc))
                raise
            return self.store.get(self.deployment_id)

    # -- set-up ------------------------------------------------------------------------------

    async def _main(self) -> None:
        from harchos_cli.hubs import inventory
        from harchos_cli.serve.router import Router

        deployment = self.store.get(self.deployment_id)
        config = deployment.settings
        self.settings = ServeSettings.model_validate(config["serve"])
        self.hubs: dict[str, Hub] = {
            name: inventory.from_json(data) for name, data in config["hubs"].items()
        }
        self.remote_dirs: dict[str, str] = dict(config.get("remote_dirs") or {})
        self.project_dir = deployment.project_dir
        self.keyed = bool(config.get("api_key"))  # started with an API key (never stored)
        self.clock = from_json(config.get("clock"))
        self.intensity = IntensitySource(config.get("provider"), deployment.project_dir,
                                          self.clock)  # fmt: skip
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_event.set)
        self.table = ReplicaTable()
        speedup = getattr(self.clock, "speedup", 1.0)
        self.router = Router(
            self.table, RoutingPolicy(latency_budget_s=self.settings.latency_budget_ms / 1000),
            intensity=self.intensity.of_region, refresh_s=max(0.5, 300.0 / speedup), poll_s=0.5,
        )  # fmt: skip
        # A revived controller binds where the clients already send their requests.
        port = urlsplit(deployment.router_url).port if deployment.router_url else None
        host, port = self.settings.router_host, port or self.settings.router_port
        try:
            url = await self.router.start(host, port)
        except OSError as exc:
            raise UsageError(
                f"the router cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="choose another [serve] router_port or --router-port (0 picks a free one)",
            ) from None
        self.store.update(self.deployment_id, router_url=url, controller_pid=os.getpid(),
                          heartbeat=iso(utcnow()))  # fmt: skip
        self.notice(f"router listening on {url}")
        try:
            rows = self.store.replicas(self.deployment_id)
            if not rows:
                rows = await self._place(config.get("placement") or [])
            self.rows = {row.id: row for row in rows if row.state != "stopped"}
            for row in self.rows.values():
                self.table.add(Replica(row.id, row.hub, row.region, row.url))
                await self._launch(row)
            self.store.advance(self.deployment_id, ("starting",), "running")
            await self._loop()
        finally:
            await self.router.close()

    async def _place(self, hubs: list[str]) -> list[ReplicaRow]:
        """The replicas' rows, on the hubs `harchos run serve` chose (in order)."""
        rows: list[ReplicaRow] = []
        for hub_name in hubs:
            hub = self.hubs[hub_name]
            slot = sum(1 for row in rows if row.hub == hub_name)
            rows.append(await self._new_row(hub, slot, rows))
        for row in rows:
            self.store.save_replica(row)
        return rows

    def _gpus(self, hub: Hub, slot: int) -> str | None:
        """The GPUs of the replica in `slot` on `hub` (None where the hub has no GPU count)."""
        tp = self.settings.tensor_parallel_size
        return ",".join(str(i) for i in range(slot * tp, (slot + 1) * tp)) if hub.gpus else None

    async def _new_row(self, hub: Hub, slot: int, others: list[ReplicaRow]) -> ReplicaRow:
        """A replica in `slot` on `hub`: its GPUs, and the first port from `[serve] port` up that
        is free on the hub and not given to another replica on the same host (two hubs may be
        one machine)."""
        from harchos_cli.hubs import inventory, jobs_for

        host = "127.0.0.1" if hub.transport == LOCAL else (hub.host or "127.0.0.1")
        taken = [r.port for r in others if urlsplit(r.url).hostname == host]
        start = max([self.settings.port, *(port + 1 for port in taken)])
        port = await asyncio.to_thread(jobs_for(hub).free_port, start)
        return ReplicaRow(
            deployment_id=self.deployment_id, id=f"{hub.name}/{slot}", hub=hub.name, slot=slot,
            port=port, url=f"http://{host}:{port}", state="starting",
            hub_json=inventory.as_json(hub), region=hub.region, gpu_ids=self._gpus(hub, slot),
        )  # fmt: skip

    async def _launch(self, row: ReplicaRow) -> None:
        """Start the replica's current generation on its hub (nothing when it runs already)."""
        from harchos_cli.hubs import jobs_for

        hub = self.hubs[row.hub]
        env = {
            "HARCHOS_HUB": hub.name, "HARCHOS_REGION": hub.region or "",
            "HARCHOS_DEPLOYMENT": self.deployment_id, "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        if row.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = row.gpu_ids
        secret = []
        key = os.environ.get(self.settings.api_key_env)
        if not key and self.keyed:
            raise HubError(
                f"${self.settings.api_key_env} is not in this controller's environment: the "
                f"replica would serve without its API key, so it is not launched",
                hint="stop the deployment and start it again from a shell that has the key",
            )
        if key:
            env["VLLM_API_KEY"] = key
            secret = ["VLLM_API_KEY"]
        cwd = self.remote_dirs.get(hub.name) or self.project_dir
        spec = LaunchSpec(row.hub_job_id, self.settings.replica_argv(row.port), cwd, env, secret)
        await asyncio.to_thread(jobs_for(hub).launch, spec)
        if row.launched_at is None:
            row.launched_at = iso(utcnow())
            self.store.save_replica(row)

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self.stop_event is not None
        last_status: dict[str, float] = {}
        next_restart: dict[str, float] = {}
        dead_since: dict[str, float] = {}
        last_save = 0.0
        ready_reported = False
        between = parse_duration(self.settings.replan_interval)
        next_replan = self.clock.now() + between
        last_move: float | None = None
        moving: asyncio.Task[None] | None = None
        while not self.stop_event.is_set():
            current = self.store.get(self.deployment_id)
            if current.stop_requested:
                break
            now = time.monotonic()
            for row in list(self.rows.values()):
                entry = self.table.get(row.id)
                # A replica being launched (a restart) is not checked until its launch returned
                # (its hub does not know it yet); one a move brings up is the move's to judge.
                if (
                    entry is None or entry.state in ("draining", "stopped")
                    or not row.launched_at or row.id in self.moving_in
                ):  # fmt: skip
                    continue
                exited = False
                if now - last_status.get(row.id, 0.0) > STATUS_EVERY_S:
                    last_status[row.id] = now
                    exited = await self._exited(row)
                    if exited:
                        self.table.set_state(row.id, "dead")
                entry = self.table.get(row.id)
                if entry is None or entry.state != "dead":
                    dead_since.pop(row.id, None)
                    continue
                # Its process is gone, or it has answered as dead (503, refused) for a while: a
                # replica the router saw fail once is not killed while it may still be serving.
                dead_for = now - dead_since.setdefault(row.id, now)
                confirmed = exited or dead_for >= DEAD_CONFIRM_S
                if confirmed and now >= next_restart.get(row.id, 0.0):
                    dead_since.pop(row.id, None)
                    await self._restart(row)
                    next_restart[row.id] = now + min(MAX_BACKOFF_S, 2.0**row.restarts)
            if now - last_save > SAVE_EVERY_S:
                last_save = now
                self._save()
                if not ready_reported and all(
                    e.state == "ready" for e in self.table.all()
                ) and self.table.all():  # fmt: skip
                    ready_reported = True
                    self.notice("every replica is ready")
                    if self.on_ready is not None:
                        self.on_ready(self.store.get(self.deployment_id), list(self.rows.values()))
            if moving is not None and moving.done():
                moving = None
            if moving is None and self.clock.now() >= next_replan:
                next_replan = self.clock.now() + between
                wait = parse_duration(self.settings.min_time_between_moves).total_seconds()
                wait /= getattr(self.clock, "speedup", 1.0)
                if last_move is None or now - last_move >= wait:
                    move = await self._plan_move()
                    if move is not None:
                        last_move = now
                        moving = asyncio.create_task(self._move(move))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), POLL_S)
        if moving is not None:
            moving.cancel()
            with contextlib.suppress(asyncio.CancelledError, HarchosError):
                await moving
        await self._stop_all()

    async def _exited(self, row: ReplicaRow) -> bool:
        from harchos_cli.hubs import jobs_for

        try:
            status = await asyncio.to_thread(jobs_for(self.hubs[row.hub]).status, row.hub_job_id)
        except HarchosError as exc:
            self.notice(f"replica {row.id}: hub {row.hub} did not answer ({exc})")
            return False
        return status.state != "running"

    async def _restart(self, row: ReplicaRow) -> None:
        from harchos_cli.hubs import jobs_for

        jobs = jobs_for(self.hubs[row.hub])
        with contextlib.suppress(HarchosError):
            await asyncio.to_thread(jobs.signal, row.hub_job_id, signal.SIGKILL)
        row.generation += 1
        row.restarts += 1
        row.launched_at = None
        reason = f"replica {row.id} died; launching it again (restart {row.restarts})"
        self.store.decide(self.deployment_id, "restart", row.hub, reason, replica=row.id,
                          restarts=row.restarts)  # fmt: skip
        self.notice(reason)
        self.table.set_state(row.id, "starting")
        try:
            await self._launch(row)
        except HarchosError as exc:
            self.notice(f"replica {row.id}: could not launch it again ({exc})")
            self.table.set_state(row.id, "dead")

    def _save(self) -> None:
        shares = self.table.shares()
        for row in self.rows.values():
            entry = self.table.get(row.id)
            if entry is None:
                continue
            row.state = entry.state
            row.stats = {
                "intensity": entry.intensity, "running": entry.running,
                "waiting": entry.waiting, "in_flight": entry.in_flight,
                "requests": entry.requests, "share": round(shares.get(row.id, 0.0), 4),
                "latency_s": entry.latency_s,
            }  # fmt: skip
            self.store.save_replica(row)
        self.store.update(self.deployment_id, heartbeat=iso(utcnow()))

    # -- follow the sun ----------------------------------------------------------------------

    async def _plan_move(self) -> Move | None:
        hubs = list(self.hubs)
        current = {row.id: row.hub for row in self.rows.values()}
        if len(hubs) <= len(set(current.values())):
            return None
        intensities = {
            name: await asyncio.to_thread(self.intensity.of_region, hub.region)
            if hub.region else None
            for name, hub in self.hubs.items()
        }  # fmt: skip
        capacity = {
            name: (hub.gpus // self.settings.tensor_parallel_size) if hub.gpus else None
            for name, hub in self.hubs.items()
        }
        return next_move(current, hubs, intensities, capacity,
                         self.settings.min_saving_percent / 100)  # fmt: skip

    async def _move(self, move: Move) -> None:
        """Start the replica on the target, wait until it is ready, drain the old one, stop it;
        the old one keeps serving until the new one is ready, and on any failure."""
        old = self.rows[move.replica]
        target = self.hubs[move.target]
        slot = max((r.slot + 1 for r in self.rows.values() if r.hub == target.name), default=0)
        new = await self._new_row(target, slot, list(self.rows.values()))
        self.store.decide(self.deployment_id, "move-started", move.target, move.reason(),
                          replica=old.id, new_replica=new.id, source=move.source,
                          source_intensity=move.source_intensity,
                          target_intensity=move.target_intensity)  # fmt: skip
        self.notice(f"moving replica {old.id} to hub {move.target}: {move.reason()}")
        self.moving_in.add(new.id)
        self.rows[new.id] = new
        self.store.save_replica(new)
        self.table.add(Replica(new.id, new.hub, new.region, new.url))
        started = time.monotonic()
        try:
            await self._launch(new)
            while True:
                entry = self.table.get(new.id)
                if entry is not None and entry.state == "ready":
                    break
                if entry is None or entry.state == "dead" or (
                    time.monotonic() - started > READY_TIMEOUT_S
                ):  # fmt: skip
                    raise _MoveFailed(f"the new replica on hub {move.target} never became ready")
                await asyncio.sleep(POLL_S / 2)
        except (HarchosError, _MoveFailed, asyncio.CancelledError) as exc:
            self.moving_in.discard(new.id)
            await self._stop_replica(new, drain=False)
            if not isinstance(exc, asyncio.CancelledError):
                reason = f"move of {old.id} to hub {move.target} failed ({exc}); it stays"
                self.store.decide(self.deployment_id, "move-failed", move.target, reason)
                self.notice(reason)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.moving_in.discard(new.id)
        await self._stop_replica(old, drain=True)
        reason = f"replica {new.id} serves instead of {old.id}: {move.reason()}"
        took = round(time.monotonic() - started, 3)
        self.store.decide(self.deployment_id, "move", move.target, reason, replica=new.id,
                          replaced=old.id, seconds=took)  # fmt: skip
        self.notice(reason)

    # -- stopping ----------------------------------------------------------------------------

    async def _stop_replica(self, row: ReplicaRow, *, drain: bool) -> None:
        """Drain `row` (no new requests; wait for running + waiting + in flight = 0, at most
        `shutdown_timeout`), stop it with SIGTERM, and after the grace SIGKILL; forget it."""
        from harchos_cli.hubs import jobs_for

        jobs = jobs_for(self.hubs[row.hub])
        if self.table.get(row.id) is not None:
            self.table.set_state(row.id, "draining")
        limit = time.monotonic() + self.settings.shutdown_timeout
        while drain and time.monotonic() < limit:
            entry = self.table.get(row.id)
            if entry is None or entry.running + entry.waiting + entry.in_flight == 0:
                break
            await asyncio.sleep(POLL_S / 2)
        with contextlib.suppress(HarchosError):
            await asyncio.to_thread(jobs.terminate, row.hub_job_id, signal.SIGTERM)
        limit = time.monotonic() + self.settings.shutdown_timeout + STOP_GRACE_S
        while time.monotonic() < limit:
            with contextlib.suppress(HarchosError):
                status = await asyncio.to_thread(jobs.status, row.hub_job_id)
                if status.state != "running":
                    break
            await asyncio.sleep(POLL_S)
        else:
            with contextlib.suppress(HarchosError):
                await asyncio.to_thread(jobs.signal, row.hub_job_id, signal.SIGKILL)
        self.table.remove(row.id)
        self.rows.pop(row.id, None)
        row.state = "stopped"
        self.store.save_replica(row)

    async def _stop_all(self) -> None:
        self.store.advance(self.deployment_id, ("starting", "running"), "stopping")
        self.notice("stopping: draining every replica")
        rows = list(self.rows.values())
        for row in rows:
            if self.table.get(row.id) is not None:
                self.table.set_state(row.id, "draining")
        await asyncio.gather(*(self._stop_replica(row, drain=True) for row in rows))
        self.store.decide(self.deployment_id, "stop", None,
                          f"stopped {len(rows)} replica(s) after draining them")  # fmt: skip
        self.store.advance(self.deployment_id, ("stopping",), "stopped", controller_pid=None)
        self.notice("stopped")


class _MoveFailed(Exception):
    pass


class IntensitySource:
    """The current intensity of a region, from the deployment's provider and clock (blocking;
    the router calls it in a thread)."""

    def __init__(self, provider: str | None, project_dir: str, clock: Any) -> None:
        self.provider = provider
        self.project_dir = project_dir
        self.clock = clock
        self._service: Any = None

    def of_region(self, region: str | None) -> float | None:
        from harchos_cli.carbon import regions
        from harchos_cli.carbon.service import ForecastService
        from harchos_cli.jobs.spec import find

        if not region:
            return None
        try:
            if self._service is None:
                project_file = find(Path(self.project_dir))
                self._service = ForecastService.from_settings(
                    self.provider, project_file=project_file
                )
            forecast = self._service.forecast(regions.resolve(region), self.clock.now(), 1)
        except HarchosError:
            return None
        return float(forecast.points[0].intensity) if forecast.points else None


def spawn(deployment_id: str) -> int:
    """Start a detached controller for `deployment_id` in its own session; its pid."""
    from harchos_cli.jobs.liveness import spawn as spawn_detached

    return spawn_detached(deployment_id, "harchos_cli.serve.controller")


def revive(store: ServeStore) -> list[str]:
    """Start the controller of every live deployment that has none; their ids."""
    from harchos_cli.jobs.liveness import is_supervised

    revived = []
    for deployment in store.live():
        if not is_supervised(deployment.id):
            spawn(deployment.id)
            revived.append(deployment.id)
    return revived


def main(argv: list[str] | None = None) -> int:
    """`python -m harchos_cli.serve.controller DEPLOYMENT_ID`: the detached controller."""
    from harchos_cli.jobs.liveness import AlreadySupervisedError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harchos_cli.serve.controller DEPLOYMENT_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def line(message: str) -> None:
        print(f"{iso(utcnow())} {message}", file=sys.stderr, flush=True)

    try:
        deployment = Controller(args[0], notice=line).run()
    except AlreadySupervisedError:
        return 0
    except HarchosError as exc:
        print(f"harchos serve: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0 if deployment.state == "stopped" else 1


if __name__ == "__main__":
    sys.exit(main())
