"""The slack side channel's receiver: a WebSocket server inside vLLM's engine-core process.

:class:`SlackServer` runs a ``websockets`` asyncio server on its own event loop in a daemon thread,
so the scheduler thread never waits for the network: it only takes a lock for the few microseconds
of a dictionary lookup (:meth:`SlackServer.fresh_many`), and the receiver holds that lock only to
store an already decoded batch (:meth:`slack.table.SlackTable.apply`).

Defences, each counted in :class:`slack.table.SlackCounters` and none fatal to the engine:

* frame size: a frame over ``max_frame_bytes`` is dropped (the connection stays); over four times
  that, ``websockets`` itself closes the connection (1009) before buffering it;
* malformed frames (not msgpack, bad fields, text frames) are dropped;
* floods: a token bucket per connection (``frames_per_s``, ``burst_frames``) drops the excess;
* at most ``max_connections`` connections, and ``max_connections_per_peer`` from one address
  (1013 "try again later" beyond). When every slot is taken, the oldest connection that has not
  yet proven itself (no valid batch, no passed challenge) is closed to make room: idle
  connections cannot keep the real gateway out;
* every connection, with or without a secret, must deliver a frame every ``idle_timeout_s``
  (the reporter sends an empty batch when it has nothing else to say) or is closed with 1008;
* with a ``secret``, every connection must answer a fresh challenge first (HMAC-SHA256, see
  :mod:`slack.wire`) within ``auth_timeout_s``, or is closed with 1008;
* with ``require_known``, reports for streams the scheduler has not registered are dropped, so
  the table holds at most the engine's live requests.

It imports no vLLM: the scheduler wires it in (:mod:`engine.vllm.scheduler`), and the tests drive
it with a plain ``websockets`` client. Its clock (``clock``, default ``time.time``) must be the
scheduler's: every report's ``t_s`` is on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.slack import SlackRecord
from slack.discovery import remove_advert, write_advert
from slack.table import SlackCounters, SlackTable, TokenBucket
from slack.wire import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_RECORDS,
    NONCE_BYTES,
    SlackFrameError,
    SlackFrameTooLarge,
    decode_batch,
    encode_challenge,
    verify_hello,
)

__all__ = ["SlackServer", "SlackServerConfig"]

logger = logging.getLogger(__name__)

_CLOSE_POLICY = 1008  # RFC 6455: policy violation (authentication failed)
_CLOSE_TRY_LATER = 1013
_HARD_LIMIT_FACTOR = 4  # websockets refuses frames beyond max_frame_bytes * this


@dataclass(frozen=True)
class SlackServerConfig:
    """Where the receiver listens and what it tolerates. Validated once; errors quote the value."""

    host: str = "127.0.0.1"  # loopback by default: reports are not encrypted
    port: int = 0  # 0: an ephemeral port (the advert file says which)
    secret: str | None = None  # shared secret: connections must answer an HMAC challenge
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES  # frames over this are dropped
    max_records: int = DEFAULT_MAX_RECORDS  # records in one frame
    max_entries: int = 65536  # reports kept at once (least recently updated evicted)
    frames_per_s: float = 50.0  # sustained frames per connection (the reporter sends ~13/s)
    burst_frames: float = 20.0  # frames accepted at once per connection
    max_connections: int = 64
    max_connections_per_peer: int = 32  # from one IP address (gateway workers share one)
    auth_timeout_s: float = 5.0  # to answer the challenge
    idle_timeout_s: float = 10.0  # longest wait for a frame; the reporter's heartbeat is 2 s
    require_known: bool = False  # only store reports for registered stream ids
    advert_path: str | None = None  # where to advertise url + counters (slack.discovery)
    advert_interval_s: float = 1.0  # how often the advert's counters are refreshed

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"slack port must be within 0..65535, got {self.port!r}")
        if self.secret is not None and not self.secret:
            raise ValueError("slack secret must not be empty (leave it unset to disable auth)")
        for name in ("max_frame_bytes", "max_records", "max_entries", "max_connections",
                     "max_connections_per_peer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("frames_per_s", "auth_timeout_s", "advert_interval_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.burst_frames, int | float) and self.burst_frames >= 1):
            raise ValueError(f"burst_frames must be >= 1, got {self.burst_frames!r}")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], dp_rank: int = 0, http_port: int | None = None
    ) -> SlackServerConfig | None:
        """The config from ``ANDES_SLACK_*``; ``None`` when ``ANDES_SLACK_PORT`` is unset.

        ``ANDES_SLACK_PORT`` is the base port (rank ``r`` listens on base + r; 0 = ephemeral),
        ``ANDES_SLACK_HOST`` the address (127.0.0.1), ``ANDES_SLACK_SECRET`` the shared secret,
        ``ANDES_SLACK_MAX_FRAME_BYTES`` / ``ANDES_SLACK_FRAMES_PER_S`` /
        ``ANDES_SLACK_IDLE_TIMEOUT_S`` the limits. The advert goes
        to :func:`slack.discovery.advert_path` for ``http_port`` unless
        ``ANDES_SLACK_ADVERT`` names a file (``none`` disables it).
        """
        raw = env.get("ANDES_SLACK_PORT", "").strip()
        if not raw:
            return None
        try:
            base = int(raw)
        except ValueError:
            raise ValueError(f"ANDES_SLACK_PORT must be an integer port, got {raw!r}") from None
        kwargs: dict[str, Any] = {"port": base + dp_rank if base else 0, "require_known": True}
        if env.get("ANDES_SLACK_HOST"):
            kwargs["host"] = env["ANDES_SLACK_HOST"].strip()
        if env.get("ANDES_SLACK_SECRET"):
            kwargs["secret"] = env["ANDES_SLACK_SECRET"]
        for name, key, kind in (
            ("ANDES_SLACK_MAX_FRAME_BYTES", "max_frame_bytes", int),
            ("ANDES_SLACK_FRAMES_PER_S", "frames_per_s", float),
            ("ANDES_SLACK_IDLE_TIMEOUT_S", "idle_timeout_s", float),
        ):
            if env.get(name):
                try:
                    kwargs[key] = kind(env[name])
                except ValueError:
                    raise ValueError(f"{name} must be a number, got {env[name]!r}") from None
        advert = env.get("ANDES_SLACK_ADVERT", "").strip()
        if advert.lower() == "none":
            pass
        elif advert:
            kwargs["advert_path"] = advert.replace("{rank}", str(dp_rank))
        elif http_port is not None:
            from slack.discovery import advert_path, slack_dir

            kwargs["advert_path"] = str(advert_path(http_port, dp_rank, slack_dir(dict(env))))
        return cls(**kwargs)


class SlackServer:
    """The receiver. ``start()`` it, read reports with :meth:`fresh_many`, ``stop()`` it."""

    def __init__(
        self,
        config: SlackServerConfig | None = None,
        clock: Callable[[], float] = time.time,
        advert_extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or SlackServerConfig()
        self.clock = clock
        self._advert_extra = dict(advert_extra or {})
        self._table = SlackTable(self.config.max_entries, self.config.require_known)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Open connections -> proven (a valid batch or a passed challenge), in arrival order.
        self._conns: dict[ServerConnection, bool] = {}
        self._closing: set[asyncio.Future[None]] = set()  # evicted connections being closed
        self.port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the slack server is not listening")
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Listen (in a daemon thread); return the URL. Raises if the address cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("the slack server is already started")
        self._thread = threading.Thread(target=self._run, name="andes-slack", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the slack server did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(
                f"slack server cannot listen on {self.config.host}:{self.config.port}: "
                f"{self._error}"
            ) from self._error
        logger.info("slack side channel listening on %s", self.url)
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection and the listener; join the thread. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just finished by itself
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # never let the thread die silently
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                logger.exception("slack server stopped on an error")
        finally:
            if self.config.advert_path:
                remove_advert(Path(self.config.advert_path))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        cfg = self.config
        server: Server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            max_size=cfg.max_frame_bytes * _HARD_LIMIT_FACTOR,
            compression=None,  # no inflate bombs, no CPU spent in the engine process
            max_queue=4,  # frames buffered per connection before TCP backpressure
            close_timeout=1.0,  # stop() must not wait long for a peer that does not answer
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        advert = asyncio.create_task(self._advertise()) if cfg.advert_path else None
        try:
            await self._stopping.wait()
        finally:
            if advert is not None:
                advert.cancel()
            server.close()
            await server.wait_closed()

    async def _advertise(self) -> None:
        path = Path(self.config.advert_path or "")
        while True:
            try:
                await asyncio.to_thread(write_advert, path, self._advert())
            except OSError as exc:
                logger.warning("cannot write the slack advert %s: %s", path, exc)
            await asyncio.sleep(self.config.advert_interval_s)

    def _advert(self) -> dict[str, Any]:
        return {**self._advert_extra, "url": self.url, "pid": os.getpid(),
                "counters": self.counters()}

    # -- the scheduler's side (any thread) ------------------------------------------------------

    def register(self, stream_id: str) -> None:
        """Accept reports for ``stream_id`` (the engine has a request for it)."""
        with self._lock:
            self._table.register(stream_id)

    def unregister(self, stream_id: str) -> None:
        """Forget ``stream_id`` and its report (its request finished)."""
        with self._lock:
            self._table.unregister(stream_id)

    def fresh(self, stream_id: str, now_s: float, stale_after_s: float) -> SlackRecord | None:
        with self._lock:
            return self._table.fresh(stream_id, now_s, stale_after_s)

    def fresh_many(
        self, stream_ids: Sequence[str], now_s: float, stale_after_s: float
    ) -> dict[str, SlackRecord]:
        """Fresh reports for ``stream_ids``, under one lock acquisition (one per engine step)."""
        with self._lock:
            return self._table.fresh_many(stream_ids, now_s, stale_after_s)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return self._table.counters.as_dict()

    # -- the network side (the server's thread) ---------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            counters: SlackCounters = self._table.counters
            setattr(counters, name, getattr(counters, name) + n)

    def _admit(self, ws: ServerConnection) -> str | None:
        """Take a slot for ``ws``; the reason it may not have one otherwise."""
        cfg = self.config
        peer = _host(ws)
        if sum(_host(c) == peer for c in self._conns) >= cfg.max_connections_per_peer:
            return "too many slack connections from this address"
        if len(self._conns) >= cfg.max_connections:
            victim = next((c for c, proven in self._conns.items() if not proven), None)
            if victim is None:
                return "too many slack connections"
            # The oldest connection that has shown nothing yet makes room: a real gateway
            # proves itself within milliseconds, an idle squatter never does.
            del self._conns[victim]
            self._count("evicted_connections")
            closing = asyncio.ensure_future(
                victim.close(_CLOSE_TRY_LATER, "evicted for a new connection"))
            self._closing.add(closing)  # a reference until done (asyncio keeps only weak ones)
            closing.add_done_callback(self._closing.discard)
        self._conns[ws] = False
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cfg = self.config
        refused = self._admit(ws)
        if refused is not None:
            self._count("refused_connections")
            await ws.close(_CLOSE_TRY_LATER, refused)
            return
        self._count("connections")
        peer = ws.remote_address
        try:
            if cfg.secret is not None:
                if not await self._authenticate(ws):
                    return
                self._prove(ws)
            bucket = TokenBucket(cfg.frames_per_s, cfg.burst_frames)
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), cfg.idle_timeout_s)
                except TimeoutError:
                    self._count("idle")
                    await ws.close(_CLOSE_POLICY, "idle")
                    return
                received_s = self.clock()
                if not bucket.allow(time.monotonic()):
                    self._count("flooded")
                    continue
                try:
                    batch = decode_batch(message, cfg.max_frame_bytes, cfg.max_records)  # type: ignore[arg-type]
                except SlackFrameTooLarge:
                    self._count("oversized")
                    continue
                except SlackFrameError as exc:
                    self._count("malformed")
                    logger.debug("slack frame from %s dropped: %s", peer, exc)
                    continue
                self._prove(ws)
                if batch.records:  # an empty batch is the reporter's heartbeat
                    with self._lock:
                        self._table.apply(batch, received_s)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:  # websockets refused a huge frame
                self._count("oversized")
        finally:
            self._conns.pop(ws, None)

    def _prove(self, ws: ServerConnection) -> None:
        if ws in self._conns:
            self._conns[ws] = True

    async def _authenticate(self, ws: ServerConnection) -> bool:
        nonce = os.urandom(NONCE_BYTES)
        await ws.send(encode_challenge(nonce))
        try:
            first = await asyncio.wait_for(ws.recv(), self.config.auth_timeout_s)
            verify_hello(first, self.config.secret or "", nonce)  # type: ignore[arg-type]
        except (TimeoutError, SlackFrameError) as exc:
            self._count("unauthenticated")
            logger.warning("slack connection from %s refused: %s", ws.remote_address, exc or
                           "no hello in time")
            await ws.close(_CLOSE_POLICY, "authentication failed")
            return False
        return True


def http_port_from_argv(argv: Sequence[str]) -> int | None:
    """The ``--port`` of vLLM's API server command line, if it has one.

    vLLM's engine core is a spawned child; ``multiprocessing`` gives it its parent's ``sys.argv``,
    so this finds the HTTP port when the engine was started by hand (``andes engine`` and
    :class:`engine.vllm.launch.EngineProcess` set ``ANDES_SLACK_HTTP_PORT`` instead).
    """
    for i, arg in enumerate(argv):
        value = None
        if arg == "--port" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--port="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def start_for_engine(
    env: Mapping[str, str], dp_rank: int = 0, argv: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> SlackServer | None:
    """Start the receiver for an engine core if ``ANDES_SLACK_PORT`` is set; else ``None``.

    The advert is keyed by ``ANDES_SLACK_HTTP_PORT``, else the ``--port`` in ``argv``, else
    vLLM's default 8000. Raises ``RuntimeError``/``ValueError`` on a bad setting or a port that
    cannot be bound: asking for the channel and silently not getting it would be worse.
    """
    raw = env.get("ANDES_SLACK_HTTP_PORT", "").strip()
    try:
        http_port = int(raw) if raw else (http_port_from_argv(argv) or 8000)
    except ValueError:
        raise ValueError(f"ANDES_SLACK_HTTP_PORT must be an integer, got {raw!r}") from None
    config = SlackServerConfig.from_env(env, dp_rank=dp_rank, http_port=http_port)
    if config is None:
        return None
    server = SlackServer(config, clock=clock, advert_extra={"http_port": http_port,
                                                            "dp_rank": dp_rank})
    server.start()
    return server


def _host(ws: ServerConnection) -> str:
    address = ws.remote_address
    return str(address[0]) if address else "?"
