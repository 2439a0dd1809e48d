"""One planned request over the Andes gateway's WebSocket, read by its reader: the closed loop.

:func:`ws_stream_request` streams a :class:`~bench.plan.PlannedRequest` through the
gateway's ``/v1/stream`` with ``client`` pacing, using the project's Python client
(:mod:`gateway.client`) as a chat page would: the gateway sends the text as the engine produces it;
the client paces it locally at the *reader's actual* pace (a ``pace`` frame tells the gateway too)
and acknowledges what it has shown; a reader who hides the tab sends ``pause`` and, when back,
``resume``. The gateway turns acks, pace and pause into the slack it reports to the engine — the
closed loop that server-side inference lacks.

Recorded into the :class:`~bench.result.RequestRecord`, relative to the request's due time:
each token's arrival at the client (``delta`` frames, when read off the socket, before local
pacing), the reader's pace and the pause actually sent (``[pause, resume)``; if the stream ends
while the reader is away, the interval keeps the reader's planned return). With those the record is
scored on the reader's clock (:func:`bench.readers.reader_qoe`) and can be rescored later.

The request is over once the gateway's ``done`` frame has arrived: what the reader does after that
(reading the rest of the buffer, coming back) no longer reaches the engine, and its score follows
from the record, so the client does not pace the remainder out in real time.

Outputs are forced as on the HTTP path: ``extra_body`` carries vLLM's ``ignore_eos`` (and the run's
``cache_salt``) with ``max_tokens`` from the plan. Tokens are counted as the gateway counts them,
one per engine delta; the ``done`` frame's usage is kept beside the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidURI

from bench.client import EndpointConfig
from bench.errors import EndpointError
from bench.plan import PlannedRequest
from bench.readers import Reader
from bench.result import RequestRecord
from gateway.client import ClientError, StreamFailed, TextStream, stream

__all__ = ["check_gateway", "ws_stream_request"]

OPEN_TIMEOUT_S = 30.0  # the WebSocket handshake (the gateway answers it before asking the engine)


async def check_gateway(endpoint: EndpointConfig) -> None:
    """Raise :class:`EndpointError` unless ``endpoint`` has the gateway's WebSocket endpoint."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else None
    url = endpoint.ws_url
    try:
        async with connect(url, subprotocols=["andes.v1.json"],  # type: ignore[list-item]
                           additional_headers=headers, open_timeout=OPEN_TIMEOUT_S):
            pass
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise EndpointError(
            f"no Andes gateway WebSocket at {url} ({exc or type(exc).__name__}); the ws transport"
            " needs the gateway's URL"
        ) from None


async def ws_stream_request(
    endpoint: EndpointConfig,
    model: str,
    req: PlannedRequest,
    reader: Reader | None,
    record: RequestRecord,
    due_clock_s: float,
) -> None:
    """Stream ``req`` through the gateway, read by ``reader`` (None: reads as declared, never
    hides); fill ``record`` as it goes.

    ``due_clock_s`` is the request's due time on :func:`time.perf_counter`'s clock. Failures are
    written to ``record.error``; only cancellation propagates.
    """
    clock = time.perf_counter
    if reader is not None:
        record.read_tds_tok_s = reader.read_tds_tok_s
    first_token = asyncio.Event()

    def on_delta(now: float, count: int) -> None:
        record.token_times_s.extend([now - due_clock_s] * count)
        first_token.set()

    s = stream(
        endpoint.ws_url, [{"role": "user", "content": req.prompt}], model=model,
        qoe={"ttft": req.spec.ttft_s, "tds": req.spec.tds_tok_s}, pacing="client",
        max_tokens=req.max_tokens, temperature=endpoint.temperature, api_key=endpoint.api_key,
        extra_body=endpoint.extra_body() or None, open_timeout_s=OPEN_TIMEOUT_S, clock=clock,
        on_delta=on_delta,
    )  # fmt: skip
    record.sent_s = clock() - due_clock_s
    try:
        async with asyncio.timeout(endpoint.request_timeout_s), s:
            if reader is not None and reader.misdeclared:
                await s.set_pace(reader.read_tds_tok_s)  # before any text: the pace it reads at
            tasks = [asyncio.create_task(_read_along(s))]
            if reader is not None and reader.pauses:
                tasks.append(asyncio.create_task(
                    _hide_once(s, reader, first_token, record, due_clock_s, clock)))  # fmt: skip
            try:
                done = await s.wait_received()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        record.finish_reason = done.finish_reason
        record.usage_completion_tokens = done.usage.completion_tokens
        record.usage_prompt_tokens = done.usage.prompt_tokens
    except TimeoutError:
        record.error = f"timeout after {clock() - due_clock_s - record.sent_s:.1f} s"
    except StreamFailed as exc:
        record.error = f"{exc.code}: {exc.message}"
    except ClientError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end_s = clock() - due_clock_s


async def _read_along(s: TextStream) -> None:
    """The reader's eyes: take the text as the local pacer hands it out (which sends the acks)."""
    with contextlib.suppress(ClientError):  # wait_received() reports the stream's error
        async for _ in s:
            pass


async def _hide_once(s: TextStream, reader: Reader, first_token: asyncio.Event,
                     record: RequestRecord, due_clock_s: float,
                     clock: Callable[[], float]) -> None:  # fmt: skip
    """Hide the tab ``reader.pause_after_s`` after the first token, for ``reader.pause_s``."""
    await first_token.wait()
    interval = reader.pause_interval(record.token_times_s[0])
    assert interval is not None
    await asyncio.sleep(max(due_clock_s + interval[0] - clock(), 0.0))
    if s.received_all:
        return  # the stream is over: hiding now reaches nobody and changes no score
    await s.pause()
    began = clock() - due_clock_s
    record.pauses_s.append((began, began + reader.pause_s))  # the return, if the stream ends first
    await asyncio.sleep(reader.pause_s)
    await s.resume()
    record.pauses_s[-1] = (began, clock() - due_clock_s)
