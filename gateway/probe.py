"""The start-up probe: what an upstream can do for the gateway, found by asking it.

For each upstream the gateway finds out, once at start-up (and again when it comes back after
an outage):

* how it counts tokens (``Replica.tokenize``): vLLM's ``POST /tokenize``, llama-cpp-python's
  ``POST /extras/tokenize``, or llama.cpp's C++ server ``POST /tokenize {content}``;
* which continuation it offers (``Replica.continuation``): ``token_ids`` where a streamed
  ``/v1/completions`` with ``return_token_ids`` returns the prompt's and the generated tokens'
  ids, else ``text`` where it can tokenize (the seam is checked before each park), else none;
* whether that continuation is **exact**: a greedy generation of ``PROBE_TOKENS`` tokens, once
  straight through and once aborted after ``PROBE_PARK_AT`` tokens (the connection closed, as a
  park does) and resumed by the continuation, must agree token for token (ids where returned,
  else text). The prompt is a count ("1, 2, 3, …"): its greedy continuation has no near-ties, so a
  mismatch means a broken continuation (a token lost or repeated at the seam, a BOS or template
  added to the prompt), not the engine's floating-point noise between prefill and decode (which
  can flip a near-tie of an ordinary prompt even between two unparked runs — seen on
  llama-cpp-python). Parking stays off on an upstream that fails.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from gateway.continuation import Progress, continuation_body
from gateway.replica import Replica, TokenizeKind
from gateway.sse import SSEParser

__all__ = ["PROBE_PROMPT", "probe"]

log = logging.getLogger("andes.gateway")

PROBE_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
PROBE_HEADER = {"X-Andes-Probe": "1"}  # so an engine's logs (and the tests' engines) can tell
PROBE_TOKENS = 24
PROBE_PARK_AT = 9
_TIMEOUT = aiohttp.ClientTimeout(total=60)


async def _post_json(session: aiohttp.ClientSession, url: str,
                     body: dict[str, Any]) -> Any:  # fmt: skip
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10),
                                headers=PROBE_HEADER) as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def _tokenize_kind(session: aiohttp.ClientSession, base: str,
                         model: str) -> TokenizeKind | None:  # fmt: skip
    data = await _post_json(session, base + "/tokenize", {"model": model, "prompt": "hi"})
    if isinstance(data, dict) and isinstance(data.get("tokens"), list) and "count" in data:
        return "vllm"
    data = await _post_json(session, base + "/extras/tokenize", {"model": model, "input": "hi"})
    if isinstance(data, dict) and isinstance(data.get("tokens"), list):
        return "llama_cpp_python"
    data = await _post_json(session, base + "/tokenize", {"content": "hi"})
    if isinstance(data, dict) and isinstance(data.get("tokens"), list):
        return "llama_cpp"
    return None


async def _generate(session: aiohttp.ClientSession, base: str, body: dict[str, Any],
                    stop_after: int | None = None) -> Progress:  # fmt: skip
    """Stream ``body`` from ``/v1/completions``; with ``stop_after``, abort after that many
    tokens, as a park does."""
    progress = Progress()
    payload = dict(body, stream=True)
    async with session.post(base + "/v1/completions", json=payload, timeout=_TIMEOUT,
                            headers=PROBE_HEADER) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        parser = SSEParser()
        async for chunk in resp.content.iter_any():
            for event in parser.feed(chunk):
                if event.data.strip() == "[DONE]":
                    return progress
                obj = json.loads(event.data)
                choices = obj.get("choices") or []
                if not choices:
                    continue
                c = choices[0]
                prompt_ids = obj.get("prompt_token_ids", c.get("prompt_token_ids"))
                if isinstance(prompt_ids, list) and progress.prompt_token_ids is None:
                    progress.prompt_token_ids = prompt_ids
                ids = c.get("token_ids")
                text = c.get("text") or ""
                if isinstance(ids, list):
                    progress.token_ids.extend(ids)
                    progress.tokens += len(ids)
                elif text:
                    progress.tokens += 1
                progress.text += text
                if stop_after is not None and progress.tokens >= stop_after:
                    resp.close()  # the abort a park sends
                    return progress
    return progress


async def probe(session: aiohttp.ClientSession, server: Replica, model: str) -> None:
    """Fill ``server.tokenize``, ``server.continuation`` and ``server.probe_note``."""
    base = server.base
    server.tokenize = await _tokenize_kind(session, base, model)
    body: dict[str, Any] = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": PROBE_TOKENS,
                            "temperature": 0}
    if server.tokenize in ("llama_cpp_python", "llama_cpp"):
        body["repeat_penalty"] = 1.0  # the only setting parked there (continuation.py)
    try:
        ref = await _generate(session, base, dict(body, return_token_ids=True))
    except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError):
        # Engines that refuse unknown fields: ask again without return_token_ids.
        try:
            ref = await _generate(session, base, body)
        except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
            server.continuation, server.probe_note = None, f"probe failed: {exc}"
            return
    kind = ("token_ids" if ref.prompt_token_ids is not None and ref.token_ids
            else "text" if server.tokenize is not None else None)  # fmt: skip
    if kind is None:
        server.continuation = None
        server.probe_note = "no token ids and no tokenize endpoint: no exact continuation"
        return
    if ref.tokens <= PROBE_PARK_AT:
        server.continuation, server.probe_note = None, "the probe generation ended too early"
        return
    send = dict(body, return_token_ids=True) if kind == "token_ids" else body
    try:
        part = await _generate(session, base, send, stop_after=PROBE_PARK_AT)
        rest_body = continuation_body("completions", body, part, kind)
        rest = await _generate(session, base, rest_body)
    except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
        server.continuation, server.probe_note = None, f"continuation failed: {exc}"
        return
    if kind == "token_ids":
        same = part.token_ids + rest.token_ids == ref.token_ids
        got, want = part.token_ids + rest.token_ids, ref.token_ids
    else:
        same = part.text + rest.text == ref.text
        got, want = part.text + rest.text, ref.text  # type: ignore[assignment]
    if same:
        server.continuation = kind
        server.probe_note = (f"exact ({kind}): parked after {part.tokens} of {ref.tokens} "
                             "greedy tokens, resumed identically")
    else:
        server.continuation = None
        server.probe_note = f"not exact ({kind}): resumed {got!r}, unparked {want!r}"
    log.info("upstream %s: %s", base, server.probe_note)
