"""Talk to the served model through its OpenAI-compatible API.

    python client.py "Why is the grid greener at night in Sweden?"
    python client.py --stream --max-tokens 64 "Write a haiku about wind power"

Plain httpx, so the requests are easy to read; the `openai` package works the same way:
`OpenAI(base_url=f"http://HOST:{port}/v1", api_key=os.environ["VLLM_API_KEY"])`. The server's
address and model come from harchos.toml's [serve] table, `--url` or `$OPENAI_BASE_URL`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from serve import ConfigError, ServeSettings, load_settings


class ServerError(Exception):
    """The server is dead, refused the request, or did not become ready in time."""


def base_url(settings: ServeSettings, environ: dict[str, str] | None = None) -> str:
    """The API's base URL: `$OPENAI_BASE_URL`, else this machine at the configured port."""
    env = os.environ if environ is None else environ
    return env.get("OPENAI_BASE_URL") or f"http://127.0.0.1:{settings.port}/v1"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers that carry the API key, as vLLM's `--api-key` expects it; none without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def make_client(url: str, api_key: str | None, timeout: float = 120.0) -> httpx.Client:
    """An HTTP client for the API at `url`, sending the API key if there is one."""
    return httpx.Client(
        base_url=url.rstrip("/") + "/", headers=auth_headers(api_key), timeout=timeout
    )


def wait_ready(url: str, timeout: float = 600.0, interval: float = 0.5) -> None:
    """Wait until the server's `/health` answers 200.

    A refused connection means vLLM is still loading the model; 503 means its engine is dead.

    Raises:
        ServerError: the engine is dead, or the server is not ready within `timeout` seconds.
    """
    health = url.rstrip("/").removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = httpx.get(health, timeout=5).status_code
        except httpx.TransportError:
            status = None
        if status == 200:
            return
        if status == 503:
            raise ServerError(f"{health} answers 503: the engine is dead")
        if time.monotonic() >= deadline:
            raise ServerError(f"{health} not ready after {timeout:g} s")
        time.sleep(interval)


def _check(response: httpx.Response) -> Any:
    if response.status_code != 200:
        response.read()
        raise ServerError(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def complete(client: httpx.Client, model: str, prompt: str, max_tokens: int = 64) -> str:
    """A text completion (`/v1/completions`)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    answer = _check(client.post("completions", json=body))
    return str(answer["choices"][0]["text"])


def chat(
    client: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int = 64
) -> str:
    """One chat turn (`/v1/chat/completions`); the assistant's reply."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens}
    answer = _check(client.post("chat/completions", json=body))
    return str(answer["choices"][0]["message"]["content"])


def stream_chat(
    client: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int = 64
) -> Iterator[str]:
    """One chat turn, streamed: yields the reply's pieces as the server sends them (SSE).

    Raises:
        ServerError: the server refused, or the stream ended without `data: [DONE]`.
    """
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    with client.stream("POST", "chat/completions", json=body) as response:
        if response.status_code != 200:
            _check(response)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            for choice in json.loads(data)["choices"]:
                piece = choice.get("delta", {}).get("content")
                if piece:
                    yield piece
    raise ServerError("the stream ended before data: [DONE]")


def main(argv: Sequence[str] | None = None) -> int:
    """Send one prompt and print the answer."""
    parser = argparse.ArgumentParser(description="Ask the served model one question.")
    parser.add_argument("prompt")
    parser.add_argument("--config", type=Path, default=Path("harchos.toml"))
    parser.add_argument("--url", help="API base URL (default: $OPENAI_BASE_URL or harchos.toml)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="print the answer as it comes")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = args.url or base_url(settings)
    messages = [{"role": "user", "content": args.prompt}]
    try:
        if args.wait:
            wait_ready(url, args.wait)
        with make_client(url, os.environ.get(settings.api_key_env)) as client:
            if args.stream:
                for piece in stream_chat(client, settings.served_model_name, messages,
                                         args.max_tokens):  # fmt: skip
                    print(piece, end="", flush=True)
                print()
            else:
                print(chat(client, settings.served_model_name, messages, args.max_tokens))
    except (ServerError, httpx.HTTPError) as exc:
        print(f"error: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
