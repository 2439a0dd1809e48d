"""The gateway's address as people type it: ``andes chat --url`` and the Python client take the
base URL ``andes serve`` prints (http or ws, with or without ``/v1`` or ``/v1/stream``), and
``$ANDES_URL``."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from gateway.client import stream, websocket_url


@pytest.mark.parametrize(("typed", "ws"), [
    ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/stream"),
    ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/v1/stream"),
    ("http://127.0.0.1:8080/v1", "ws://127.0.0.1:8080/v1/stream"),
    ("http://127.0.0.1:8080/v1/", "ws://127.0.0.1:8080/v1/stream"),
    ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/stream"),
    ("ws://127.0.0.1:8080/v1/stream", "ws://127.0.0.1:8080/v1/stream"),
    ("https://chat.example:443/v1", "wss://chat.example:443/v1/stream"),
    ("wss://chat.example/v1/stream/", "wss://chat.example/v1/stream"),
    ("127.0.0.1:8080", "ws://127.0.0.1:8080/v1/stream"),
    ("http://127.0.0.1:8080/v1/chat/completions", "ws://127.0.0.1:8080/v1/stream"),
    ("http://proxy.example/andes/v1", "ws://proxy.example/andes/v1/stream"),
    ("http://127.0.0.1:8080/?api_key=k", "ws://127.0.0.1:8080/v1/stream?api_key=k"),
])
def test_websocket_url_from_what_people_type(typed: str, ws: str) -> None:
    assert websocket_url(typed) == ws


@pytest.mark.parametrize("bad", ["ftp://host:21", "http://", "tcp://127.0.0.1:1", "http://[::1"])
def test_a_url_that_is_no_gateway_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="not a gateway URL"):
        websocket_url(bad)


async def _chat(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "andes", "chat", "--tds", "200", "--prompt", "hello", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("form", ["{http}", "{http}/", "{http}/v1", "{ws}", "{ws}/v1/stream"])
async def test_andes_chat_takes_the_gateway_url_in_every_form(gateway, upstream,
                                                              form: str) -> None:
    url = form.format(http=gateway.url, ws=gateway.url.replace("http://", "ws://"))
    rc, out, err = await _chat("--url", url)
    assert rc == 0, err
    assert "[QoE " in out and upstream.requests == 1


async def test_andes_chat_and_the_client_read_andes_url(gateway, upstream, monkeypatch) -> None:
    rc, out, err = await _chat(env={"ANDES_URL": gateway.url + "/v1"})
    assert rc == 0, err
    assert "[QoE " in out
    monkeypatch.setenv("ANDES_URL", gateway.url)
    async with stream(messages=[{"role": "user", "content": "hi"}], qoe={"tds": 200}) as s:
        text = "".join([piece async for piece in s])
    assert text and s.result is not None and upstream.requests == 2


async def test_andes_chat_refuses_a_bad_url_in_one_line() -> None:
    rc, _, err = await _chat("--url", "ftp://127.0.0.1:1")
    assert rc == 2
    assert err.strip().startswith("andes chat: not a gateway URL: 'ftp://127.0.0.1:1'")
    assert err.count("\n") == 1
