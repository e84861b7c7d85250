"""The OpenAI-client example against harchos's vLLM test double."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import API_KEY, free_port

import client
from serve import ServeSettings


def test_completion_and_chat(server: str, settings: ServeSettings) -> None:
    with client.make_client(server, API_KEY) as http:
        text = client.complete(http, settings.served_model_name, "Wind power is", max_tokens=5)
        reply = client.chat(
            http, settings.served_model_name, [{"role": "user", "content": "hello"}], 7
        )
    assert len(text.split()) == 5
    assert len(reply.split()) == 7


def test_streamed_reply_is_the_whole_reply_in_pieces(server: str, settings: ServeSettings) -> None:
    messages = [{"role": "user", "content": "Why is the grid greener at night?"}]
    with client.make_client(server, API_KEY) as http:
        pieces = list(client.stream_chat(http, settings.served_model_name, messages, 9))
        whole = client.chat(http, settings.served_model_name, messages, 9)
    assert len(pieces) == 9
    assert "".join(pieces) == whole


def test_a_wrong_key_or_model_is_an_error(server: str, settings: ServeSettings) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with (
        client.make_client(server, "wrong-key") as http,
        pytest.raises(client.ServerError, match="401"),
    ):
        client.chat(http, settings.served_model_name, messages)
    with (
        client.make_client(server, API_KEY) as http,
        pytest.raises(client.ServerError, match="404"),
    ):
        client.chat(http, "no-such-model", messages)


def test_command_line(
    server: str, settings: ServeSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(settings.api_key_env, API_KEY)
    assert client.main(["--url", server, "--max-tokens", "4", "--stream", "hi there"]) == 0
    streamed = capsys.readouterr().out
    assert client.main(["--url", server, "--max-tokens", "4", "hi there"]) == 0
    assert capsys.readouterr().out == streamed
    assert len(streamed.split()) == 4
    monkeypatch.setenv(settings.api_key_env, "wrong")
    assert client.main(["--url", server, "hi"]) == 1
    assert "401" in capsys.readouterr().err


def test_wait_ready_tells_starting_from_dead(start_server: Callable[..., str]) -> None:
    with pytest.raises(client.ServerError, match="not ready"):
        client.wait_ready(f"http://127.0.0.1:{free_port()}/v1", timeout=0.3, interval=0.05)
    url = start_server()
    httpx.post(url.removesuffix("/v1") + "/debug/kill-engine")  # a test-double-only endpoint
    with pytest.raises(client.ServerError, match="dead"):
        client.wait_ready(url, timeout=5)
