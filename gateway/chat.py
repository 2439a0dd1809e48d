"""``andes chat``: a terminal chat that shows each answer at your reading pace.

It talks to a gateway's WebSocket (``gateway/client.py``), paces the text locally and acknowledges
what it printed, so the gateway knows how far you have read. Ctrl-C stops the current answer;
Ctrl-D (or an empty line at the prompt twice) leaves.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from gateway.client import (
    DEFAULT_URL,
    URL_ENV,
    ClientError,
    default_url,
    stream_sync,
    websocket_url,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=default_url(),
                        help=f"the gateway: http://HOST:PORT as andes serve prints it (with or "
                             f"without /v1), or its ws://HOST:PORT/v1/stream (default "
                             f"${URL_ENV}, else {DEFAULT_URL})")
    parser.add_argument("--tds", type=float, default=5.0,
                        help="your reading pace, tokens/s (default 5)")
    parser.add_argument("--ttft", type=float, default=None, help="expected time to first token, s")
    parser.add_argument("--model", default=None, help="model name (default: the gateway's)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--api-key", default=os.environ.get("ANDES_API_KEY"),
                        help="the gateway's API key (default: $ANDES_API_KEY)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="ask this instead of reading stdin (repeatable), then exit")
    parser.add_argument("--quiet", action="store_true", help="no QoE line after each answer")


def _answer(args: argparse.Namespace, messages: list[dict[str, Any]], out: TextIO) -> str | None:
    qoe: dict[str, float] = {"tds": args.tds}
    if args.ttft is not None:
        qoe["ttft"] = args.ttft
    s = stream_sync(args.url, messages, model=args.model, qoe=qoe, max_tokens=args.max_tokens,
                    api_key=args.api_key)
    parts: list[str] = []
    try:
        for text in s:
            parts.append(text)
            out.write(text)
            out.flush()
    except KeyboardInterrupt:
        s.close()
        out.write("\n[stopped]\n")
        return "".join(parts) or None
    out.write("\n")
    r = s.result
    if r is not None and not args.quiet:
        ttft = "–" if r.ttft_s is None else f"{r.ttft_s:.2f} s"
        out.write(f"[QoE {r.qoe:.3f} at the gateway, {r.shown_qoe:.3f} as shown · TTFT {ttft} · "
                  f"{r.tokens} tokens · {r.finish_reason}]\n")
    out.flush()
    return "".join(parts)


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    try:
        args.url = websocket_url(args.url)
    except ValueError as exc:
        print(f"andes chat: {exc}", file=sys.stderr)
        return 2
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    prompts = iter(args.prompt) if args.prompt else None
    interactive = prompts is None and stdin.isatty()
    if interactive:
        out.write(f"andes chat — {args.url}, at {args.tds:g} tokens/s. Ctrl-C stops an answer, "
                  "Ctrl-D leaves.\n")
    while True:
        if prompts is not None:
            text = next(prompts, None)
        else:
            if interactive:
                out.write("\n> ")
                out.flush()
            line = stdin.readline()
            text = line.rstrip("\n") if line else None
        if text is None:
            return 0
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = _answer(args, messages, out)
        except ClientError as exc:
            out.write(f"\n[error] {exc}\n")
            messages.pop()
            if prompts is not None or not interactive:
                return 1
            continue
        except ValueError as exc:
            out.write(f"[error] {exc}\n")
            return 2
        if answer:
            messages.append({"role": "assistant", "content": answer})
