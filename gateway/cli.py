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
           "repeat for several (routed to the least busy)")
    a("--upstream-api-key", metavar="KEY", help="API key sent to the engine (Bearer)")
    a("--send-vllm-xargs", choices=("auto", "on", "off"),
      help=f"send the stream id and QoE in vllm_xargs; auto = when the engine is vLLM "
           f"(default {_D.send_vllm_xargs})")
    a("--upstream-connect-timeout-s", type=float, metavar="S",
      help=f"seconds to connect to the engine (default {_D.upstream_connect_timeout_s})")
    a("--host", help=f"address to listen on (default {_D.host})")
    a("--port", type=int, help=f"port to listen on, 0 = any (default {_D.port})")
    a("--api-key", dest="api_keys", action="append", metavar="KEY",
      help="accept this client API key (repeat for several); none = no authentication")
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
    a("--slow-reader-timeout-s", type=float, metavar="S",
      help=f"a client that takes no text for this long is disconnected "
           f"(default {_D.slow_reader_timeout_s})")
    a("--keepalive-s", type=float, metavar="S",
      help=f"': ping' on an SSE stream silent this long (default {_D.keepalive_s})")
    a("--shutdown-grace-s", type=float, metavar="S",
      help=f"on SIGTERM, live streams get this long to finish (default {_D.shutdown_grace_s})")
    a("--log-format", choices=("text", "json"), help=f"log lines (default {_D.log_format})")
    a("--log-level", choices=("debug", "info", "warning", "error"),
      help=f"(default {_D.log_level})")
    # Defaults are written into each help text rather than set on the parser: None marks
    # "not given", so the environment and the file can fill it (precedence).


def config_from_args(args: argparse.Namespace,
                     env: dict[str, str] | None = None) -> GatewayConfig:
    flags = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
             if k != "config"}
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
    from gateway.app import serve  # aiohttp only once the configuration is good

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
                f"andes gateway listening on http://{config.host}:{port}", file=sys.stderr,
                flush=True))

    try:
        run_loop(main())
    except OSError as exc:  # the port is taken, the host is wrong
        print(f"andes gateway: cannot listen on {config.host}:{config.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run``, on uvloop when it is installed: its C event loop and transports cut the
    gateway's CPU per write and per timer, which is what bounds concurrent paced streams."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
