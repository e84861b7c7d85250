"""A real HTTP server on 127.0.0.1 for provider tests: register routes, record every request.

Each route holds a queue of replies; the last one repeats. A reply can be a status with a JSON or
text body, extra headers and a delay (a delay longer than the client's timeout is "never answers").
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harchos_cli.config import Config

FIXTURES = Path(__file__).parent / "fixtures" / "responses"


def fixture(name: str) -> Any:
    """The decoded JSON of `tests/fixtures/responses/<name>`."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Reply:
    """One answer: status, body (JSON-encoded unless bytes/str), headers, delay in seconds."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        if self.body is None:
            return b"", "text/plain"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(frozen=True)
class Request:
    """A request the server saw."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


Responder = Reply | Callable[[Request], Reply]


@dataclass
class _Route:
    pattern: re.Pattern[str]
    replies: list[Responder]
    served: int = 0

    def next(self) -> Responder:
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        return reply


class FakeServer:
    """Threaded loopback HTTP server; use as a context manager."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[Request] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def route(self, path: str, *replies: Responder) -> None:
        """Serve `replies` in turn (the last repeats) for paths fully matching regex `path`."""
        if not replies:
            raise ValueError("a route needs at least one reply")
        with self._lock:
            self._routes.insert(0, _Route(re.compile(path), list(replies)))

    def hits(self, path: str | None = None) -> list[Request]:
        """Requests seen, optionally only those whose path fully matches regex `path`."""
        with self._lock:
            seen = list(self.requests)
        if path is None:
            return seen
        pattern = re.compile(path)
        return [r for r in seen if pattern.fullmatch(r.path)]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        request = Request(
            method=handler.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self.requests.append(request)
            route = next((r for r in self._routes if r.pattern.fullmatch(parts.path)), None)
            responder = route.next() if route else None
        if responder is None:
            reply = Reply(404, {"error": {"code": "404", "message": f"no route {parts.path}"}})
        elif isinstance(responder, Reply):
            reply = responder
        else:
            reply = responder(request)
        if reply.delay and self._stopping.wait(reply.delay):
            return
        body, content_type = reply.encoded()
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return


def provider_config(tmp_path: Path, **settings: Any) -> Config:
    """A `Config` isolated from the environment and user files, with `settings` as flags.

    Keys use `__` for dots: `http__timeout=0.3` sets `http.timeout`.
    """
    flags = {key.replace("__", "."): value for key, value in settings.items()}
    return Config.load(
        flags,
        environ={},
        project_file=tmp_path / "no-project.toml",
        user_file=tmp_path / "no-user.toml",
    )
