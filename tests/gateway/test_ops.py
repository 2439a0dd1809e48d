"""Operations: metrics, health, slow readers, graceful shutdown, configuration."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.scripted_engine import Script
from gateway.config import ConfigError, GatewayConfig, load_config

MSGS = [{"role": "user", "content": "hi"}]
GOOD = {"model": "test-model", "messages": MSGS}


async def test_metrics_and_health(gateway, upstream) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/chat/completions",
                          json={**GOOD, "stream": True, "qoe": {"tds": 100}}) as resp:
            await resp.read()
        async with s.post(gateway.url + "/v1/chat/completions", json={**GOOD, "n": 0}) as resp:
            assert resp.status == 400
        async with s.get(gateway.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        async with s.get(gateway.url + "/health") as resp:
            assert resp.status == 200
            health = await resp.json()
    assert 'andes_gateway_stream_qoe_count{model="test-model"} 1.0' in text
    assert 'andes_gateway_ttft_seconds_count{model="test-model"} 1.0' in text
    assert 'andes_gateway_pacing_lateness_seconds_count{model="test-model"}' in text
    assert "andes_gateway_active_streams 0.0" in text
    assert "andes_gateway_buffered_tokens 0.0" in text
    assert 'andes_gateway_requests_total{route="/v1/chat/completions",status="400"} 1.0' in text
    assert ('andes_gateway_streams_total{model="test-model",pacing="server",reason="finished"} '
            '1.0') in text
    assert health["status"] == "ok"
    assert health["upstreams"][0]["reachable"] is True
    assert health["upstreams"][0]["models"] == ["test-model"]


async def test_upstream_errors_are_counted(gateway, upstream) -> None:
    upstream.script = Script(tokens=["a", "b"], error_after=1)
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.url + "/v1/chat/completions",
                          json={**GOOD, "stream": True}) as resp:
            await resp.read()
        async with s.get(gateway.url + "/metrics") as resp:
            text = await resp.text()
    assert 'andes_gateway_upstream_errors_total{kind="mid_stream",model="test-model"} 1.0' in text


async def test_buffer_overflow_ends_the_stream_and_cancels_the_engine(make_gateway,
                                                                      upstream) -> None:
    """A reader that cannot keep up (tds=1, 200 tokens arriving at once) with an 8-token buffer."""
    gw = await make_gateway(max_buffered_tokens=8)
    upstream.script = Script(tokens=[f"t{i} " for i in range(200)], gap_s=0.001)
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions",
            json={**GOOD, "stream": True, "qoe": {"tds": 1}}) as resp:
        body = (await resp.read()).decode()
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "slow_reader"
    await upstream.wait_for(lambda u: u.cancelled == 1)


async def test_graceful_shutdown(make_gateway, upstream) -> None:
    gw = await make_gateway(shutdown_grace_s=0.3)
    upstream.script = Script(tokens=[f"t{i} " for i in range(1000)], gap_s=0.01)
    async with aiohttp.ClientSession() as s:
        sse = await s.post(gw.url + "/v1/chat/completions", json={**GOOD, "stream": True})
        async with connect(gw.ws_url) as live, connect(gw.ws_url) as idle:
            await live.send(json.dumps({"type": "start", "messages": MSGS}))
            assert json.loads(await live.recv())["type"] == "started"
            await upstream.wait_for(lambda u: u.requests == 2)
            stopping = asyncio.create_task(gw.stop())
            body = (await sse.read()).decode()
            frames = []
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):  # a safety bound: the close must come
                    while True:
                        frames.append(json.loads(await live.recv()))
            assert live.close_code == 1001
            assert frames[-1]["code"] == "shutting_down"
            idle_frame = json.loads(await idle.recv())
            assert idle_frame["code"] == "shutting_down"
            with pytest.raises(ConnectionClosed):
                await idle.recv()
            assert idle.close_code == 1001
            await stopping
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "shutting_down"
    await upstream.wait_for(lambda u: u.cancelled == 2)


async def test_shutdown_lets_short_streams_finish(make_gateway, upstream) -> None:
    gw = await make_gateway(shutdown_grace_s=5)
    upstream.script = Script(tokens=["a ", "b ", "c "], gap_s=0.05)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.url + "/v1/chat/completions",
                            json={**GOOD, "stream": True, "qoe": {"tds": 50}})
        await upstream.wait_for(lambda u: u.requests == 1)
        stopping = asyncio.create_task(gw.stop())
        body = (await resp.read()).decode()
        await stopping
    assert '"finish_reason":"stop"' in body and "error" not in body


def test_config_precedence_and_errors(tmp_path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('upstreams = ["http://file:1"]\nport = 1111\ntds_tok_s = 3.0\n'
                    'api_keys = ["a"]\n')
    cfg = load_config({"port": 3333, "host": None},
                      {"ANDES_GATEWAY_PORT": "2222", "ANDES_GATEWAY_TDS_TOK_S": "6",
                       "ANDES_GATEWAY_API_KEYS": "k-xyzzy,k-plugh", "OTHER": "1"}, path)
    assert cfg.port == 3333 and cfg.tds_tok_s == 6.0 and cfg.upstreams == ("http://file:1",)
    assert cfg.api_keys == ("k-xyzzy", "k-plugh") and cfg.host == "127.0.0.1"
    assert "xyzzy" not in json.dumps(cfg.redacted(), default=str)
    (tmp_path / "gw.json").write_text('{"gateway": {"upstream": ["http://j:1"], "pacing": "off"}}')
    assert load_config(file=tmp_path / "gw.json").pacing == "off"
    for bad, match in [({"tds_tok_s": 0.0}, "tds_tok_s.*0.0"), ({"pacing": "warp"}, "warp"),
                       ({"upstreams": ("ftp://x",)}, "ftp://x"), ({"port": 70000}, "70000")]:
        with pytest.raises(ConfigError, match=match):
            GatewayConfig(**bad)
    with pytest.raises(ConfigError, match="'many'"):
        load_config(env={"ANDES_GATEWAY_MAX_TOKENS": "many"})
    (tmp_path / "typo.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(file=tmp_path / "typo.toml")
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(file=tmp_path / "missing.toml")


async def test_demo_page_and_static_routes(gateway) -> None:
    from gateway.app import CLIENT_JS_DIR, STATIC_DIR
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.url + "/") as resp:
            assert resp.status == 200
        if (STATIC_DIR / "index.html").is_file():
            async with s.get(gateway.url + "/static/index.html") as resp:
                assert resp.status == 200
        if (CLIENT_JS_DIR / "protocol.js").is_file():
            async with s.get(gateway.url + "/client_js/protocol.js") as resp:
                assert resp.status == 200
