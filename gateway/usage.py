"""The usage a stream reports, filled in honestly where the engine sent none.

OpenAI clients read ``usage`` from the final chunk (``stream_options.include_usage``) or the JSON
answer. Where the engine's own count exists the gateway reports it. Where it does not —
llama-cpp-python's server streams no usage at all; an aborted segment of a parked stream never
gets one — the gateway reports its own, and says so in ``andes.usage_source``:

* ``completion_tokens``: the generated tokens' ids where the engine returned them (``ids``),
  else the content deltas the gateway received (``counted``: one token per delta, exact for
  servers that stream one token per chunk, as vLLM and llama-cpp-python do except while a
  multi-byte character is incomplete). A parked stream adds the counts of its aborted segments
  to the engine's count for its last one (``engine+ids`` / ``engine+counted``).
* ``prompt_tokens``: the prompt's ids where returned (``ids``); else the engine's tokenize
  endpoint on the prompt (``tokenize``: exact for ``/v1/completions``; for chat the messages'
  contents joined, plus ``CHAT_TOKENS_PER_MESSAGE`` per message for the template — marked
  ``estimate``), asked when the stream starts (llama-cpp-python answers it between
  generations; not answered within a second of the end: the estimate); else
  ``ceil(characters / 4)`` (``estimate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from gateway.stream import Stream, StreamResult
from gateway.upstream import Upstream

__all__ = ["CHARS_PER_TOKEN", "CHAT_TOKENS_PER_MESSAGE", "check_seams", "count_prompt",
           "fill_usage", "prompt_text"]

CHARS_PER_TOKEN = 4.0
PROMPT_COUNT_WAIT_S = 1.0  # at the end, how long the prompt count may still take
CHAT_TOKENS_PER_MESSAGE = 4  # <|im_start|>role\n … <|im_end|>\n, roughly, in common templates


def prompt_text(endpoint: str, body: dict[str, Any]) -> tuple[str, int]:
    """The prompt's text and how many chat messages it had (0 for completions)."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
        return (prompt if isinstance(prompt, str) else ""), 0
    parts: list[str] = []
    messages = body.get("messages") or []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))  # fmt: skip
    return "\n".join(parts), len(messages)


async def fill_usage(upstream: Upstream, stream: Stream, result: StreamResult,
                     endpoint: str, body: dict[str, Any]) -> None:  # fmt: skip
    """Complete ``result.usage`` (and ``usage_source``) where the engine left gaps."""
    usage, source = result.usage, result.usage_source
    if "prompt_tokens" not in usage:
        text, messages = prompt_text(endpoint, body)
        count = None
        task = stream.prompt_count
        if task is not None:
            # Started with the stream (one-slot engines answer tokenize between generations).
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                count = await asyncio.wait_for(asyncio.shield(task), PROMPT_COUNT_WAIT_S)
        if count is not None:
            usage["prompt_tokens"] = count + CHAT_TOKENS_PER_MESSAGE * messages
            source["prompt_tokens"] = "tokenize" if messages == 0 else "estimate"
        else:
            usage["prompt_tokens"] = (math.ceil(len(text) / CHARS_PER_TOKEN)
                                      + CHAT_TOKENS_PER_MESSAGE * messages)  # fmt: skip
            source["prompt_tokens"] = "estimate"
    usage.setdefault("completion_tokens", 0)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]


def count_prompt(upstream: Upstream, stream: Stream, endpoint: str,
                 body: dict[str, Any]) -> None:  # fmt: skip
    """Start counting the prompt's tokens on an engine that will not report them (not vLLM)."""
    replica = stream.replica
    if replica is None or replica.is_vllm or replica.tokenize is None:
        return
    text, _ = prompt_text(endpoint, body)
    if text:
        stream.prompt_count = asyncio.ensure_future(
            upstream.tokenize(replica, str(body.get("model")), text, timeout_s=120.0))


async def check_seams(upstream: Upstream, stream: Stream, endpoint: str,
                      body: dict[str, Any], report: Callable[[str], None]) -> None:  # fmt: skip
    """How a parked stream's seams held, reported as ``ok`` / ``defect`` / ``unchecked``.

    A token-id continuation is checked as it starts (the engine's echo of its prompt must be the
    ids sent: ``Stream.seam_defects``). A text continuation is checked here, after the stream:
    the prompt and the whole text must re-tokenize to the prompt's tokens plus every token
    generated. Run in the background: on llama-cpp-python the tokenize endpoint waits for the
    engine's one slot."""
    if not stream.parks:
        return
    defects = stream.seam_defects
    replica = stream.replica
    if replica is not None and replica.continuation == "text" and endpoint == "completions":
        prompt, _ = prompt_text(endpoint, body)
        model = str(body.get("model"))
        base = await upstream.tokenize(replica, model, prompt, timeout_s=300.0)
        whole = await upstream.tokenize(replica, model, prompt + stream.progress.text,
                                        timeout_s=300.0)
        if base is None or whole is None:
            report("unchecked")
            return
        if whole - base != stream.progress.tokens:
            defects += 1
    for _ in range(stream.parks):
        report("ok" if defects <= 0 else "defect")
        defects -= 1
