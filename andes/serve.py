"""``andes serve``: the whole stack on one machine — the engine, the gateway, the demo page.

    andes serve                       # vLLM + AndesScheduler on the bundled model, gateway on :8080
    andes serve --policy fcfs         # the same with vLLM's first-come-first-served order
    andes serve --model /path/to/hf   # another model

The engine (vLLM's OpenAI server with the Andes scheduler) runs as a child process group on a
loopback port of its own; the gateway runs in this process in front of it and serves the demo chat
page at ``/``. Ctrl-C (or SIGTERM) shuts the gateway down gracefully — live streams get
``--shutdown-grace-s`` to finish — and then stops the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``andes serve`` options (the gateway's and the engine's most used ones)."""
    parser.epilog = (
        "For every gateway option use `andes engine` and `andes gateway` separately; the gateway "
        "also reads ANDES_GATEWAY_* environment variables here."
    )
    g = parser.add_argument_group("gateway")
    g.add_argument("--host", default="127.0.0.1", help="gateway address (default: %(default)s)")
    g.add_argument("--port", type=int, default=8080, help="gateway port (default: %(default)s)")
    g.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="accept this client API key (repeat); none = no authentication")
    g.add_argument("--pacing", choices=("server", "client", "off"), default=None,
                   help="default pacing (default: server)")
    g.add_argument("--tds", type=float, default=None, metavar="TOK_S",
                   help="default reading pace, tokens/s (default: 4.8)")
    g.add_argument("--ttft", type=float, default=None, metavar="S",
                   help="default expected time to first token, seconds (default: 1.0)")
    g.add_argument("--shutdown-grace-s", type=float, default=None, metavar="S",
                   help="on shutdown, live streams get this long to finish (default: 10)")
    e = parser.add_argument_group("engine")
    e.add_argument("--model", default="bundled",
                   help="model path or name; 'bundled' (default) is SmolLM2-135M-Instruct")
    e.add_argument("--policy", default="andes",
                   help="scheduling policy: andes, fcfs, lqf, round_robin (default: %(default)s)")
    e.add_argument("--stock", action="store_true", help="vLLM's own scheduler (no Andes plug-in)")
    e.add_argument("--engine-port", type=int, default=0,
                   help="engine port on 127.0.0.1 (default: any free port)")
    e.add_argument("--max-model-len", type=int, default=2048, help="tokens (default: %(default)s)")
    e.add_argument("--kv-cache-gb", type=float, default=1.0,
                   help="KV-cache size, GiB (default: %(default)s)")
    e.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="skip graph compilation: starts in ~45 s instead of ~100 s on 2 CPU cores, "
                        "steps a little slower (default: on)")
    e.add_argument("--engine-log", type=Path, default=None, metavar="FILE",
                   help="write the engine's log here (default: ~/.cache/andes/engine.log)")


def run(args: argparse.Namespace) -> int:
    from engine.vllm.cli import preflight
    from engine.vllm.launch import EngineConfig, EngineError, EngineProcess
    from engine.vllm.model import model_cache_dir
    from engine.vllm.settings import SchedulerSettings
    from gateway.cli import setup_logging
    from gateway.config import ConfigError, load_config

    try:
        engine_config = EngineConfig(
            model=args.model,
            host="127.0.0.1",
            port=args.engine_port,
            stock=args.stock,
            scheduler=SchedulerSettings(policy=args.policy),
            max_model_len=args.max_model_len,
            kv_cache_gb=args.kv_cache_gb,
            enforce_eager=args.enforce_eager,
        )
        preflight(engine_config)
    except (RuntimeError, ValueError) as exc:
        print(f"andes serve: {exc}", file=sys.stderr)
        return 2
    log_path = args.engine_log or model_cache_dir().parent.parent / "engine.log"
    engine = EngineProcess(engine_config, log_path=log_path)
    flags = {
        "host": args.host,
        "port": args.port,
        "api_keys": tuple(args.api_keys) if args.api_keys else None,
        "pacing": args.pacing,
        "tds_tok_s": args.tds,
        "ttft_s": args.ttft,
        "shutdown_grace_s": args.shutdown_grace_s,
        "upstreams": (engine.base_url,),
    }
    try:
        gateway_config = load_config(flags, os.environ)
    except ConfigError as exc:
        print(f"andes serve: {exc}", file=sys.stderr)
        return 2
    setup_logging(gateway_config)

    what = "vLLM (stock scheduler)" if args.stock else f"vLLM with AndesScheduler ({args.policy})"
    print(f"andes serve: starting {what} on {engine.base_url} — log: {log_path}", flush=True)
    try:
        engine.start()
        ready_s = engine.wait_ready()
    except (EngineError, OSError, ValueError) as exc:
        engine.stop()
        print(f"andes serve: the engine did not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        engine.stop()
        return 130
    print(f"andes serve: engine ready after {ready_s:.0f} s", flush=True)

    from gateway.app import serve as serve_gateway
    from gateway.cli import run_loop

    def announce(port: int) -> None:
        base = f"http://{gateway_config.host}:{port}"
        print(f"andes serve: demo chat page  {base}/\n"
              f"             OpenAI API      {base}/v1\n"
              f"             WebSocket       ws://{gateway_config.host}:{port}/v1/stream\n"
              "             Ctrl-C to stop", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_gateway(gateway_config, ready=announce)

    try:
        run_loop(main())  # on uvloop when installed
    except OSError as exc:  # e.g. the gateway port is taken
        print(f"andes serve: the gateway did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        print("andes serve: stopping the engine", flush=True)
        engine.stop()
    return 0
