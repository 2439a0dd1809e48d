"""The aiohttp application: routes, middlewares, lifecycle. ``create_app(config)`` is what the
CLI, ``andes serve`` and the tests run; :func:`start` / :func:`serve` run it on a socket.

Routes: the OpenAI API (``gateway/http_api.py``), the WebSocket (``gateway/ws_api.py``),
``GET /health``, ``GET /metrics``, and the demo page: ``/`` → ``gateway/static/index.html``,
``/static/`` → ``gateway/static/``, ``/client_js/`` → the repository's ``client_js/src`` (when
present).

``/health`` stays open (load balancers probe it without a key), but when the gateway has API keys
only a caller with a key sees more than ``{"status"}``: the upstream URLs and models are not for
everyone. Incoming connections must deliver each request's headers (and body) within
``request_timeout_s``, which is also how long an idle keep-alive connection is kept.

Lifecycle: the upstream session lives in a ``cleanup_ctx``. On shutdown the runner first stops
accepting connections; then live streams get ``shutdown_grace_s`` to finish, the rest are ended
cleanly (an SSE error event / a WebSocket ``error`` frame and close 1001) and their engine requests
cancelled; idle WebSockets are closed with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway import http_api, ws_api
from gateway.auth import GATEWAY, bearer, key_ok
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, PayloadTooLarge, Unauthorized
from gateway.errors import openai_error as _openai_error
from gateway.feedback import start_reporter
from gateway.metrics import CONTENT_TYPE
from gateway.service import Gateway
from gateway.workers import WorkerSlot, merge_expositions

__all__ = ["GATEWAY", "create_app", "exposure_warning", "listen_url", "serve", "serve_worker",
           "start"]

log = logging.getLogger("andes.gateway")

STATIC_DIR = Path(__file__).resolve().parent / "static"
CLIENT_JS_DIR = Path(__file__).resolve().parent.parent / "client_js" / "src"
_OPEN_PATHS = ("/health", "/metrics", "/v1/stream")  # /v1/stream authenticates inside the socket

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map the exception tree to OpenAI error objects; count requests by route and status."""
    gw = request.app[GATEWAY]
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except GatewayError as exc:
        status = exc.status
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers())
    except web.HTTPRequestEntityTooLarge:
        status = 413
        exc413 = PayloadTooLarge(f"request body exceeds {gw.config.max_body_bytes} bytes")
        return web.json_response(exc413.body(), status=413)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400 or not request.path.startswith("/v1/"):
            raise
        return web.json_response(_openai_error(exc.reason, "invalid_request_error"),
                                 status=exc.status)
    except (asyncio.CancelledError, ConnectionError):
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response(_openai_error("internal error in the gateway", "server_error"),
                                 status=500)
    finally:
        gw.metrics.requests.labels(name, str(status)).inc()


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    if (gw.config.api_keys and request.path.startswith("/v1/")
            and request.path not in _OPEN_PATHS
            and not key_ok(gw, bearer(request))):
        # Never log or echo the presented key.
        raise Unauthorized("Incorrect or missing API key; send Authorization: Bearer KEY")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    upstreams = await gw.upstream.health()
    ok = any(u["reachable"] for u in upstreams) and not gw.table.draining
    body: dict[str, object] = {
        "status": "ok" if ok else ("draining" if gw.table.draining else "degraded")}
    if key_ok(gw, bearer(request)):
        body.update(active_streams=len(gw.table), upstreams=upstreams)
    return web.json_response(body, status=200 if ok else 503)


def listen_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets (``http://[::]:8080``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = gw.metrics.exposition()
    if gw.worker is not None:
        data = await _all_workers(gw.worker, data)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


async def _all_workers(slot: WorkerSlot, own: bytes) -> bytes:
    """Every worker's metrics, labelled by worker (gateway/workers.py)."""
    async def fetch(i: int, port: int) -> tuple[int, bytes] | None:
        if i == slot.index:
            return i, own
        if not port:
            return None  # starting, or restarting
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
                    s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                return i, await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("metrics of gateway worker %d unavailable", i)
            return None
    parts = await asyncio.gather(*(fetch(i, p) for i, p in enumerate(slot.metrics_ports)))
    return merge_expositions([part for part in parts if part is not None])


async def serve_worker(config: GatewayConfig, slot: WorkerSlot, port: int,
                       ready: Callable[[], None]) -> None:
    """One worker of ``--workers N`` (gateway/workers.py): the gateway on the shared port, its
    own metrics on a private loopback port for the others; until SIGTERM."""
    app = create_app(config)
    gw = app[GATEWAY]
    gw.worker = slot
    gw.table.others = slot.others
    gw.table.publish = slot.publish
    runner, _ = await start(config, port=port, reuse_port=True, app=app)
    private = web.Application()

    async def own_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=gw.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    private.router.add_get("/metrics", own_metrics)
    private_runner = web.AppRunner(private, access_log=None)
    await private_runner.setup()
    site = web.TCPSite(private_runner, "127.0.0.1", 0)
    await site.start()
    slot.metrics_ports[slot.index] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    ready()
    try:
        await stop.wait()
    finally:
        slot.metrics_ports[slot.index] = 0
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await private_runner.cleanup()


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return web.Response(text="Andes gateway: the demo page is not installed.\n",
                            content_type="text/plain")
    return web.FileResponse(page)


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.upstream.start()
    await gw.dispatch.start()  # the scheduler, health checks and the start-up probe
    yield
    await gw.dispatch.stop()
    await gw.upstream.close()


async def _reporter_ctx(app: web.Application) -> AsyncIterator[None]:
    # Slack reports to the engine's scheduler (gateway/feedback.py); off when not configured.
    reporter = await start_reporter(app[GATEWAY])
    yield
    if reporter is not None:
        await reporter.stop()


async def _on_shutdown(app: web.Application) -> None:
    gw = app[GATEWAY]
    if len(gw.table):
        log.info("shutting down: %d live streams get %.1f s to finish", len(gw.table),
                 gw.config.shutdown_grace_s)
    await gw.table.drain(gw.config.shutdown_grace_s)
    await ws_api.close_all(app)


def _static(root: Path) -> Handler:
    """A file under ``root``, else 404 — for any name, including ones the OS refuses (too long,
    NUL), which aiohttp's own static route let through as a 500 with a traceback."""
    root = root.resolve()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            path = (root / request.match_info["name"]).resolve()
            found = path.is_relative_to(root) and path.is_file()
        except (OSError, ValueError):
            found = False
        if not found:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    return handler


def exposure_warning(config: GatewayConfig) -> str | None:
    """What to warn about when the gateway listens beyond this machine with no API keys."""
    if config.api_keys or config.host in ("127.0.0.1", "::1", "localhost"):
        return None
    return (f"listening on {config.host} with no API keys: anyone who can reach this address "
            "can use the engine (pass --api-key, or --host 127.0.0.1)")


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway as an aiohttp application (not yet started)."""
    # client_max_size is enforced by aiohttp while reading; the handler checks Content-Length
    # first so a large body is refused before it is read.
    app = web.Application(middlewares=[_errors, _auth], client_max_size=config.max_body_bytes)
    app[GATEWAY] = Gateway(config)
    http_api.add_routes(app)
    ws_api.add_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    for prefix, root in (("/static/", STATIC_DIR), ("/client_js/", CLIENT_JS_DIR)):
        if root.is_dir():
            app.router.add_get(prefix + "{name:.+}", _static(root))
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_reporter_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start(config: GatewayConfig, host: str | None = None,
                port: int | None = None, *, reuse_port: bool = False,
                app: web.Application | None = None) -> tuple[web.AppRunner, int]:
    """Run the gateway on ``host:port`` (port 0 = any free port); returns (runner, port).

    ``await runner.cleanup()`` stops it gracefully. ``handler_cancellation`` makes a client
    disconnect cancel its handler at once, which cancels the engine request. ``reuse_port``: a
    worker process sharing the port with others (gateway/workers.py).
    """
    app = create_app(config) if app is None else app
    # keepalive_timeout: aiohttp closes a connection still waiting for a complete request this
    # long after it opened (or after its last response) — idle, or trickling its headers
    # (slowloris). The body has the same bound in http_api.read_json.
    runner = web.AppRunner(app, handler_cancellation=True,
                           shutdown_timeout=config.shutdown_grace_s + 10.0,
                           access_log=None, keepalive_timeout=config.request_timeout_s)
    await runner.setup()
    # backlog: a burst of connects beyond it (aiohttp default 128) waits out SYN retransmits.
    site = web.TCPSite(runner, host or config.host, config.port if port is None else port,
                       backlog=4096, reuse_port=reuse_port or None)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None else 0  # type: ignore[attr-defined]
    return runner, bound


async def serve(config: GatewayConfig, ready: Callable[[int], None] | None = None) -> None:
    """Run until cancelled (SIGINT/SIGTERM in the CLI), then shut down gracefully."""
    warning = exposure_warning(config)
    if warning is not None:
        log.warning(warning)
    runner, port = await start(config)
    log.info("serving on %s; upstreams: %s", listen_url(config.host, port),
             ", ".join(config.upstreams))
    if ready is not None:
        ready(port)
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()

