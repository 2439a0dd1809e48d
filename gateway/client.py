"""The Python streaming client: chat completions from an Andes gateway, at the reader's pace.

It speaks the WebSocket protocol of ``docs/protocol.md`` (``websockets``), asks the gateway for
``client`` pacing, paces the text locally with the gateway's own :class:`~gateway.pacer.Pacer`,
and acknowledges what it has handed out (coalesced), so the gateway — and through it the engine's
scheduler — knows how far the reader is::

    async with stream("http://127.0.0.1:8080", messages, qoe={"tds": 5}) as s:
        async for text in s:
            print(text, end="", flush=True)
    print(s.result.qoe)

Leaving the ``async with`` block early (``break``, an exception, task cancellation) sends
``cancel``, which aborts the engine request at once. There is no automatic reconnection: a failure
raises one of the exceptions below and the caller decides.

Exceptions::

    ClientError                 base class
    ├── StreamFailed            the gateway ended the stream with an ``error`` frame (.code, .fatal)
    ├── ConnectionLost          the connection failed or closed before the end (.close_code)
    └── ProtocolViolation       the gateway sent something this client cannot accept

:func:`stream_sync` runs the same client on a private event loop in a thread, for synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.qoe import QoESpec, QoETracker
from gateway import protocol as p
from gateway.pacer import Pacer, PacerConfig

__all__ = [
    "ClientError",
    "ConnectionLost",
    "ProtocolViolation",
    "StreamFailed",
    "StreamResult",
    "SyncTextStream",
    "TextStream",
    "default_url",
    "split_tokens",
    "stream",
    "stream_sync",
    "websocket_url",
]

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where ``andes serve`` and ``andes gateway`` listen by default; ``$ANDES_URL`` overrides it."""
URL_ENV = "ANDES_URL"

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_ENDPOINT_SUFFIXES = ("/v1/stream", "/v1/chat/completions", "/v1/completions", "/v1/models",
                      "/v1", "/stream")


def default_url() -> str:
    """``$ANDES_URL`` if set, else :data:`DEFAULT_URL`."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def websocket_url(url: str) -> str:
    """The gateway's WebSocket endpoint, from its address as people type it.

    ``http://host:port``, ``https://…``, ``ws://…``, ``wss://…`` or a bare ``host:port``; with or
    without ``/v1``, ``/v1/stream`` or an OpenAI route, and a trailing slash; a path prefix in
    front (a gateway behind a reverse proxy) and the query string (``?api_key=``) are kept. The
    same rules as ``gatewayUrls`` of client_js. Raises :class:`ValueError` for anything else.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = urlsplit("")
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a gateway URL: {url!r} (expected http://HOST:PORT or "
                         "ws://HOST:PORT/v1/stream)")
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((scheme, parts.netloc, path + "/v1/stream", parts.query, ""))


class ClientError(Exception):
    """Base class of this client's errors. ``text`` is what had been handed out before."""

    text: str = ""


class StreamFailed(ClientError):
    """The gateway ended the stream with an ``error`` frame."""

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal


class ConnectionLost(ClientError):
    """The connection could not be opened, or closed before the stream ended."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class ProtocolViolation(ClientError):
    """The gateway sent a frame this client cannot accept."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a stream went."""

    text: str  # everything handed out
    tokens: int  # tokens handed out
    finish_reason: str | None
    usage: dict[str, int]
    qoe: float  # measured by the gateway (its `done` frame), 0–1
    ttft_s: float | None  # time to first token measured by the gateway, seconds
    shown_qoe: float  # QoE of the text as this client handed it out, 0–1
    shown_ttft_s: float | None  # from stream() to the first text handed out, seconds
    stream_id: str | None
    model: str | None
    acks: int = 0  # acknowledgements sent


def split_tokens(text: str, count: int) -> list[str]:
    """``count`` pieces of ``text`` of about equal length: the local pacer paces tokens the
    gateway sent together (their boundaries are not on the wire). Mirrors client_js."""
    if count <= 1:
        return [text]
    n = len(text)
    return [text[_round_half_up(i * n / count):_round_half_up((i + 1) * n / count)]
            for i in range(count)]


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)  # JavaScript's Math.round, not Python's banker's rounding


@dataclass
class _State:
    text: list[str] = field(default_factory=list)
    shown: int = 0
    received: int = 0
    acked: int = 0
    acks: int = 0
    last_ack_s: float = -math.inf
    started: p.Started | None = None
    done: p.Done | None = None
    first_shown_s: float | None = None


class TextStream:
    """One streamed completion: an async iterator of paced text pieces; use ``async with``.

    Control while iterating: :meth:`set_pace`, :meth:`pause`, :meth:`resume`, :meth:`cancel`.
    After the end, :attr:`result` holds the :class:`StreamResult`.
    """

    def __init__(self, url: str, start: p.Start, *, tds_tok_s: float | None,
                 api_key: str | None, subprotocol: str, ack_interval_s: float, frame_s: float,
                 open_timeout_s: float, clock: Callable[[], float],
                 on_delta: Callable[[float, int], None] | None = None) -> None:
        self._url = url
        self._on_delta = on_delta
        self._start = start
        self._api_key = api_key
        self._subprotocol = subprotocol
        self._ack_interval_s = ack_interval_s
        self._open_timeout_s = open_timeout_s
        self._clock = clock
        self._client_paced = start.pacing in (None, "client")
        self._tds_given = tds_tok_s is not None
        self._pacer = Pacer(PacerConfig(tds_tok_s=tds_tok_s or 4.8, frame_s=frame_s,
                                        mode="server" if self._client_paced else "off"))
        self._arrival_s = clock()
        self._qoe = QoETracker(QoESpec(ttft_s=start.qoe.ttft if start.qoe.ttft is not None
                                       else 1.0, tds_tok_s=self._pacer.tds_tok_s),
                               self._arrival_s)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._received = asyncio.Event()  # the reader task has ended: done, error or lost
        self._error: ClientError | None = None
        self._s = _State()
        self._opened = False
        self._finished = False
        self.result: StreamResult | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> TextStream:
        await self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> TextStream:
        return self

    async def _open(self) -> None:
        if self._opened or self._finished:
            return
        self._opened = True  # once: a stream never reconnects
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        try:
            self._ws = await connect(self._url, subprotocols=[self._subprotocol],  # type: ignore[list-item]
                                     additional_headers=headers,
                                     open_timeout=self._open_timeout_s, max_size=1 << 22)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            self._finished = True
            raise ConnectionLost(f"cannot connect to {self._url}: {exc}") from exc
        await self._send(self._start)
        self._reader = asyncio.create_task(self._read(), name="andes-client-reader")

    async def aclose(self) -> None:
        """End the stream: sends ``cancel`` if it is still running, closes the connection."""
        if not self._finished:
            self._finished = True
            if self._ws is not None and self._s.done is None:
                with contextlib.suppress(ConnectionClosed, OSError):
                    await self._send(p.Cancel())
        await self._close_ws()

    async def _close_ws(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    # -- control ----------------------------------------------------------------------------------

    async def set_pace(self, tds_tok_s: float) -> None:
        """Change the reading pace (tokens/s) from now on."""
        self._pacer.set_pace(tds_tok_s, self._clock())  # raises ValueError quoting a bad value
        self._wake.set()
        await self._control(p.Pace(float(tds_tok_s)))

    async def pause(self) -> None:
        """The reader stopped: hand out nothing until :meth:`resume`; the gateway is told.

        May be called at any time, also after the gateway has sent everything (the iteration then
        waits for :meth:`resume` to hand out the rest)."""
        if not self._pacer.paused:
            self._pacer.pause(self._clock())
            self._wake.set()
            await self._control(p.Pause())

    async def resume(self) -> None:
        if self._pacer.paused:
            self._pacer.resume(self._clock())
            self._wake.set()  # the iteration may be waiting with nothing due
            await self._control(p.Resume())

    async def cancel(self) -> None:
        """Stop now; the iteration ends (without a result)."""
        await self.aclose()

    @property
    def text(self) -> str:
        """Everything handed out so far."""
        return "".join(self._s.text)

    @property
    def stream_id(self) -> str | None:
        return self._s.started.stream_id if self._s.started else None

    @property
    def received_all(self) -> bool:
        """The gateway has sent its ``done`` frame (the text may still be pacing out here)."""
        return self._s.done is not None

    async def wait_received(self) -> p.Done:
        """Until the gateway has sent the whole stream; returns its ``done`` frame, while the text
        may still be pacing out locally (iterate to hand it out). Raises the stream's
        :class:`ClientError` if it ended otherwise (an ``error`` frame, a lost connection)."""
        if not self._opened:
            await self._open()
        await self._received.wait()
        if self._s.done is not None:
            return self._s.done
        raise self._error or ConnectionLost("the connection closed before the stream ended")

    async def _control(self, frame: p.ClientFrame) -> None:
        if self._ws is not None and self._s.done is None and not self._finished:
            with contextlib.suppress(ConnectionClosed):
                await self._send(frame)

    async def _send(self, frame: p.ClientFrame) -> None:
        assert self._ws is not None
        await self._ws.send(p.encode(frame, self._subprotocol))

    # -- iteration --------------------------------------------------------------------------------

    async def __anext__(self) -> str:
        if not self._opened:
            await self._open()
        try:
            return await self._next()
        except asyncio.CancelledError:
            await asyncio.shield(self.aclose())
            raise
        except ClientError as exc:
            exc.text = self.text
            await self.aclose()
            raise

    async def _next(self) -> str:
        s = self._s
        while True:
            if self._finished and self.result is None:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if s.done is not None and self._ws is not None:
                await self._close_ws()  # the gateway is done with us
            self._wake.clear()
            now = self._clock()
            chunks = self._pacer.due(now)
            if chunks:
                out = "".join(c.text for c in chunks)
                count = sum(c.count for c in chunks)
                s.text.append(out)
                s.shown += count
                self._qoe.add(now, count)
                if s.first_shown_s is None:
                    s.first_shown_s = now
                await self._maybe_ack(now)
                return out
            if self._pacer.done and s.done is not None:
                self._finish()
                raise StopAsyncIteration
            if self.result is not None:
                raise StopAsyncIteration
            await self._maybe_ack(now)
            await self._wait(now)

    async def _wait(self, now: float) -> None:
        """Until the next piece is due, an ack is owed, or a frame arrives."""
        deadline = self._pacer.next_due_s()
        s = self._s
        if self._client_paced and s.shown > s.acked and s.done is None:
            ack_at = s.last_ack_s + self._ack_interval_s
            deadline = ack_at if deadline is None else min(deadline, ack_at)
        timeout = None if deadline is None else max(deadline - now, 0.0)
        if (self._reader is None or self._reader.done()) and not self._pacer.paused:
            if timeout is None:
                raise ProtocolViolation("the stream stalled: nothing to show and no connection")
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _read(self) -> None:
        """The reader task: frames in, straight into the pacer; the iterator is woken."""
        assert self._ws is not None
        try:
            async for data in self._ws:
                try:
                    frame = p.parse_server_frame(p.decode(data, self._subprotocol))
                except p.FrameError as exc:
                    raise ProtocolViolation(f"the gateway sent a bad frame: {exc.message}") \
                        from None
                self._on_frame(frame, self._clock())
                self._wake.set()
                if self._s.done is not None:
                    return  # the rest is local pacing
            if self._s.done is None:
                rcvd = self._ws.close_rcvd if self._ws is not None else None
                code = rcvd.code if rcvd is not None else None
                reason = rcvd.reason if rcvd is not None else ""
                raise ConnectionLost(f"the connection closed (code {code}"
                                     f"{': ' + reason if reason else ''}) before the stream "
                                     "ended", close_code=code)
        except ConnectionClosed as exc:
            if self._s.done is None:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self._error = ConnectionLost(f"the connection was lost (code {code}) before the "
                                             "stream ended", close_code=code)
        except ClientError as exc:
            self._error = exc
        finally:
            self._received.set()
            self._wake.set()

    def _on_frame(self, frame: p.ServerFrame, now: float) -> None:
        s = self._s
        if isinstance(frame, p.Started):
            s.started = frame
            if not self._tds_given and frame.qoe.tds:
                self._pacer.set_pace(frame.qoe.tds, now)  # the gateway's default pace
            self._qoe = QoETracker(QoESpec(frame.qoe.ttft if frame.qoe.ttft is not None else 1.0,
                                           self._pacer.tds_tok_s), self._arrival_s)
        elif isinstance(frame, p.Delta):
            if frame.index != s.received:
                raise ProtocolViolation(f"expected text from token {s.received}, "
                                        f"got token {frame.index}")
            s.received += frame.count
            self._pacer.feed(split_tokens(frame.text, frame.count), now)
            if self._on_delta is not None:
                self._on_delta(now, frame.count)
        elif isinstance(frame, p.Done):
            s.done = frame
            self._pacer.close()
        elif isinstance(frame, p.Error):
            raise StreamFailed(frame.code, frame.message, frame.fatal)

    async def _maybe_ack(self, now: float) -> None:
        s = self._s
        if (self._client_paced and s.done is None and s.shown > s.acked and self._ws is not None
                and now >= s.last_ack_s + self._ack_interval_s):
            s.acked, s.last_ack_s = s.shown, now
            s.acks += 1
            with contextlib.suppress(ConnectionClosed):
                await self._send(p.Ack(s.shown))

    def _finish(self) -> None:
        s = self._s
        d = s.done
        assert d is not None
        self.result = StreamResult(
            text=self.text, tokens=s.shown, finish_reason=d.finish_reason,
            usage={"prompt_tokens": d.usage.prompt_tokens,
                   "completion_tokens": d.usage.completion_tokens,
                   "total_tokens": d.usage.total_tokens},
            qoe=d.qoe, ttft_s=d.ttft_s, shown_qoe=self._qoe.qoe(),
            shown_ttft_s=None if s.first_shown_s is None else s.first_shown_s - self._arrival_s,
            stream_id=s.started.stream_id if s.started else None,
            model=s.started.model if s.started else None, acks=s.acks)
        self._finished = True


def stream(url: str | None = None, messages: Sequence[Mapping[str, Any]] = (), *,
           model: str | None = None, qoe: Mapping[str, float] | None = None,
           pacing: Literal["client", "server"] = "client", max_tokens: int | None = None,
           temperature: float | None = None, api_key: str | None = None,
           subprotocol: str = p.JSON_SUBPROTOCOL, ack_interval_s: float = 0.15,
           frame_s: float = 0.05, open_timeout_s: float = 10.0,
           clock: Callable[[], float] = time.monotonic,
           extra_body: Mapping[str, Any] | None = None,
           on_delta: Callable[[float, int], None] | None = None) -> TextStream:
    """A chat completion from the gateway at ``url``, paced for a reader of
    ``qoe={"ttft": s, "tds": tokens/s}`` (the gateway's defaults where left out).

    ``url`` is the gateway as you would type it — ``http://HOST:PORT``, with or without ``/v1``,
    or its WebSocket ``ws://HOST:PORT/v1/stream`` (:func:`websocket_url`); default ``$ANDES_URL``,
    else ``http://127.0.0.1:8080``. ``api_key`` defaults to ``$ANDES_API_KEY``.

    ``extra_body``: more engine request fields (``start.extra_body``, e.g. vLLM's
    ``{"ignore_eos": True}``). ``on_delta(now, count)`` is called as each ``delta`` frame arrives
    (``now`` on ``clock``), before its text is paced: when the text reached this client.

    Validates the request before connecting (:class:`ValueError` quoting the bad field).
    """
    try:
        q = p.parse_qoe(dict(qoe) if qoe is not None else None)
        start = p.parse_client_frame({
            "type": "start", "messages": [dict(m) for m in messages], "model": model,
            "max_tokens": max_tokens, "temperature": temperature,
            "qoe": {k: v for k, v in (("ttft", q.ttft), ("tds", q.tds)) if v is not None},
            "pacing": pacing,
            "extra_body": dict(extra_body) if extra_body is not None else None})
    except p.FrameError as exc:
        raise ValueError(exc.message) from None
    if subprotocol not in p.SUBPROTOCOLS:
        raise ValueError(f"subprotocol must be one of {p.SUBPROTOCOLS}, got {subprotocol!r}")
    assert isinstance(start, p.Start)
    if api_key is None:
        api_key = os.environ.get("ANDES_API_KEY") or None
    ws_url = websocket_url(default_url() if url is None else url)
    return TextStream(ws_url, start, tds_tok_s=q.tds, api_key=api_key, subprotocol=subprotocol,
                      ack_interval_s=ack_interval_s, frame_s=frame_s,
                      open_timeout_s=open_timeout_s, clock=clock, on_delta=on_delta)


class SyncTextStream:
    """:func:`stream` for synchronous code: iterate it for paced text; :attr:`result` after.

    The client runs on a private event loop in a daemon thread. Leaving the ``for`` loop early
    (``break``, an exception, Ctrl-C) or :meth:`close` cancels the stream."""

    def __init__(self, make: Callable[[], TextStream]) -> None:
        self._make = make
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=256)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.result: StreamResult | None = None

    def __iter__(self) -> Iterator[str]:
        self._thread = threading.Thread(target=self._run, name="andes-client", daemon=True)
        self._thread.start()
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    self.result = value
                    return
                else:
                    raise value
        finally:
            self.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def main() -> None:
            try:
                async with self._make() as s:
                    async for text in s:
                        await loop.run_in_executor(None, self._queue.put, ("text", text))
                self._queue.put(("done", s.result))
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                self._queue.put(("error", exc))

        try:
            self._task = loop.create_task(main())
            self._ready.set()
            loop.run_until_complete(self._task)
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def close(self) -> None:
        """Cancel the stream if it still runs, and wait for the thread (a few seconds at most)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._ready.wait(5)
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            thread.join(0.05)


def stream_sync(url: str | None = None, messages: Sequence[Mapping[str, Any]] = (),
                **kwargs: Any) -> SyncTextStream:
    """:func:`stream` for synchronous code; same arguments. Validates before connecting."""
    stream(url, messages, **kwargs)  # raise ValueError now, in the caller's thread
    return SyncTextStream(lambda: stream(url, messages, **kwargs))

