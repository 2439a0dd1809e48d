"""``andes gateway``: run the pacing gateway in front of an OpenAI-compatible engine.

Example::

    andes gateway --upstream http://127.0.0.1:8000 --port 8080 --api-key "$KEY"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

from core.cli import add_deprecated_alias
from gateway.config import ENV_PREFIX, ConfigError, GatewayConfig, load_config

__all__ = ["add_arguments", "config_from_args", "run", "run_loop", "setup_logging"]

_D = GatewayConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option; each also reads ``ANDES_GATEWAY_<NAME>`` and the ``--config`` file."""
    parser.epilog = (f"Every option can also be set in the environment ({ENV_PREFIX}<OPTION>, "
                     f"e.g. {ENV_PREFIX}PORT=8080; lists comma-separated) or in the --config "
                     "file (TOML, or JSON if it ends in .json; keys are the option names with "
                     "underscores). Precedence: flag > environment > file > default.")
    a = parser.add_argument
    a("--config", metavar="FILE", help="TOML or JSON file of settings")
    a("--upstream", dest="upstreams", action="append", metavar="URL",
      help="base URL of an OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp, Ollama); "
           "repeat for several (routed by predicted time to first token and slack; see "
           "--routing)")
    a("--upstream-api-key", metavar="KEY", help="API key sent to the engine (Bearer)")
    a("--send-vllm-xargs", choices=("auto", "on", "off"),
      help=f"send the stream id and QoE in vllm_xargs; auto = when the engine is vLLM "
           f"(default {_D.send_vllm_xargs})")
    a("--upstream-connect-timeout-s", type=float, metavar="S",
      help=f"seconds to connect to the engine (default {_D.upstream_connect_timeout_s})")
    a("--upstream-first-byte-timeout-s", type=float, metavar="S",
      help=f"seconds for the engine to start answering a request; then 504 "
           f"(default {_D.upstream_first_byte_timeout_s})")
    a("--upstream-stall-timeout-s", type=float, metavar="S",
      help=f"a reader waiting this long on an engine that sends nothing ends the stream "
           f"(default {_D.upstream_stall_timeout_s})")
    a("--host", help=f"address to listen on (default {_D.host})")
    a("--port", type=int, help=f"port to listen on, 0 = any (default {_D.port})")
    a("--api-key", dest="api_keys", action="append", metavar="KEY",
      help="accept this client API key (repeat for several); none = no authentication")
    a("--allowed-origins", dest="allowed_origins", action="append", metavar="ORIGIN",
      help="web pages at this origin (https://host[:port], or *) may open the WebSocket; "
           "repeat or comma-separate; the gateway's own origin always may")
    a("--request-timeout-s", type=float, metavar="S",
      help=f"a request's headers and body must arrive within this; also the keep-alive idle "
           f"time (default {_D.request_timeout_s})")
    a("--workers", type=int, metavar="N",
      help=f"gateway processes sharing the port (SO_REUSEPORT), e.g. one per core "
           f"(default {_D.workers})")
    a("--ttft", dest="ttft_s", type=float, metavar="S",
      help=f"default expected time to first token, seconds (default {_D.ttft_s})")
    add_deprecated_alias(parser, "--ttft-s", "--ttft", dest="ttft_s", type=float)
    a("--tds", dest="tds_tok_s", type=float, metavar="TOK_S",
      help=f"default reading pace, tokens/s (default {_D.tds_tok_s})")
    add_deprecated_alias(parser, "--tds-tok-s", "--tds", dest="tds_tok_s", type=float)
    a("--pacing", choices=("server", "client", "off"),
      help=f"default pacing: the gateway paces, the client paces and acks, or pass-through "
           f"(default {_D.pacing})")
    a("--frame-s", type=float, metavar="S",
      help=f"coalesce paced text into at most one write per frame (default {_D.frame_s})")
    a("--word-boundary", action=argparse.BooleanOptionalAction, default=None,
      help=f"do not end a paced write mid-word (default {_D.word_boundary})")
    a("--served-model-name", dest="models", action="append", metavar="NAME",
      help="serve only this model name (repeat); default: whatever the engines list")
    add_deprecated_alias(parser, "--model", "--served-model-name", dest="models", append=True)
    a("--max-body-bytes", type=int, metavar="N",
      help=f"largest request body or WebSocket frame (default {_D.max_body_bytes})")
    a("--max-tokens", type=int, metavar="N",
      help=f"largest max_tokens a request may ask for (default {_D.max_tokens})")
    a("--max-concurrent-streams", type=int, metavar="N",
      help=f"streams open at once; more get 429 (default {_D.max_concurrent_streams})")
    a("--max-buffered-tokens", type=int, metavar="N",
      help=f"per stream, tokens received and not yet sent; beyond, the stream ends "
           f"(default {_D.max_buffered_tokens})")
    a("--max-buffered-bytes", type=int, metavar="N",
      help=f"per stream, bytes of text received and not yet sent; beyond, the stream ends "
           f"(default {_D.max_buffered_bytes})")
    a("--slow-reader-timeout-s", type=float, metavar="S",
      help=f"a client that takes no text for this long is disconnected "
           f"(default {_D.slow_reader_timeout_s})")
    a("--keepalive-s", type=float, metavar="S",
      help=f"': ping' on an SSE stream silent this long (default {_D.keepalive_s})")
    a("--shutdown-grace-s", type=float, metavar="S",
      help=f"on SIGTERM, live streams get this long to finish (default {_D.shutdown_grace_s})")
    a("--model-alias", dest="model_aliases", action="append", metavar="PUBLIC=UPSTREAM_ID",
      help="serve the upstream's model UPSTREAM_ID (e.g. a GGUF path) as PUBLIC (repeat)")
    g = parser.add_argument_group(
        "scheduling", "QoE scheduling in front of engines Andes does not control: a queue "
        "ordered by what waiting costs each reader's QoE (short answers by max_tokens and fast "
        "readers first), parking by continuation, routing among replicas")
    b = g.add_argument
    b("--admission", action=argparse.BooleanOptionalAction, default=None,
      help=f"hold new streams in the gateway's queue when admitting them would push admitted "
           f"streams below their readers' pace (default {_D.admission}); --no-admission: "
           f"pacing only, every request goes upstream at once")
    b("--parking", choices=("auto", "text", "off"),
      help=f"park streams with seconds buffered (abort upstream, resume by continuation): auto "
           f"where the continuation is exact by token ids (vLLM) and a start-up probe agrees; "
           f"text also where only a text continuation passed the probe (llama-cpp-python: "
           f"not exact in practice, see docs/continuation.md) (default {_D.parking})")
    b("--routing", choices=("qoe", "least_busy"),
      help=f"choose among replicas by predicted TTFT and slack, or the fewest in flight "
           f"(default {_D.routing})")
    b("--queue-max", type=int, metavar="N",
      help=f"streams waiting in the gateway at most; more get 429 (default {_D.queue_max})")
    b("--queue-timeout-s", type=float, metavar="S",
      help=f"a stream queued this long gets 429 (default {_D.queue_timeout_s})")
    b("--queue-starvation-s", type=float, metavar="S",
      help="a stream queued this long goes before any valued one, oldest first (fewer 429s, "
           "every stream later under overload); 0, or at or above --queue-timeout-s: the queue "
           "is ordered by what waiting costs each reader alone (default 0)")
    b("--sched-horizon-s", type=float, metavar="S",
      help=f"look-ahead of the QoE valuation (default {_D.sched_horizon_s})")
    b("--sched-interval-s", type=float, metavar="S",
      help=f"how often waiting and parked streams are reconsidered (default "
           f"{_D.sched_interval_s})")
    b("--park-min-slack-s", type=float, metavar="S",
      help=f"park only streams with this many seconds buffered for the reader "
           f"(default {_D.park_min_slack_s})")
    b("--park-min-run-s", type=float, metavar="S",
      help=f"a (re)started stream runs at least this long before it may be parked "
           f"(default {_D.park_min_run_s})")
    b("--park-budget", type=float, metavar="SHARE",
      help=f"share of an upstream's time that resuming parked streams may take (each resume "
           f"re-prefills what the engine had computed); 1 = no limit (default {_D.park_budget})")
    b("--max-upstream-streams", type=int, metavar="N",
      help=f"hard limit of requests in flight per upstream; 0 = what is learned "
           f"(default {_D.max_upstream_streams})")
    b("--health-interval-s", type=float, metavar="S",
      help=f"seconds between health checks of each upstream (default {_D.health_interval_s})")
    a("--log-format", choices=("text", "json"), help=f"log lines (default {_D.log_format})")
    a("--log-level", choices=("debug", "info", "warning", "error"),
      help=f"(default {_D.log_level})")
    # Defaults are written into each help text rather than set on the parser: None marks
    # "not given", so the environment and the file can fill it (precedence).


def config_from_args(args: argparse.Namespace,
                     env: dict[str, str] | None = None) -> GatewayConfig:
    flags = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
             if k != "config"}
    if flags.get("allowed_origins"):  # repeated and/or comma-separated
        flags["allowed_origins"] = tuple(o.strip() for v in flags["allowed_origins"]
                                         for o in v.split(",") if o.strip())
    return load_config(flags, os.environ if env is None else env, getattr(args, "config", None))


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out = {"t": round(time.time(), 3), "level": record.levelname.lower(),
               "logger": record.name}
        try:
            parsed = json.loads(msg)
            out.update(parsed if isinstance(parsed, dict) else {"msg": msg})
        except ValueError:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup_logging(config: GatewayConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("andes")
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"andes gateway: {exc}", file=sys.stderr)
        return 2
    if not config.upstreams:
        print("andes gateway: no upstream; pass --upstream URL (or set "
              f"{ENV_PREFIX}UPSTREAMS)", file=sys.stderr)
        return 2
    setup_logging(config)
    from gateway.app import listen_url, serve  # aiohttp only once the configuration is good

    if config.workers > 1:
        return _run_workers(config)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            # Printed whatever the log level: scripts starting us with --port 0 read the port.
            await serve(config, ready=lambda port: print(
                f"andes gateway listening on {listen_url(config.host, port)}", file=sys.stderr,
                flush=True))

    try:
        run_loop(main())
    except OSError as exc:  # the port is taken, the host is wrong
        print(f"andes gateway: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


def _run_workers(config: GatewayConfig) -> int:
    from gateway.app import exposure_warning, listen_url
    from gateway.workers import run_workers

    warning = exposure_warning(config)
    if warning is not None:
        logging.getLogger("andes.gateway").warning(warning)

    def ready(port: int, pids: list[int]) -> None:
        print(f"andes gateway listening on {listen_url(config.host, port)} "
              f"({config.workers} workers, pids {' '.join(map(str, pids))})", file=sys.stderr,
              flush=True)

    try:
        return run_workers(config, ready)
    except OSError as exc:
        print(f"andes gateway: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        return 1


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run``, on uvloop when it is installed: its C event loop and transports cut the
    gateway's CPU per write and per timer, which is what bounds concurrent paced streams."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
