"""What an adversarial probe of the gateway found (issue 12, items 2, 4, 5 and 7), each as the
request that showed it: the right 4xx or error frame, nothing sent to the engine, no traceback,
and the gateway still serving."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.scripted_engine import Script
from gateway.app import exposure_warning, listen_url
from gateway.config import GatewayConfig

MSGS = [{"role": "user", "content": "hi"}]
GOOD = {"model": "test-model", "messages": MSGS}
ROOT = Path(__file__).resolve().parents[2]


async def _post(url: str, data: bytes | str, headers: dict[str, str] | None = None,
                path: str = "/v1/chat/completions") -> tuple[int, Any, dict[str, str]]:
    if isinstance(data, str):
        data = data.encode()
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data, headers={
            "Content-Type": "application/json", **(headers or {})}) as resp:
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, dict(resp.headers)


async def _serves(url: str) -> None:
    status, body, _ = await _post(url, json.dumps(GOOD))
    assert status == 200, body


def _is_openai_error(body: Any) -> bool:
    return isinstance(body, dict) and set(body.get("error", {})) == {
        "message", "type", "param", "code"}


# -- 4 and 7: bodies that gave 500s or were accepted -----------------------------------------------

DEEP = '{"model": "test-model", "messages": ' + "[" * 5000 + "]" * 5000 + "}"
NOT_STANDARD_JSON = [
    ("NaN", '{"model": "test-model", "messages": [{"role": "user", "content": "x"}], '
            '"presence_penalty": NaN}'),
    ("Infinity", '{"model": "test-model", "messages": [{"role": "user", "content": "x"}], '
                 '"seed": Infinity}'),
    ("-Infinity in extra field", '{"model": "test-model", "messages": [{"role": "user", '
                                 '"content": "x"}], "min_p": -Infinity}'),
    ("nested 5000 deep", DEEP),
    ("nested 101 deep", '{"model": "test-model", "messages": [{"role": "user", "content": "x"}],'
                        ' "x": ' + "[" * 101 + "]" * 101 + "}"),
]
BAD_FIELDS = [
    ("vllm_xargs a number", {**GOOD, "vllm_xargs": 1}),
    ("vllm_xargs a list", {**GOOD, "vllm_xargs": [1, 2]}),
    ("n true", {**GOOD, "n": True}),
    ("include_usage a string",
     {**GOOD, "stream": True, "stream_options": {"include_usage": "yes"}}),
    ("stop a number", {**GOOD, "stop": 7}),
    ("stop five strings", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}),
    ("stop a list of numbers", {**GOOD, "stop": [1]}),
]


@pytest.mark.parametrize(("name", "raw"), NOT_STANDARD_JSON, ids=[c[0] for c in NOT_STANDARD_JSON])
async def test_non_standard_json_is_a_400(gateway, upstream, name, raw) -> None:
    status, body, _ = await _post(gateway.url, raw)
    assert status == 400 and _is_openai_error(body), body
    assert upstream.requests == 0
    await _serves(gateway.url)


@pytest.mark.parametrize(("name", "body"), BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
async def test_bad_fields_are_a_400(gateway, upstream, name, body) -> None:
    status, err, _ = await _post(gateway.url, json.dumps(body))
    assert status == 400 and _is_openai_error(err), err
    assert upstream.requests == 0
    await _serves(gateway.url)


async def test_valid_fields_still_pass(gateway, upstream) -> None:
    body = {**GOOD, "n": 1, "stop": ["a", "b"], "vllm_xargs": {"k": 1},
            "stream": True, "stream_options": {"include_usage": False}}
    status, _, _ = await _post(gateway.url, json.dumps(body))
    assert status == 200
    sent = upstream.records[0].body
    assert sent["vllm_xargs"]["k"] == 1 and "andes_stream_id" in sent["vllm_xargs"]
    assert upstream.records[0].headers["Content-Type"] == "application/json"


async def test_a_very_long_static_name_is_a_404(gateway, caplog) -> None:
    async with aiohttp.ClientSession() as s:
        for name in ("a" * 5000, "x/" * 300 + "y", "..%2f..%2fpyproject.toml", "%00"):
            async with s.get(gateway.url + "/static/" + name) as resp:
                assert resp.status == 404, name
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text
    await _serves(gateway.url)


# -- 2: cross-origin ---------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
async def test_a_post_not_declared_json_is_a_415(gateway, upstream, ctype) -> None:
    """What a page at another origin can send without a CORS preflight."""
    headers = {} if ctype is None else {"Content-Type": ctype}
    async with aiohttp.ClientSession() as s:
        req = s.post(gateway.url + "/v1/chat/completions", data=json.dumps(GOOD).encode(),
                     headers=headers, skip_auto_headers=["Content-Type"])
        async with req as resp:
            assert resp.status == 415
            assert _is_openai_error(await resp.json())
    assert upstream.requests == 0


async def test_a_websocket_from_a_foreign_origin_is_refused(make_gateway, upstream) -> None:
    gw = await make_gateway(allowed_origins=("https://chat.example",))
    host = gw.url.removeprefix("http://")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(gw.ws_url, origin="https://evil.example", open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
    for origin in (f"http://{host}", "https://chat.example", None):  # own, allowed, a program
        async with connect(gw.ws_url, origin=origin, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "messages": MSGS, "pacing": "off"}))
            assert json.loads(await ws.recv())["type"] == "started"
    gw_any = await make_gateway(allowed_origins=("*",))
    async with connect(gw_any.ws_url, origin="https://evil.example", open_timeout=5):
        pass


def test_listening_beyond_loopback_without_keys_warns() -> None:
    assert exposure_warning(GatewayConfig(host="127.0.0.1")) is None
    assert exposure_warning(GatewayConfig(host="0.0.0.0", api_keys=("k",))) is None
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        warning = exposure_warning(GatewayConfig(host=host))
        assert warning is not None and host in warning
    assert listen_url("::", 8080) == "http://[::]:8080"
    assert listen_url("127.0.0.1", 1) == "http://127.0.0.1:1"


def _gateway_lines(*flags: str, until: str) -> list[str]:
    """Start ``andes gateway`` with ``flags``, read its stderr up to a line containing ``until``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "andes", "gateway", "--upstream", "http://127.0.0.1:9",
         "--port", "0", *flags], stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if until in line:
                break
    finally:
        proc.terminate()
        proc.wait(20)
    return lines


def test_the_cli_warns_and_prints_ipv6_addresses_in_brackets() -> None:
    text = "".join(_gateway_lines("--host", "0.0.0.0", until="listening on http"))
    assert "no API keys" in text and "listening on http://0.0.0.0:" in text
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    text = "".join(_gateway_lines("--host", "::1", "--api-key", "k", until="listening on http"))
    assert "listening on http://[::1]:" in text and "no API keys" not in text


def _has_ipv6() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- 4, 5 on the WebSocket ---------------------------------------------------------------------

BAD_STARTS = [
    ("vllm_xargs a number", {"extra_body": {"vllm_xargs": 1}}),
    ("id a lone surrogate", {"id": "\ud800"}),
    ("model a lone surrogate", {"model": "\udfff"}),
]


@pytest.mark.parametrize(("name", "extra"), BAD_STARTS, ids=[c[0] for c in BAD_STARTS])
async def test_bad_starts_get_an_error_frame_and_the_socket_stays(
        gateway, upstream, caplog, name, extra) -> None:
    async with connect(gateway.ws_url, open_timeout=5) as ws:
        # ensure_ascii keeps the surrogate escaped on the wire: "\ud800", as a browser sends it.
        await ws.send(json.dumps({"type": "start", "messages": MSGS, **extra}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "error" and frame["code"] == "invalid_request", frame
        assert frame["fatal"] is False
        await ws.send(json.dumps({"type": "start", "messages": MSGS, "pacing": "off"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "started"
    assert upstream.requests == 1
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text


async def test_a_deeply_nested_frame_is_a_bad_frame(gateway, upstream) -> None:
    async with connect(gateway.ws_url, open_timeout=5) as ws:
        await ws.send('{"type": "start", "messages": ' + "[" * 5000 + "]" * 5000 + "}")
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["code"] == "bad_frame" and frame["fatal"] is True
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1007
    assert upstream.requests == 0
    await _serves(gateway.url)


async def test_nan_from_msgpack_never_reaches_the_engine(gateway, upstream) -> None:
    import msgpack
    async with connect(gateway.ws_url, subprotocols=["andes.v1.msgpack"], open_timeout=5) as ws:
        await ws.send(msgpack.packb({"type": "start", "messages": MSGS,
                                     "extra_body": {"min_p": float("nan")}}))
        frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "error" and frame["code"] == "invalid_request", frame
    assert upstream.requests == 0


# -- 7: rate limits, health, stream ownership, keys in logs --------------------------------------

async def test_an_engine_429_is_a_rate_limit_with_retry_after(gateway, upstream) -> None:
    upstream.queue.append(Script(status=429, error={
        "message": "engine overloaded", "type": "TooManyRequests", "param": None, "code": 429}))
    status, body, headers = await _post(gateway.url, json.dumps(GOOD))
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert int(headers["Retry-After"]) >= 1
    upstream.queue.append(Script(status=429))
    async with connect(gateway.ws_url, open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "start", "messages": MSGS}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame


async def test_the_gateways_own_429_has_retry_after(make_gateway, upstream) -> None:
    gw = await make_gateway(max_concurrent_streams=1)
    upstream.script = Script(tokens=["slow"], first_delay_s=30)
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json={**GOOD, "stream": True})
        status, _, headers = await _post(gw.url, json.dumps(GOOD))
        first.close()
    assert status == 429 and int(headers["Retry-After"]) >= 1


async def test_health_shows_upstreams_only_with_a_key(make_gateway) -> None:
    gw = await make_gateway(api_keys=("k1",))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with s.get(gw.url + "/health", headers={"Authorization": "Bearer k1"}) as resp:
            body = await resp.json()
    assert body["status"] == "ok" and body["upstreams"][0]["reachable"] is True


async def test_a_stream_answers_only_the_key_that_opened_it(make_gateway, upstream) -> None:
    gw = await make_gateway(api_keys=("k1", "k2"))
    upstream.script = Script(tokens=[f"w{i} " for i in range(50)], gap_s=0.05)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.url + "/v1/chat/completions", headers={"Authorization": "Bearer k1"},
                            json={**GOOD, "stream": True, "pacing": "client"})
        sid = resp.headers["X-Andes-Stream-Id"]
        ack = gw.url + f"/v1/streams/{sid}/ack"
        async with s.post(ack, json={"consumed": 0}, headers={"Authorization": "Bearer k2"}) as r:
            assert r.status == 404
        async with s.post(ack, json={"consumed": 0}, headers={"Authorization": "Bearer k1"}) as r:
            assert r.status == 204
        resp.close()


async def test_a_key_offered_as_a_subprotocol_is_not_logged(make_gateway, caplog) -> None:
    gw = await make_gateway(api_keys=("sk-very-secret",))
    caplog.set_level(logging.DEBUG)
    async with connect(gw.ws_url, subprotocols=["sk-very-secret"], open_timeout=5) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["code"] == "unauthorized"
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any("overlap" in r.getMessage() for r in server_side)  # the line is still there
    assert not any("sk-very-secret" in r.getMessage() for r in server_side)
