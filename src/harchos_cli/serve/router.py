"""The carbon-aware router: an OpenAI-compatible reverse proxy in front of vLLM replicas.

`Router` serves `/v1/*` by forwarding each request (method, path, query, body and headers, less the
hop-by-hop ones) to the first replica of `routing.ranked` and passing the answer back: a server-sent
event stream chunk by chunk as it arrives, any other answer whole (vLLM sends those in one piece
once generation ends). Its own `/health` and `/metrics` (Prometheus text) answer beside them.

Failures, and what the client sees:

- A replica that refuses the connection, drops it before answering, answers 503, or fails before the
  whole non-streaming answer arrived, has not sent the client anything: the router counts a failure
  and tries the next replica of the ranking. A refused connection also marks a ready replica dead at
  once (the monitor brings it back when its `/health` answers 200 again). Only when every ready
  replica failed does the client get 503 `{"error": {"message": ..., "type": "no_replica"}}`.
- A replica that fails once a stream has begun cannot be replaced (the client has its first tokens):
  the client gets a last `data: {"error": {...}}` event and a clean end of the stream. Events are
  passed on whole, so that event never lands inside a half-written one.
- There is no read timeout: a slow model is not a dead one, and the time between two tokens says
  nothing about which it is. Death is noticed instead by the connection closing (a killed
  process) or by the monitor (`/health` answering 503, refusing connections, or timing out
  `unhealthy_after` times in a row); a replica that turns dead, stopped or removed has its open
  requests cut at once, so the ones not yet answering move to the next replica and the streams end
  with the error event.
- Any unexpected error becomes a 502 JSON error, never a traceback to the client.

The monitor task polls every replica that is not stopped every `poll_s`: `/health` (200 → ready
unless draining, 503 → dead; a draining replica keeps its state whatever `/health` says, since vLLM
answers 503 while it drains, and only the controller ends a drain) and `/metrics`
(`vllm:num_requests_running` and `vllm:num_requests_waiting`, summed over label sets, scraped from
draining replicas too so that the controller sees when one is empty). The intensity task asks
`intensity(region)` (in a thread) for every region every `refresh_s`, and at once for a region that
a newly added replica brings; a failure or None keeps the old value. Without an `intensity` callable
the router leaves `Replica.intensity` to whoever fills the table.

Latency estimate (`Replica.latency_s`, compared with the policy's budget): an EWMA of the time from
sending a streamed request to its first event, the time to first token as the client feels it.
Non-streaming answers do not count: their first byte comes only once the whole answer is generated,
so it measures the answer's length, not the replica. A replica with no new sample since the last
poll gets the `/health` round trip as a sample instead, so an idle replica's estimate follows its
network distance and one slow spell does not keep it over the budget for ever.

Secrets: `Authorization` and `api-key` headers (and every other end-to-end header) are forwarded,
but nothing the router logs, counts or answers contains a header or a query string.

Estimated emissions: each answer (status below 400) adds `energy_per_request_kwh` (default 0.3 Wh,
the order of magnitude published for one chat answer on a modern GPU server) times the replica's
region's intensity at that moment to `harchos_router_estimated_emissions_kgco2_total`. It is an
estimate for comparing replicas and regions, not a measurement; the meter measures energy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from harchos_cli.metrics import by_name
from harchos_cli.serve.routing import (
    DecisionReason,
    Replica,
    ReplicaStateName,
    ReplicaTable,
    RoutingPolicy,
    choice_reason,
    ranked,
)

__all__ = ["Router", "serve_forever", "vllm_load"]

log = logging.getLogger(__name__)

_STATES: tuple[ReplicaStateName, ...] = ("starting", "ready", "dead", "draining", "stopped")
# RFC 9110 §7.6.1; Host and Content-Length are set again for the next hop; Expect was answered here.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})  # fmt: skip
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "expect"}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length"}
_LATENCY_WEIGHT = 0.3  # weight of the newest sample in the latency EWMA
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                     300.0, float("inf"))  # fmt: skip
_VLLM_LOAD = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# vLLM's HTTP server (uvicorn) closes idle connections after 5 s; reusing one it is closing would
# look like a replica failure, so the router forgets idle connections first.
_KEEPALIVE_S = 4.0
_DEFAULT_POLICY = RoutingPolicy()


def vllm_load(text: str) -> tuple[int, int]:
    """`vllm:num_requests_running` and `vllm:num_requests_waiting` from a vLLM `/metrics` page,
    each summed over its label sets (one per model).

    Raises:
        ValueError: a sample line is malformed.
    """
    # Only the two gauges' lines are parsed: a real vLLM page has hundreds of histogram lines.
    lines = [line for line in text.splitlines() if line.startswith(_VLLM_LOAD)]
    sums = dict.fromkeys(_VLLM_LOAD, 0.0)
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return round(sums[_VLLM_LOAD[0]]), round(sums[_VLLM_LOAD[1]])


def _json_error(status: int, message: str, kind: str) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind}})
    return web.Response(status=status, text=body, content_type="application/json")


def _describe(error: BaseException) -> str:
    """What went wrong, without URLs or headers (a URL's query string may hold a key)."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect ({error.os_error.strerror or type(error.os_error).__name__})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return type(error).__name__


def _event_end(data: bytes) -> int:
    """The offset just past the last complete server-sent event in `data` (0 if none)."""
    if data.endswith(b"\n\n"):  # vLLM writes one whole event per chunk
        return len(data)
    return max(
        data.rfind(b"\n\n") + 2 if b"\n\n" in data else 0,
        data.rfind(b"\r\n\r\n") + 4 if b"\r\n\r\n" in data else 0,
        data.rfind(b"\r\r") + 2 if b"\r\r" in data else 0,
    )


class _Attempt:
    """One request on its way to one replica, which the router can cut short."""

    __slots__ = ("timeout", "upstream")

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None
        self.upstream: aiohttp.ClientResponse | None = None

    def abort(self) -> None:
        # Before the answer's headers: expire the guard around the request; after: close the
        # connection, which fails the pending read at once.
        if self.upstream is not None:
            self.upstream.close()
        elif self.timeout is not None:
            self.timeout.reschedule(asyncio.get_running_loop().time())


class _TableCollector:
    """The replica state, up and intensity gauges, read from the table at scrape time."""

    def __init__(self, table: ReplicaTable) -> None:
        self.table = table

    def collect(self) -> Iterable[Metric]:
        replicas = self.table.all()
        state = _family("harchos_router_replica_state")
        up = _family("harchos_replica_up")
        intensity = _family("harchos_router_carbon_intensity_gco2_per_kwh")
        regions: dict[str, float] = {}
        for r in replicas:
            region = r.region or "unknown"
            for name in _STATES:
                state.add_metric([r.id, r.hub, region, name], 1.0 if r.state == name else 0.0)
            up.add_metric([r.id, r.hub], 1.0 if r.state == "ready" else 0.0)
            if r.region is not None and r.intensity is not None:
                regions.setdefault(r.region, r.intensity)
        for region, value in sorted(regions.items()):
            intensity.add_metric([region], value)
        return [state, up, intensity]


def _family(name: str) -> GaugeMetricFamily:
    metric = by_name(name)
    return GaugeMetricFamily(name, metric.help, labels=list(metric.labels))


class _WithoutCreated:
    """The registry's metrics less prometheus-client's `_created` samples (not in the catalogue)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _Metrics:
    """The router's Prometheus metrics, in its own registry (names from harchos_cli.metrics)."""

    def __init__(self, table: ReplicaTable) -> None:
        self.registry = CollectorRegistry()

        def spec(name: str) -> dict[str, Any]:
            metric = by_name(name)
            return {"name": name, "documentation": metric.help, "labelnames": metric.labels,
                    "registry": self.registry}  # fmt: skip

        self.requests = Counter(**spec("harchos_router_requests_total"))
        self.decisions = Counter(**spec("harchos_router_decisions_total"))
        self.failures = Counter(**spec("harchos_router_replica_failures_total"))
        self.emissions = Counter(**spec("harchos_router_estimated_emissions_kgco2_total"))
        self.duration = Histogram(
            **spec("harchos_router_request_duration_seconds"), buckets=_DURATION_BUCKETS
        )
        self.registry.register(_TableCollector(table))
        self.exposed = _WithoutCreated(self.registry)

    def page(self) -> bytes:
        return generate_latest(self.exposed)


class Router:
    """The router: an aiohttp server in front of the replicas in `table`.

    Args:
        table: the replicas; the router reads it on every request and its monitor updates their
            state, load and latency. Change states with `table.set_state` so that the router hears
            of it (a replica turning dead or stopped has its open requests cut).
        policy: the ranking knobs.
        intensity: region → current gCO2eq/kWh (None: unknown); blocking, so called in a thread.
        refresh_s: seconds between two intensity refreshes.
        poll_s: seconds between two rounds of `/health` and `/metrics` probes.
        probe_timeout_s: how long one probe may take.
        unhealthy_after: probes in a row that time out before a replica counts as dead (a refused
            connection or a 503 counts at once).
        connect_timeout_s: how long connecting to a replica may take before the next is tried.
        energy_per_request_kwh: the energy assumed per answer for the emissions estimate.
        shutdown_timeout_s: how long `close` lets open requests finish.
        client_max_size: the largest request body accepted, in bytes.
    """

    def __init__(
        self,
        table: ReplicaTable,
        policy: RoutingPolicy = _DEFAULT_POLICY,
        *,
        intensity: Callable[[str], float | None] | None = None,
        refresh_s: float = 300.0,
        poll_s: float = 1.0,
        probe_timeout_s: float = 5.0,
        unhealthy_after: int = 3,
        connect_timeout_s: float = 5.0,
        energy_per_request_kwh: float = 3e-4,
        shutdown_timeout_s: float = 5.0,
        client_max_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.table = table
        self.policy = policy
        self.intensity = intensity
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.probe_timeout_s = probe_timeout_s
        self.unhealthy_after = unhealthy_after
        self.connect_timeout_s = connect_timeout_s
        self.energy_per_request_kwh = energy_per_request_kwh
        self.shutdown_timeout_s = shutdown_timeout_s
        self.client_max_size = client_max_size
        self.metrics = _Metrics(table)
        self.polls = 0  # monitor rounds completed, for whoever waits on the monitor
        self._intensities: dict[str, float] = {}
        self._attempts: dict[str, set[_Attempt]] = {}
        self._timeouts: dict[str, int] = {}
        self._samples: dict[str, int] = {}  # latency samples per replica
        self._samples_at_poll: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host`:`port` (0: a free port) and start the monitor; the base URL.

        Raises:
            RuntimeError: the router is already started.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the router is already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        )
        self._probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=self.probe_timeout_s),
        )
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_route("*", "/v1/{tail:.*}", self._proxy)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout_s
        )
        try:
            await self._runner.setup()
            # A burst of new connections overflows the default backlog of 128 (a 1 s SYN retry).
            await web.TCPSite(self._runner, host, port, backlog=1024).start()
        except BaseException:
            await self.close()
            raise
        self.table.subscribe(self._on_change)
        self._spawn(self._monitor())
        self._spawn(self._refresh_intensities())
        bound_host, bound_port = self._runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}"

    async def close(self) -> None:
        """Stop listening, let open requests finish (up to `shutdown_timeout_s`), stop the tasks."""
        self.table.unsubscribe(self._on_change)
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()
        self._session = self._probe_session = None

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_change(
        self, replica: Replica, old: ReplicaStateName | None, new: ReplicaStateName | None
    ) -> None:
        if old is not None or new is None:
            log.info("replica %s: %s → %s", replica.id, old or "added", new or "removed")
        if new in (None, "dead", "stopped"):
            for attempt in list(self._attempts.get(replica.id, ())):
                attempt.abort()
        if old is None and replica.region is not None:
            known = self._intensities.get(replica.region)
            if known is not None:
                replica.intensity = known
            elif self.intensity is not None and self._runner is not None:
                self._spawn(self._refresh([replica.region]))

    # Serving.

    async def _health(self, _: web.Request) -> web.Response:
        ready = sum(1 for r in self.table.all() if r.state == "ready")
        status = "ok" if ready else "no_replica_ready"
        return web.json_response({"status": status, "ready_replicas": ready},
                                 status=200 if ready else 503)  # fmt: skip

    async def _metrics_page(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.page())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _not_found(self, _: web.Request) -> web.Response:
        return _json_error(404, "the router serves /v1/*, /health and /metrics", "not_found")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await self._route(request, started)
        except web.HTTPException as error:  # aiohttp refusing the request, e.g. a body too large
            return _json_error(error.status, error.reason, "invalid_request")
        except ConnectionError:
            raise  # the client went away while sending its request
        except Exception:
            log.exception("internal error routing %s %s", request.method, request.path)
            return _json_error(502, "the router failed to handle the request", "router_error")

    async def _route(self, request: web.Request, started: float) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        if "Connection" in request.headers:
            tokens = ",".join(request.headers.getall("Connection")).split(",")
            named = {token.strip().lower() for token in tokens}
            for name in named & {name.lower() for name in headers}:
                headers.popall(name)
        ranking = ranked(self.table.all(), self.policy)
        failed: list[str] = []
        for position, replica in enumerate(ranking):
            if replica.state != "ready":  # it died while an earlier one was tried
                continue
            reason: DecisionReason = choice_reason(ranking) if position == 0 else "failover"
            response = await self._attempt(
                request, body, headers, replica, reason=reason, started=started
            )
            if response is not None:
                return response
            failed.append(replica.id)
        message = (
            f"every ready replica failed ({', '.join(failed)})" if failed else "no replica is ready"
        )
        self.metrics.requests.labels("none", "none", "503").inc()
        self.metrics.duration.labels("none").observe(time.perf_counter() - started)
        return _json_error(503, message, "no_replica")

    async def _attempt(
        self,
        request: web.Request,
        body: bytes,
        headers: CIMultiDict[str],
        replica: Replica,
        *,
        reason: DecisionReason,
        started: float,
    ) -> web.StreamResponse | None:
        """Send the request to `replica`; the client's response, or None to try the next."""
        assert self._session is not None
        replica.in_flight += 1
        replica.requests += 1
        self.metrics.decisions.labels(replica.id, reason).inc()
        attempt = _Attempt()
        attempts = self._attempts.setdefault(replica.id, set())
        attempts.add(attempt)
        sent = time.perf_counter()
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(None) as attempt.timeout:
                    upstream = await self._session.request(
                        request.method,
                        URL(replica.url.rstrip("/") + request.raw_path, encoded=True),
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                    )
                attempt.upstream = upstream
                if upstream.status == 503:
                    self._failed(replica, "answered 503")
                    return None
                if upstream.content_type == "text/event-stream":
                    return await self._relay(request, upstream, replica, sent, started)
                content = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                attempts.discard(attempt)  # marking the replica dead below must not abort it
                self._failed(replica, _describe(error))
                if isinstance(error, aiohttp.ClientConnectorError) and replica.state == "ready":
                    self.table.set_state(replica.id, "dead")
                return None
        finally:
            attempts.discard(attempt)
            replica.in_flight -= 1
            if upstream is not None:
                upstream.release()
        response = web.Response(
            status=upstream.status, body=content, headers=self._returned(upstream, replica)
        )
        self._answered(replica, upstream.status, started)
        return response

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        replica: Replica,
        sent: float,
        started: float,
    ) -> web.StreamResponse:
        """Pass an event stream on as it arrives, whole events at a time; never raises."""
        response = web.StreamResponse(
            status=upstream.status, headers=self._returned(upstream, replica)
        )
        try:
            await response.prepare(request)
            pending = b""
            first = True
            while True:
                try:
                    chunk = await upstream.content.readany()
                except (aiohttp.ClientError, TimeoutError) as error:
                    self._failed(replica, f"{_describe(error)} mid-stream")
                    message = f"replica {replica.id} stopped answering mid-stream"
                    event = {"error": {"message": message, "type": "replica_failed"}}
                    await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    break
                if not chunk:
                    if pending:
                        await response.write(pending)
                    break
                if first:
                    self._observe_latency(replica, time.perf_counter() - sent)
                    first = False
                data = pending + chunk if pending else chunk
                end = _event_end(data)
                pending = data[end:]
                if end:
                    await response.write(data[:end] if pending else data)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; releasing the upstream connection stops the generation
        except Exception:
            log.exception("internal error relaying a stream from replica %s", replica.id)
        self._answered(replica, upstream.status, started)
        return response

    def _returned(self, upstream: aiohttp.ClientResponse, replica: Replica) -> CIMultiDict[str]:
        headers = CIMultiDict(
            (name, value)
            for name, value in upstream.headers.items()
            if name.lower() not in _NOT_RETURNED
        )
        headers["X-Harchos-Replica"] = replica.id
        return headers

    def _failed(self, replica: Replica, what: str) -> None:
        replica.failures += 1
        self.metrics.failures.labels(replica.id, replica.region or "unknown").inc()
        log.warning("replica %s failed a request: %s", replica.id, what)

    def _answered(self, replica: Replica, status: int, started: float) -> None:
        region = replica.region or "unknown"
        self.metrics.requests.labels(replica.id, region, str(status)).inc()
        self.metrics.duration.labels(replica.id).observe(time.perf_counter() - started)
        if status < 400 and replica.intensity is not None:
            kg = self.energy_per_request_kwh * replica.intensity / 1000.0
            self.metrics.emissions.labels(replica.id, region).inc(kg)

    def _observe_latency(self, replica: Replica, seconds: float) -> None:
        self._samples[replica.id] = self._samples.get(replica.id, 0) + 1
        old = replica.latency_s
        replica.latency_s = seconds if old is None else old + _LATENCY_WEIGHT * (seconds - old)

    # Monitoring.

    async def _monitor(self) -> None:
        while True:
            replicas = [r for r in self.table.all() if r.state != "stopped"]
            await asyncio.gather(*(self._probe(r) for r in replicas))
            self.polls += 1
            await asyncio.sleep(self.poll_s)

    async def _probe(self, replica: Replica) -> None:
        try:
            await self._probe_replica(replica)
        except Exception:
            log.exception("internal error probing replica %s", replica.id)

    async def _probe_replica(self, replica: Replica) -> None:
        assert self._probe_session is not None
        base = replica.url.rstrip("/")
        sent = time.perf_counter()
        status: int | None = None
        try:
            async with self._probe_session.get(base + "/health") as answer:
                await answer.read()
                status = answer.status
        except aiohttp.ClientConnectorError as error:
            self._probe_failed(replica, _describe(error), at_once=True)
        except (aiohttp.ClientError, TimeoutError) as error:
            self._probe_failed(replica, _describe(error), at_once=False)
        if status is None or self.table.get(replica.id) is not replica:
            return
        self._timeouts.pop(replica.id, None)
        if replica.state not in ("draining", "stopped"):
            self.table.set_state(replica.id, "ready" if status == 200 else "dead")
        if replica.state == "dead":
            return
        round_trip = time.perf_counter() - sent
        if self._samples.get(replica.id, 0) == self._samples_at_poll.get(replica.id, 0):
            self._observe_latency(replica, round_trip)
        self._samples_at_poll[replica.id] = self._samples.get(replica.id, 0)
        try:
            async with self._probe_session.get(base + "/metrics") as answer:
                if answer.status == 200:
                    replica.running, replica.waiting = vllm_load(await answer.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.debug("replica %s: /metrics failed: %s", replica.id, _describe(error))

    def _probe_failed(self, replica: Replica, what: str, *, at_once: bool) -> None:
        if replica.state in ("starting", "draining", "stopped", "dead"):
            return
        count = self._timeouts.get(replica.id, 0) + 1
        self._timeouts[replica.id] = count
        if (at_once or count >= self.unhealthy_after) and self.table.get(replica.id) is replica:
            log.warning("replica %s: /health failed (%s)", replica.id, what)
            self.table.set_state(replica.id, "dead")

    async def _refresh_intensities(self) -> None:
        while True:
            try:
                await self._refresh(sorted({r.region for r in self.table.all() if r.region}))
            except Exception:
                log.exception("internal error refreshing carbon intensities")
            await asyncio.sleep(self.refresh_s)

    async def _refresh(self, regions: list[str]) -> None:
        if self.intensity is None or not regions:
            return
        lookup = self.intensity
        values = await asyncio.gather(
            *(asyncio.to_thread(lookup, region) for region in regions), return_exceptions=True
        )
        for region, value in zip(regions, values, strict=True):
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._intensities[region] = float(value)
                continue
            what = type(value).__name__ if value is not None else "no value"
            log.warning("carbon intensity for %s: %s; keeping the last value", region, what)
        for replica in self.table.all():
            if replica.region in self._intensities:
                replica.intensity = self._intensities[replica.region]


async def serve_forever(
    replicas: list[tuple[str, str | None]],
    host: str,
    port: int,
    policy: RoutingPolicy,
    intensity: Callable[[str], float | None] | None,
    *,
    on_ready: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
    refresh_s: float = 300.0,
) -> None:
    """The standalone router over fixed replicas (`harchos serve router --replica URL[@REGION]`).

    The replicas are `static/0`, `static/1`, ... in the order given, each `(url, region)`.
    `on_ready(url)` is called once the router listens. Runs until cancelled.
    """
    table = ReplicaTable(
        Replica(id=f"static/{i}", hub="static", region=region, url=url)
        for i, (url, region) in enumerate(replicas)
    )
    router = Router(table, policy, intensity=intensity, poll_s=poll_s, refresh_s=refresh_s)
    url = await router.start(host, port)
    try:
        log.info("routing %d replica(s) on %s", len(replicas), url)
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await router.close()
