"""The slack receiver, driven by a real ``websockets`` client on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest
from support.wait import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.slack import SlackRecord
from slack.discovery import discover, read_adverts
from slack.receiver import SlackServer, SlackServerConfig
from slack.wire import (
    decode_challenge,
    encode_batch,
    encode_hello,
)


class FakeClock:
    """The receiver's clock, set by the test (the scheduler's clock in production)."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_server(clock: FakeClock) -> Iterator[Callable[..., SlackServer]]:
    servers: list[SlackServer] = []

    def make(**options: object) -> SlackServer:
        server = SlackServer(SlackServerConfig(**options), clock=clock)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def rec(
    sid: str, delivered: int = 10, consumed: int = 4, t_s: float = 5.0, paused: bool = False
) -> SlackRecord:
    return SlackRecord(sid, delivered, consumed, 4.0, paused, t_s)


async def test_a_valid_batch_lands_in_the_table(make_server, clock) -> None:
    server = make_server()
    async with connect(server.url) as ws:
        await ws.send(encode_batch([rec("a", t_s=5.0), rec("b", t_s=5.5)], sent_s=6.0))
        await until(lambda: server.counters()["records"] == 2)
    reports = server.fresh_many(["a", "b", "c"], now_s=clock.now_s, stale_after_s=2.0)
    assert set(reports) == {"a", "b"}
    # Dated on the receiver's clock by their age at sending: 1.0 s and 0.5 s.
    assert reports["a"].t_s == pytest.approx(clock.now_s - 1.0)
    assert reports["b"].t_s == pytest.approx(clock.now_s - 0.5)
    assert reports["a"].delivered == 10 and reports["a"].consumed == 4


async def test_reports_go_stale(make_server, clock) -> None:
    server = make_server()
    async with connect(server.url) as ws:
        await ws.send(encode_batch([rec("a", t_s=6.0)], sent_s=6.0))
        await until(lambda: server.counters()["records"] == 1)
    assert server.fresh("a", clock.now_s + 1.9, stale_after_s=2.0) is not None
    assert server.fresh("a", clock.now_s + 2.1, stale_after_s=2.0) is None


async def test_bad_frames_are_dropped_and_counted_and_serving_goes_on(make_server) -> None:
    server = make_server(max_frame_bytes=256)
    async with connect(server.url, max_size=None) as ws:
        await ws.send(b"\xc1not msgpack")
        await ws.send("a text frame")
        await ws.send(encode_batch([rec("x")], 1.0)[:-3])  # truncated
        await ws.send(encode_batch([rec(f"s{i}") for i in range(8)], 1.0))  # 500 > 256 bytes
        await ws.send(encode_batch([rec("ok")], 1.0))  # the same connection still works
        await until(lambda: server.counters()["records"] == 1)
    counters = server.counters()
    assert counters["malformed"] == 3 and counters["oversized"] == 1
    assert server.fresh("ok", 1000.0, 5.0) is not None


async def test_a_huge_frame_closes_only_its_connection(make_server) -> None:
    server = make_server(max_frame_bytes=256)
    async with connect(server.url, max_size=None) as ws:
        await ws.send(b"\x00" * 256 * 8)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await until(lambda: server.counters()["oversized"] == 1)
    async with connect(server.url) as ws:
        await ws.send(encode_batch([rec("after")], 1.0))
        await until(lambda: server.counters()["records"] == 1)


async def test_a_flood_is_dropped_and_counted(make_server) -> None:
    server = make_server(frames_per_s=1.0, burst_frames=5)
    async with connect(server.url) as ws:
        for i in range(50):
            await ws.send(encode_batch([rec("a", delivered=i, consumed=0, t_s=float(i))], 100.0))
        await until(lambda: server.counters()["frames"] + server.counters()["flooded"] == 50)
    counters = server.counters()
    # 5 of burst plus at most what the bucket refilled while the frames were arriving.
    assert 5 <= counters["frames"] < 50 and counters["flooded"] == 50 - counters["frames"]


async def test_unknown_ids_are_dropped_when_ids_must_be_registered(make_server, clock) -> None:
    server = make_server(require_known=True)
    server.register("live")
    async with connect(server.url) as ws:
        await ws.send(encode_batch([rec("live"), rec("ghost")], 5.0))
        await until(lambda: server.counters()["frames"] == 1)
    assert server.counters()["unknown"] == 1
    assert set(server.fresh_many(["live", "ghost"], clock.now_s, 5.0)) == {"live"}
    server.unregister("live")
    assert server.fresh("live", clock.now_s, 5.0) is None


async def test_with_a_secret_only_the_challenge_answer_gets_in(make_server) -> None:
    server = make_server(secret="s3cret", auth_timeout_s=5.0)
    async with connect(server.url) as ws:  # right secret
        nonce = decode_challenge(await ws.recv())
        await ws.send(encode_hello("s3cret", nonce))
        await ws.send(encode_batch([rec("a")], 5.0))
        await until(lambda: server.counters()["records"] == 1)
    async with connect(server.url) as ws:  # wrong secret
        nonce = decode_challenge(await ws.recv())
        await ws.send(encode_hello("guess", nonce))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    async with connect(server.url) as ws:  # no hello at all: a batch first
        await ws.recv()
        await ws.send(encode_batch([rec("b")], 5.0))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert server.counters()["unauthenticated"] == 2
    assert server.counters()["records"] == 1


async def test_advert_file_names_the_url_and_carries_counters(make_server, tmp_path) -> None:
    path = tmp_path / "engine-8123-dp0.json"
    server = make_server(advert_path=str(path), advert_interval_s=0.01)
    await until(path.exists)
    assert discover("http://127.0.0.1:8123/v1", directory=tmp_path) == [server.url]
    assert discover("http://example.invalid:8123", directory=tmp_path) == []
    async with connect(server.url) as ws:
        await ws.send(encode_batch([rec("a")], 5.0))
        await until(lambda: json.loads(path.read_text())["counters"]["records"] == 1)
    server.stop()
    assert not path.exists()
    # An advert left by a dead process is ignored.
    path.write_text(json.dumps({"url": "ws://127.0.0.1:1", "pid": 2**22 + 12345}))
    assert read_adverts(8123, tmp_path) == []


def test_config_from_env() -> None:
    assert SlackServerConfig.from_env({}) is None
    cfg = SlackServerConfig.from_env(
        {"ANDES_SLACK_PORT": "8100", "ANDES_SLACK_SECRET": "x", "ANDES_SLACK_DIR": "/tmp/a"},
        dp_rank=2,
        http_port=8000,
    )
    assert cfg is not None
    assert (cfg.port, cfg.host, cfg.secret, cfg.require_known) == (8102, "127.0.0.1", "x", True)
    assert cfg.advert_path == os.path.join("/tmp/a", "engine-8000-dp2.json")
    cfg = SlackServerConfig.from_env({"ANDES_SLACK_PORT": "0", "ANDES_SLACK_ADVERT": "none"}, 3)
    assert cfg is not None and cfg.port == 0 and cfg.advert_path is None
    with pytest.raises(ValueError, match="ANDES_SLACK_PORT must be an integer port, got 'x'"):
        SlackServerConfig.from_env({"ANDES_SLACK_PORT": "x"})
    with pytest.raises(ValueError, match="got 70000"):
        SlackServerConfig(port=70000)


def test_a_port_in_use_is_a_clear_error(make_server) -> None:
    server = make_server()
    other = SlackServer(SlackServerConfig(port=server.port))
    with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        other.start()
