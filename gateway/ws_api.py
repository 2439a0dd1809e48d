"""The WebSocket endpoint ``/v1/stream`` — the protocol of ``docs/protocol.md``.

One connection runs one stream at a time. The handler's task reads frames; a stream's writer
loop runs in a task of its own, so acks, pace changes and cancels are taken while text is being
written. A closed connection cancels the running stream, which closes the engine request.

Cross-origin: a browser lets any page open a WebSocket anywhere and sends the page's ``Origin``.
An ``Origin`` that is neither the gateway's own nor in ``allowed_origins`` is refused (403) before
the upgrade. Clients that send no ``Origin`` (programs) are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from gateway import protocol as p
from gateway.auth import GATEWAY, bearer, key_index, key_ok
from gateway.errors import GatewayError, openai_error
from gateway.pacer import Chunk
from gateway.service import Gateway, StreamRequest
from gateway.stream import Stream, StreamResult, abort_transport, transport_backlog

__all__ = ["CLOSE_UNAUTHORIZED", "SOCKETS", "add_routes", "close_all"]

log = logging.getLogger("andes.gateway")

CLOSE_UNAUTHORIZED = 4401
MAX_PENDING_FRAMES = 64  # control frames kept while a start waits in the gateway's queue
SOCKETS = web.AppKey("andes_sockets", set)  # live WebSocketResponses, closed on shutdown
_FORWARDED = ("max_tokens", "temperature", "top_p", "stop", "seed")


class _WSSink:
    keepalive_s = None  # aiohttp's heartbeat keeps the connection alive

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def backlog(self) -> int:
        return transport_backlog(self.conn.transport)

    def abort(self) -> None:
        abort_transport(self.conn.transport)

    def ready_now(self) -> bool:
        return False  # aiohttp frames (and may compress) WebSocket messages: its own writer

    def write_now(self, chunk: Chunk) -> None:  # pragma: no cover - ready_now is False
        raise NotImplementedError

    async def delta(self, chunk: Chunk) -> None:
        await self.conn.send(p.Delta(chunk.index, chunk.count, chunk.text))

    async def keepalive(self) -> None:  # pragma: no cover - keepalive_s is None
        pass


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, gw: Gateway, subprotocol: str,
                 transport: asyncio.BaseTransport | None = None,
                 owner: int | None = None) -> None:
        self.ws = ws
        self.transport = transport
        self.gw = gw
        self.subprotocol = subprotocol
        self.owner = owner  # the API key of the connection: its streams are that key's
        self.stream: Stream | None = None
        self.task: asyncio.Task[None] | None = None
        self.opening: asyncio.Task[None] | None = None  # a start waiting for its upstream
        # Control frames that arrive while the start waits (a client may send its pace right
        # after start): applied in order once the stream is open. Bounded: a client controls it.
        self.pending: list[p.ClientFrame] = []

    async def send(self, frame: p.ServerFrame) -> None:
        data = p.encode(frame, self.subprotocol)
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def error(self, code: str, message: str, fatal: bool = False) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(p.Error(code, message, fatal))

    async def handle(self, data: str | bytes) -> bool:
        """One frame in. Returns False when the connection must close."""
        try:
            frame = p.parse_client_frame(p.decode(data, self.subprotocol))
        except p.FrameError as exc:
            await self.error(exc.code, exc.message, exc.fatal)
            if exc.fatal:
                await self.ws.close(code=WSCloseCode.INVALID_TEXT, message=b"bad frame")
                return False
            return True
        if isinstance(frame, p.Start):
            try:
                await self.start(frame)
            except Exception:  # a gateway bug: say so on the socket, keep the context in the log
                log.exception("unhandled error starting a stream")
                await self.error("internal_error", "internal error in the gateway")
            return True
        stream = self.stream
        if stream is None and self.opening is not None:
            if isinstance(frame, p.Cancel):
                self.opening.cancel()  # left the queue: nothing reaches the engine
                self.pending.clear()
            elif len(self.pending) < MAX_PENDING_FRAMES:
                self.pending.append(frame)
            else:
                await self.error("out_of_order", f"more than {MAX_PENDING_FRAMES} frames "
                                 "before the stream started")
            return True
        if stream is None:
            await self.error("out_of_order", f"{frame.type!r} with no stream running")
            return True
        await self._control(stream, frame)
        return True

    async def _control(self, stream: Stream, frame: p.ClientFrame) -> None:
        try:
            if isinstance(frame, p.Ack):
                stream.ack(frame.consumed)
            elif isinstance(frame, p.Pace):
                stream.set_pace(frame.tds)
            elif isinstance(frame, p.Pause):
                stream.pause()
            elif isinstance(frame, p.Resume):
                stream.resume()
            elif isinstance(frame, p.Cancel):
                stream.cancel("cancelled")
        except GatewayError as exc:
            await self.error(exc.ws_code, exc.message)

    async def start(self, frame: p.Start) -> None:
        if self.stream is not None or self.opening is not None:
            await self.error("out_of_order", "a stream is already running on this connection; "
                             "cancel it or wait for its done frame")
            return
        # extra_body first: its keys never collide with the fields set here (protocol.py refuses
        # the ones the gateway controls), and vllm_xargs in it is merged with the gateway's own.
        body: dict[str, Any] = {**(frame.extra_body or {}), "messages": frame.messages}
        for key in _FORWARDED:
            value = getattr(frame, key)
            if value is not None:
                body[key] = value
        req = StreamRequest("chat", body, frame.model, frame.qoe, frame.pacing, owner=self.owner)
        # Opening may wait in the gateway's queue: in a task of its own, so this connection keeps
        # reading frames (a cancel while queued, pings) meanwhile.
        self.opening = asyncio.create_task(self._open(req, frame.id), name="andes-ws-open")

    async def _open(self, req: StreamRequest, ref: str | None) -> None:
        try:
            stream = await self.gw.open_stream(req)
        except GatewayError as exc:
            await self.error(exc.ws_code, exc.message)
            return
        finally:
            self.opening = None
        self.stream = stream
        self.task = asyncio.create_task(self._run(stream, ref), name=f"andes-ws-{stream.id}")
        pending, self.pending = self.pending, []
        for frame in pending:
            await self._control(stream, frame)

    async def _run(self, stream: Stream, ref: str | None) -> None:
        result: StreamResult | None = None
        try:
            await self.send(p.Started(stream.id, stream.model, stream.mode,
                                      p.QoEFields(stream.spec.ttft_s, stream.spec.tds_tok_s), ref))
            result = await stream.run(_WSSink(self))
            if result.error is not None:
                await self.error(result.error.ws_code, result.error.message)
                if result.error.ws_code == "shutting_down":
                    await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")
            elif result.reason in ("finished", "cancelled"):
                await self.gw.complete_usage(stream, result)
                u = result.usage
                await self.send(p.Done(
                    result.finish_reason if result.reason == "finished" else "cancelled",
                    p.Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)),
                            int(u.get("total_tokens", 0))),
                    round(result.qoe, 6),
                    None if result.ttft_s is None else round(result.ttft_s, 6),
                    result.tokens))
        except ConnectionError:
            pass
        except Exception:  # a gateway bug: never a silent end ("Task exception never retrieved")
            log.exception("unhandled error in stream %s", stream.id)
            await self.error("internal_error", "internal error in the gateway")
        finally:
            stream.cancel("disconnected")
            self.gw.end_stream(stream, result or stream.finish("disconnected"), "websocket")
            self.stream = None

    async def stop(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.opening
        if self.stream is not None:
            self.stream.cancel("disconnected")
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Whether a request's ``Origin`` (if any) may use the gateway: none sent, the gateway's own
    (the demo page), ``*``, or listed in ``allowed``."""
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in (a.rstrip("/").lower() for a in allowed):
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == request.host.lower()


async def stream_ws(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    if not origin_allowed(request, gw.config.allowed_origins):
        return web.json_response(openai_error(
            "this origin may not open the gateway's WebSocket (see --allowed-origins)",
            "invalid_request_error", code="origin_not_allowed"), status=403)
    ws = web.WebSocketResponse(protocols=p.SUBPROTOCOLS, max_msg_size=gw.config.max_body_bytes,
                               heartbeat=30.0)
    await ws.prepare(request)
    presented = bearer(request) or request.query.get("api_key")
    conn = _Connection(ws, gw, ws.ws_protocol or p.DEFAULT_SUBPROTOCOL, request.transport,
                       key_index(gw, presented))
    if not key_ok(gw, presented):
        await conn.error("unauthorized", "a valid API key is required "
                         "(Authorization: Bearer KEY, or ?api_key=KEY)", fatal=True)
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws
    if gw.table.draining:
        await conn.error("shutting_down", "the gateway is shutting down", fatal=True)
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")
        return ws
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                if not await conn.handle(msg.data):
                    break
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        sockets.discard(ws)
        await conn.stop()
    return ws


async def close_all(app: web.Application) -> None:
    """Shutdown: tell idle connections, then close them with 1001."""
    for ws in list(app[SOCKETS]):
        with contextlib.suppress(Exception):
            data = p.encode(p.Error("shutting_down", "the gateway is shutting down", True),
                            ws.ws_protocol or p.DEFAULT_SUBPROTOCOL)
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")


class _RedactProtocols(logging.Filter):
    """aiohttp logs the subprotocols a client offered when none is ours — and some clients send
    their API key as one (browsers cannot set headers on a WebSocket). The line is kept, the
    offer is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "overlap server-known" in str(record.msg) and isinstance(record.args, tuple):
            record.args = tuple("<redacted>" if isinstance(a, list) else a for a in record.args)
        return True


def add_routes(app: web.Application) -> None:
    app[SOCKETS] = set()
    app.router.add_get("/v1/stream", stream_ws)
    ws_log = logging.getLogger("aiohttp.websocket")
    if not any(isinstance(f, _RedactProtocols) for f in ws_log.filters):
        ws_log.addFilter(_RedactProtocols())

