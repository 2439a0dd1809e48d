"""``andes serve``: the whole stack on one machine — the engine, the gateway, the demo page.

    andes serve                              # vLLM + AndesScheduler on the bundled model, :8080
    andes serve --policy fcfs                # the same with vLLM's first-come-first-served order
    andes serve --model /path/to/hf          # another model
    andes serve -- --max-num-seqs 8          # after "--": any option of vLLM's server

The engine (vLLM's OpenAI server with the Andes scheduler) runs as a child process tree on a
loopback port of its own, under a guard (``engine/vllm/guard.py``) that ends the whole tree when
this process ends, however it ends. The gateway runs in this process in front of it, reports each
stream's slack to the scheduler over the slack channel (``slack/``), and serves the demo chat page
at ``/``. SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed) shut the gateway down
gracefully — live streams get ``--shutdown-grace-s`` to finish — and then stop the engine.

Everything that can be checked before the engine starts is (the policy and its
``ANDES_POLICY_OPTIONS``, the vLLM version, the gateway's settings, the ports), so a mistake is
reported in a line at once rather than after the model has loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from core.cli import add_deprecated_alias

__all__ = ["add_arguments", "run"]

_ENGINE_OWNED = ("--host", "--port")  # vLLM options serve sets itself (see --engine-port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``andes serve`` options: the gateway's most used ones and the engine's."""
    parser.epilog = (
        "After '--', options go to vLLM's server unchanged (any `vllm serve` option, e.g. "
        "-- --max-num-seqs 8 --tensor-parallel-size 2). The gateway also reads "
        "ANDES_GATEWAY_* environment variables and the --config file (see `andes gateway "
        "--help`), the scheduler ANDES_* variables (engine/vllm/settings.py)."
    )
    g = parser.add_argument_group("gateway")
    g.add_argument("--config", metavar="FILE",
                   help="the gateway's settings file (TOML, or JSON if it ends in .json; "
                        "a [gateway] table is read from a shared file)")
    g.add_argument("--host", default=None, help="gateway address (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=None, help="gateway port (default: 8080)")
    g.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="accept this client API key (repeat); none = no authentication")
    g.add_argument("--pacing", choices=("server", "client", "off"), default=None,
                   help="default pacing (default: server)")
    g.add_argument("--tds", dest="tds_tok_s", type=float, default=None, metavar="TOK_S",
                   help="default reading pace, tokens/s, for the gateway and the scheduler "
                        "(default: 4.8)")
    add_deprecated_alias(g, "--tds-tok-s", "--tds", dest="tds_tok_s", type=float)
    g.add_argument("--ttft", dest="ttft_s", type=float, default=None, metavar="S",
                   help="default expected time to first token, seconds (default: 1.0)")
    add_deprecated_alias(g, "--ttft-s", "--ttft", dest="ttft_s", type=float)
    g.add_argument("--shutdown-grace-s", type=float, default=None, metavar="S",
                   help="on shutdown, live streams get this long to finish (default: 10)")
    g.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="the gateway's log lines (default: text)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None,
                   help="(default: info)")
    e = parser.add_argument_group("engine")
    e.add_argument("--model", default="bundled",
                   help="model path or name; 'bundled' (default) is SmolLM2-135M-Instruct")
    e.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model's name in the OpenAI API (default: the bundled model's, or "
                        "--model)")
    e.add_argument("--policy", default=None,
                   help="scheduling policy: andes, fcfs, lqf, round_robin (default: "
                        "$ANDES_POLICY, else andes); its options: ANDES_POLICY_OPTIONS='{...}'")
    e.add_argument("--stock", action="store_true", help="vLLM's own scheduler (no Andes plug-in)")
    e.add_argument("--engine-port", type=int, default=0,
                   help="engine port on 127.0.0.1 (default: any free port)")
    e.add_argument("--slack-port", type=int, default=0, metavar="PORT",
                   help="the slack channel's port on 127.0.0.1 (default: any free port; the "
                        "gateway finds it)")
    e.add_argument("--max-model-len", type=int, default=2048, help="tokens (default: %(default)s)")
    e.add_argument("--kv-cache-gb", type=float, default=1.0,
                   help="KV-cache size, GiB (default: %(default)s)")
    e.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                   help="skip graph compilation: starts in ~45 s instead of ~100 s on 2 CPU cores, "
                        "steps a little slower (default: on)")
    e.add_argument("--engine-log", default=None, metavar="FILE",
                   help="write the engine's log here; '-' shows it on this console "
                        "(default: ~/.cache/andes/engine.log)")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER,
                        help="after '--': options passed to vLLM's server unchanged")


class _Console:
    """Start-up and shutdown lines that survive a closed pipe.

    ``andes serve | tee log`` then Ctrl-C kills ``tee`` too: a print must then neither raise
    (skipping the engine's shutdown) nor make the interpreter's last flush fail (exit 120). The
    first failed write points that stream at /dev/null for the rest of the run."""

    def say(self, text: str, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        try:
            stream.write(text + "\n")
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._silence(stream)

    @staticmethod
    def _silence(stream: TextIO) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    def error(self, text: str) -> None:
        self.say(f"andes serve: {text}", sys.stderr)


class _Stop(Exception):
    """SIGTERM or SIGHUP while the engine starts (SIGINT raises KeyboardInterrupt)."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _vllm_args(raw: list[str] | None) -> tuple[list[str], str | None]:
    """vLLM's own options (after ``--``), and the ``--served-model-name`` among them, if any."""
    extra = list(raw or ())
    if extra[:1] == ["--"]:
        extra = extra[1:]
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in _ENGINE_OWNED:
            raise ValueError(f"{name} after '--' would move vLLM away from the gateway: use "
                             f"--engine-port (the gateway's own is --port)")
    served = None
    if "--served-model-name" in extra:
        i = extra.index("--served-model-name")
        if i + 1 < len(extra):
            served = extra[i + 1]
            del extra[i:i + 2]
    return extra, served


def _engine(args: argparse.Namespace) -> Any:
    """The engine's configuration from the options and the ``ANDES_*`` environment."""
    from engine.vllm.cli import scheduler_settings
    from engine.vllm.launch import EngineConfig

    flags: dict[str, object] = {}
    if args.policy is not None:
        flags["policy"] = args.policy
    if args.tds_tok_s is not None:
        flags["default_tds_tok_s"] = args.tds_tok_s
    if args.ttft_s is not None:
        flags["default_ttft_s"] = args.ttft_s
    extra, served = _vllm_args(args.vllm_args)
    return EngineConfig(
        model=args.model, host="127.0.0.1", port=args.engine_port, stock=args.stock,
        scheduler=scheduler_settings(os.environ, **flags), max_model_len=args.max_model_len,
        kv_cache_gb=args.kv_cache_gb, enforce_eager=args.enforce_eager,
        served_model_name=args.served_model_name or served, extra_args=tuple(extra),
        slack_port=None if args.stock else args.slack_port,
    )


def check_port(host: str, port: int) -> None:
    """Raise ``OSError`` if ``host:port`` cannot be listened on now (taken, no such address)."""
    if port == 0:
        return
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as sock:
            # As asyncio's listening sockets do: a port in TIME_WAIT is free to them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)


def _gateway(args: argparse.Namespace, upstream: str) -> Any:
    from gateway.config import load_config

    flags = {
        "host": args.host, "port": args.port,
        "api_keys": tuple(args.api_keys) if args.api_keys else None,
        "pacing": args.pacing, "tds_tok_s": args.tds_tok_s, "ttft_s": args.ttft_s,
        "shutdown_grace_s": args.shutdown_grace_s, "log_format": args.log_format,
        "log_level": args.log_level, "upstreams": (upstream,),
    }
    return load_config(flags, os.environ, args.config)


def run(args: argparse.Namespace) -> int:
    from engine.vllm.cli import preflight
    from engine.vllm.launch import EngineProcess
    from engine.vllm.model import model_cache_dir
    from gateway.cli import setup_logging
    from gateway.config import ConfigError

    console = _Console()
    try:
        engine_config = _engine(args)
        preflight(engine_config)
        log_path = (None if args.engine_log == "-" else Path(args.engine_log) if args.engine_log
                    else model_cache_dir().parent.parent / "engine.log")
        engine = EngineProcess(engine_config, log_path=log_path)
        gateway_config = _gateway(args, engine.base_url)
    except (RuntimeError, ValueError, ConfigError) as exc:
        console.error(str(exc))
        return 2
    for what, host, port in (("the gateway", gateway_config.host, gateway_config.port),
                             ("the engine", "127.0.0.1", args.engine_port)):
        try:
            check_port(host, port)
        except OSError as exc:
            console.error(f"{what} cannot listen on {host}:{port}: {exc.strerror or exc} "
                          f"(another andes serve? choose another with "
                          f"{'--port' if what == 'the gateway' else '--engine-port'})")
            return 2
    setup_logging(gateway_config)
    try:
        return _serve(engine, gateway_config, args, console)
    finally:
        console.say("andes serve: stopping the engine")
        engine.stop()
        console.say("andes serve: stopped")


def _serve(engine: Any, gateway_config: Any, args: argparse.Namespace, console: _Console) -> int:
    from engine.vllm.launch import EngineError

    what = ("vLLM (stock scheduler)" if args.stock
            else f"vLLM with AndesScheduler ({engine.config.scheduler.policy})")
    where = engine.log_path or "this console"
    console.say(f"andes serve: starting {what} on {engine.base_url} — log: {where}")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        engine.start()
        ready_s = engine.wait_ready()
    except (EngineError, OSError, ValueError) as exc:
        console.error(f"the engine did not start: {exc}")
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.say(f"andes serve: engine ready after {ready_s:.0f} s")
    try:
        _run_gateway(gateway_config, _announcement(engine, gateway_config, args), console)
    except OSError as exc:  # the gateway port was taken meanwhile
        console.error(f"the gateway did not start: {exc.strerror or exc}")
        return 1
    return 0


def _announcement(engine: Any, config: Any, args: argparse.Namespace) -> Any:
    from slack.discovery import discover

    def lines(port: int) -> str:
        base = f"http://{config.host}:{port}"
        if args.stock:
            slack = "off (--stock: vLLM's own scheduler takes no slack)"
        else:
            urls = discover(engine.base_url)
            slack = (f"{', '.join(urls)} (the gateway reports each stream's slack to the "
                     f"scheduler every {config.slack_interval_s * 1000:.0f} ms)" if urls
                     else "not advertised by the engine yet (the gateway keeps looking)")
        return (f"andes serve: demo chat page  {base}/\n"
                f"             OpenAI API      {base}/v1  (model {engine.config.served_name()})\n"
                f"             WebSocket       ws://{config.host}:{port}/v1/stream\n"
                f"             slack channel   {slack}\n"
                "             Ctrl-C to stop")

    return lines


def _run_gateway(config: Any, lines: Any, console: _Console) -> None:
    from gateway.app import serve as serve_gateway
    from gateway.cli import run_loop

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_gateway(config, ready=lambda port: console.say(lines(port)))

    run_loop(main())  # on uvloop when installed
