"""Open a local page in a real headless Chromium over the Chrome DevTools Protocol.

`inspect_page(path, expressions, screenshot)` loads the file, evaluates each JavaScript
expression, collects every console error, uncaught exception and browser log error, and saves a
PNG screenshot. Chromium is Debian's `chromium` (installed by `.ci/run`); without it the caller
fails with the command that installs it, never skips.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

BINARIES = ("chromium", "chromium-browser", "google-chrome")
STARTUP_SECONDS = 15.0
COMMAND_SECONDS = 10.0


@dataclass
class PageResult:
    values: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def chromium() -> str:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no headless browser found (looked for chromium, chromium-browser, google-chrome): "
        "run `apt-get install -y --no-install-recommends chromium` (as .ci/run does)"
    )


class DevTools:
    """One websocket to the browser; page commands go through a flattened target session."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                waiter = self._waiting.pop(data["id"], None)
                if waiter and not waiter.done():
                    waiter.set_result(data)
                continue
            self.events.append(data)
            for method, future in list(self._listeners):
                if data.get("method") == method and not future.done():
                    future.set_result(data)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the browser closed the DevTools socket"))

    async def send(
        self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        number = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiter
        message: dict[str, Any] = {"id": number, "method": method, "params": dict(params or {})}
        if session:
            message["sessionId"] = session
        await self._socket.send_str(json.dumps(message))
        reply = await asyncio.wait_for(waiter, COMMAND_SECONDS)
        if "error" in reply:
            raise AssertionError(f"DevTools {method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def listen(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event `method` (register it before causing the event)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._listeners.append((method, future))
        return future

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def _browser() -> AsyncIterator[str]:
    """Start headless Chromium; yield its browser DevTools websocket URL."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="harchos-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1100,1600",
            "about:blank",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield await asyncio.wait_for(_devtools_url(process), STARTUP_SECONDS)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    seen: list[str] = []
    while True:
        line = (await process.stderr.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("chromium exited before DevTools listened:\n" + "".join(seen))
        seen.append(line)
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            # Keep draining stderr, or chromium blocks once the pipe fills.
            asyncio.get_running_loop().create_task(_drain(process.stderr))
            return found.group(1)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    errors = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            errors.append("console: " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            errors.append(f"exception: {description}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
    return errors


async def _inspect(path: Path, expressions: Mapping[str, str], screenshot: Path) -> PageResult:
    async with (
        _browser() as url,
        aiohttp.ClientSession() as http,
        http.ws_connect(url, max_msg_size=0) as socket,
    ):
        tools = DevTools(socket)
        try:
            target = await tools.send("Target.createTarget", {"url": "about:blank"})
            attached = await tools.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )
            session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await tools.send(f"{domain}.enable", session=session)
            loaded = tools.listen("Page.loadEventFired")
            navigated = await tools.send(
                "Page.navigate", {"url": path.resolve().as_uri()}, session=session
            )
            if navigated.get("errorText"):
                raise AssertionError(f"navigation failed: {navigated['errorText']}")
            await asyncio.wait_for(loaded, COMMAND_SECONDS)
            values = {}
            for name, expression in expressions.items():
                reply = await tools.send(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True},
                    session=session,
                )
                if "exceptionDetails" in reply:
                    raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
                values[name] = reply["result"].get("value")
            shot = await tools.send(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True},
                session=session,
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            # Late console or log messages arrive after the replies above; let them land.
            await asyncio.sleep(0.2)
            return PageResult(values, _errors(tools.events, session), screenshot)
        finally:
            await tools.close()


def inspect_page(path: Path, expressions: Mapping[str, str], screenshot: Path) -> PageResult:
    """Load `path` in headless Chromium, evaluate `expressions` (name → JavaScript, returned
    by value), collect errors and write a PNG screenshot to `screenshot`."""
    return asyncio.run(_inspect(path, expressions, screenshot))
