"""Shared plumbing for the live provider clients: GET with timeout, retries and the response cache.

Every provider request goes through `ProviderHttp`. It retries HTTP 408, 429, 5xx and transport
errors with capped exponential backoff (honouring a capped `Retry-After`), turns every failure into
`ProviderError`, and stores successful bodies in the `ResponseCache` for the current half hour.
The module also holds the small series helpers the clients share (spacing inference, the native
series a forecast keeps, and the hourly means history is given in), so every provider treats its
data the same way.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from harchos_cli import __version__
from harchos_cli.carbon.cache import ResponseCache
from harchos_cli.carbon.types import Observation
from harchos_cli.config import Config
from harchos_cli.errors import ProviderError
from harchos_cli.timeparse import as_utc

Sleep = Callable[[float], None]
Params = Mapping[str, str | int | float]

HOUR = timedelta(hours=1)
#: An hourly bucket is kept only when its data cover at least this share of the hour.
MIN_HOUR_COVERAGE = 0.5
#: Bytes of an error answer's body kept in `HttpStatusError.body`.
ERROR_BODY_LIMIT = 4096


class HttpStatusError(ProviderError):
    """A provider answered with a non-retryable HTTP status (or kept answering a retryable one).

    `status` lets a client treat 401/403 specially (plan limits, bad token, re-login);
    `server_message` is the provider's own explanation when the body carried one; `body` is the
    start of the raw body (at most `ERROR_BODY_LIMIT` bytes), for a client whose errors are not
    JSON. Neither is part of the message: a client decides what of them is safe to show.
    """

    def __init__(
        self,
        provider: str,
        status: int,
        server_message: str,
        *,
        permanent: bool = False,
        text: str | None = None,
        body: bytes = b"",
    ) -> None:
        default = f"HTTP {status}" + (f": {server_message}" if server_message else "")
        super().__init__(provider, text or default, permanent=permanent)
        self.status = status
        self.server_message = server_message
        self.body = body[:ERROR_BODY_LIMIT]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a failed request.

    Attributes:
        retries: Extra attempts after the first one.
        backoff: First delay in seconds; doubles on every retry.
        backoff_cap: Largest backoff delay in seconds.
        retry_after_cap: Largest delay accepted from a `Retry-After` header.
    """

    retries: int = 2
    backoff: float = 0.5
    backoff_cap: float = 4.0
    retry_after_cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        if retry_after is not None:
            return float(min(max(retry_after, 0.0), self.retry_after_cap))
        return float(min(self.backoff * 2**attempt, self.backoff_cap))


@dataclass(frozen=True)
class Fetched:
    """A decoded JSON answer and whether it came from the response cache."""

    data: Any
    cached: bool


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


def _server_message(response: httpx.Response) -> str:
    """The provider's own error text: `{"error":{"message"}}`, `{"message"}`, `{"error": str}`."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:200] if text and len(text) < 200 else ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return ""


def cache_key(path: str, params: Params | None) -> str:
    """A stable cache key for an endpoint and its parameters (sorted, never secrets)."""
    if not params:
        return path
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    return f"{path}?{query}"


class ProviderHttp:
    """GET-JSON client for one provider: base URL, timeout, retries, response cache.

    Args:
        provider: Provider name used in errors and cache keys.
        base_url: Root of the provider's API; request paths are joined onto it.
        timeout: Seconds for connect and for each read.
        policy: Retry policy.
        cache: Response cache; `use_cache=False` bypasses it entirely.
        client: An `httpx.Client` to use (not closed by `close()`); one is created otherwise.
        sleep: Called with the delay between attempts (tests pass a recorder).
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        timeout: float,
        policy: RetryPolicy,
        cache: ResponseCache,
        use_cache: bool = True,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.policy = policy
        self.cache = cache
        self.use_cache = use_cache
        self._client = client
        self._owns_client = client is None
        self._sleep = sleep

    @classmethod
    def from_config(
        cls,
        provider: str,
        config: Config,
        cache: ResponseCache,
        *,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> ProviderHttp:
        """Build from the `http.*`, `cache.enabled` and `<provider>.base_url` settings."""
        return cls(
            provider,
            str(config.get(f"{provider}.base_url")),
            timeout=float(config.get("http.timeout")),
            policy=RetryPolicy(retries=max(int(config.get("http.retries")), 0)),
            cache=cache,
            use_cache=bool(config.get("cache.enabled")),
            client=client,
            sleep=sleep,
        )

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                headers={"User-Agent": f"harchos/{__version__}"}, follow_redirects=False
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def lookup(self, zone: str, key: str, now: datetime) -> Any | None:
        """The cached decoded answer for `key` in `now`'s half hour, or None."""
        if not self.use_cache:
            return None
        body = self.cache.get(self.provider, zone, key, now)
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def store(self, zone: str, key: str, now: datetime, body: bytes) -> None:
        if self.use_cache:
            self.cache.put(self.provider, zone, key, now, body)

    def get_json(
        self,
        path: str,
        params: Params | None = None,
        *,
        zone: str,
        now: datetime,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> Fetched:
        """GET `path` through the cache.

        Args:
            path: Path under the base URL.
            params: Query parameters.
            zone: Zone the answer is about (cache key part).
            now: The request's moment; picks the cache slot.
            key: Cache key; defaults to the path and sorted parameters. Pass a key without
                time parameters when those derive from the slot, so old slots get replaced.
            headers: Extra request headers (auth); never part of the cache key.
            check: Raises `ProviderError` for an answer that is an error in disguise (HTTP 200
                with an error body); such answers are not cached.

        Raises:
            ProviderError: On failure after retries; `HttpStatusError` for HTTP statuses.
        """
        cache_id = key or cache_key(path, params)
        hit = self.lookup(zone, cache_id, now)
        if hit is not None:
            if check is not None:
                check(hit)
            return Fetched(hit, cached=True)
        data, body = self.request_json(path, params, headers=headers)
        if check is not None:
            check(data)
        self.store(zone, cache_id, now, body)
        return Fetched(data, cached=False)

    def request_json(
        self,
        path: str,
        params: Params | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> tuple[Any, bytes]:
        """GET over the network with retries; returns the decoded JSON and the raw body."""
        attempts = self.policy.retries + 1
        url = self.url(path)
        failure = ""
        last_status: int | None = None
        last_message = ""
        last_body = b""
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                response = self.client.get(
                    url,
                    params=dict(params) if params else None,
                    headers=dict(headers) if headers else None,
                    auth=auth,
                    timeout=self.timeout,
                )
            except httpx.TimeoutException:
                failure = f"no answer from {httpx.URL(url).host} within {self.timeout:g} s"
                last_status = None
            except httpx.ConnectError as exc:
                # No route, no DNS, refused: offline or misconfigured. Retrying only delays the
                # fallback that an offline user is waiting for.
                host = httpx.URL(url).host
                raise ProviderError(self.provider, f"cannot reach {host} ({exc})") from None
            except httpx.TransportError as exc:
                failure = f"cannot reach {httpx.URL(url).host} ({type(exc).__name__})"
                last_status = None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._decode(response), response.content
                last_status, last_message = status, _server_message(response)
                last_body = response.content[:ERROR_BODY_LIMIT]
                if status not in (408, 429) and status < 500:
                    raise HttpStatusError(
                        self.provider, status, last_message, permanent=True, body=last_body
                    )
                failure = f"HTTP {status}" + (f": {last_message}" if last_message else "")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt + 1 < attempts:
                self._sleep(self.policy.delay(attempt, retry_after))
        tries = f"after {attempts} tries" if attempts > 1 else "(no retries)"
        if last_status is not None:
            raise HttpStatusError(
                self.provider, last_status, last_message, text=f"{failure} {tries}", body=last_body
            )
        raise ProviderError(self.provider, f"{failure} {tries}")

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                self.provider, f"answered HTTP {response.status_code} with a body that is not JSON"
            ) from None


# --- series helpers shared by the clients ---------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One provider value over [start, end), in gCO2eq/kWh."""

    start: datetime
    end: datetime
    value: float
    estimated: bool = False


def parse_time(text: Any, provider: str) -> datetime:
    """Parse a provider timestamp (`…Z`, `…+00:00`, `…T12:00Z`) to aware UTC."""
    if not isinstance(text, str):
        raise ProviderError(provider, f"unexpected timestamp {text!r} in the answer")
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        return as_utc(datetime.fromisoformat(raw))
    except ValueError:
        raise ProviderError(provider, f"unexpected timestamp {text!r} in the answer") from None


def number(value: Any, provider: str) -> float:
    """A finite float from a JSON value, or `ProviderError` naming the odd value."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProviderError(provider, f"unexpected value {value!r} in the answer")
    try:
        result = float(value)
    except ValueError:
        raise ProviderError(provider, f"unexpected value {value!r} in the answer") from None
    if not math.isfinite(result):
        raise ProviderError(provider, f"unexpected value {value!r} in the answer")
    return result


def with_spacing(
    points: Iterable[tuple[datetime, float, bool]], default: timedelta = HOUR
) -> list[Sample]:
    """Give point values durations inferred from their spacing (the median gap).

    Electricity Maps' forecast has no durations; its points are evenly spaced, so the median gap
    is the period. A lone point gets `default`.
    """
    ordered = sorted(points, key=lambda p: p[0])
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(ordered) if b[0] > a[0])
    step = gaps[len(gaps) // 2] if gaps else default
    return [Sample(start, start + step, value, est) for start, value, est in ordered]


def hourly_means(samples: Iterable[Sample]) -> list[Observation]:
    """Time-weighted hourly means of samples, keeping hours at least half covered.

    A sample counts toward each UTC hour by its overlap with it, so 5-minute and half-hour data
    aggregate alike and a period straddling an hour boundary is split. An hour whose samples cover
    less than `MIN_HOUR_COVERAGE` of it is left out (a forecast starting at 10:40 then begins at
    11:00). An hour is estimated if any sample in it is.
    """
    sums: dict[datetime, list[float]] = {}
    flags: dict[datetime, bool] = {}
    for sample in samples:
        if sample.end <= sample.start or not math.isfinite(sample.value):
            continue
        hour = sample.start.replace(minute=0, second=0, microsecond=0)
        while hour < sample.end:
            overlap = (min(sample.end, hour + HOUR) - max(sample.start, hour)).total_seconds()
            if overlap > 0:
                acc = sums.setdefault(hour, [0.0, 0.0])
                acc[0] += sample.value * overlap
                acc[1] += overlap
                flags[hour] = flags.get(hour, False) or sample.estimated
            hour += HOUR
    return [
        Observation(hour, hour + HOUR, total / seconds, flags[hour])
        for hour, (total, seconds) in sorted(sums.items())
        if seconds >= MIN_HOUR_COVERAGE * HOUR.total_seconds()
    ]


def native_series(samples: Iterable[Sample]) -> list[Observation]:
    """Samples at the provider's own resolution, in time order, under one rule for repeats: of
    samples starting at the same moment the last given wins, and a sample that runs past the next
    one's start ends there. Non-finite values and empty periods are dropped."""
    by_start: dict[datetime, Sample] = {}
    for sample in samples:
        if sample.end > sample.start and math.isfinite(sample.value):
            by_start[sample.start] = sample
    ordered = [by_start[start] for start in sorted(by_start)]
    ends = [s.start for s in ordered[1:]] + [ordered[-1].end] if ordered else []
    return [
        Observation(s.start, min(s.end, end), s.value, s.estimated)
        for s, end in zip(ordered, ends, strict=True)
    ]


def chunks(start: datetime, end: datetime, size: timedelta) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive ranges of at most `size`, for providers that limit the
    range one request may ask for."""
    out = []
    while start < end:
        out.append((start, min(end, start + size)))
        start = out[-1][1]
    return out


def window(
    observations: Iterable[Observation], start: datetime, end: datetime
) -> list[Observation]:
    """The observations starting in [start, end)."""
    return [o for o in observations if start <= o.start < end]
