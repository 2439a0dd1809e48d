"""The open-loop load generator: send each planned request when it is due, whatever came before.

Requests go out at their scheduled times (an open loop, as users arrive), each on its own asyncio
task, so a slow engine builds a queue instead of slowing the arrivals down — the regime the paper
studies. ``max_concurrency`` bounds the requests in flight (and the connection pool); a request that
waits for a slot is still timed from its due time, so an undersized limit shows up as lateness, not
as a lighter load. One process, one event loop: light enough to share two cores with the engine.

Transports: ``endpoint.transport`` ``http`` streams each request as SSE
(:mod:`bench.client`); ``ws`` streams it through the Andes gateway's WebSocket, read by its
reader (:mod:`bench.ws_client`: local pacing at the reader's pace, acks, pause/resume). With
``readers`` (:mod:`bench.readers`) every record is scored on its reader's clock; over HTTP
the reader cannot tell the server anything, so there it only changes the score.

Stopping: setting the ``stop`` event (the CLI wires Ctrl-C to it) stops sending, cancels what is in
flight and returns what was measured, with ``interrupted`` set and the unfinished requests marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from tqdm import tqdm

from bench.client import EndpointConfig, fetch_model, stream_request
from bench.plan import PlannedRequest
from bench.readers import Reader
from bench.result import BenchRun, RequestRecord
from bench.ws_client import check_gateway, ws_stream_request

__all__ = ["RunConfig", "run_load"]


@dataclass(frozen=True, slots=True)
class RunConfig:
    """How the load generator behaves (not what it sends)."""

    max_concurrency: int = 1024  # requests in flight at once (also the connection-pool size)
    progress: bool = True  # a tqdm progress bar on stderr
    start_delay_s: float = 0.05  # the first due time is this far after the run starts
    label: str = ""  # the progress bar's description

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency!r}")
        if not (math.isfinite(self.start_delay_s) and self.start_delay_s >= 0):
            raise ValueError(
                f"start_delay_s must be a finite number >= 0, got {self.start_delay_s!r}"
            )


async def run_load(
    plan: Sequence[PlannedRequest],
    endpoint: EndpointConfig,
    config: RunConfig | None = None,
    stop: asyncio.Event | None = None,
    readers: Mapping[str, Reader] | None = None,
) -> BenchRun:
    """Replay ``plan`` against ``endpoint``; return every request's record.

    ``readers`` maps request ids to their readers (missing: reads as declared, never hides).
    Raises :class:`~bench.errors.EndpointError` only if no model can be found (or, for the
    ``ws`` transport, no gateway WebSocket answers) before the run starts; failures of single
    requests are recorded, not raised.
    """
    config = config or RunConfig()
    stop = stop or asyncio.Event()
    records = [
        RequestRecord(
            req_id=r.req_id, due_s=r.at_s, spec=r.spec, prompt_tokens_est=r.prompt_tokens,
            max_tokens=r.max_tokens,
        )
        for r in plan
    ]  # fmt: skip
    connector = aiohttp.TCPConnector(limit=config.max_concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        model = await fetch_model(session, endpoint)
        if endpoint.transport == "ws":
            await check_gateway(endpoint)
        started_wall = time.time()
        clock = time.perf_counter
        t0 = clock() + config.start_delay_s
        slots = asyncio.Semaphore(config.max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        bar = tqdm(total=len(plan), desc=config.label or "requests", unit="req",
                   disable=not config.progress, dynamic_ncols=True, leave=False)  # fmt: skip
        scores: list[float] = []

        def finished(record: RequestRecord) -> None:
            scores.append(record.qoe)
            bar.update(1)
            errors = sum(r.error is not None for r in records)
            bar.set_postfix(qoe=f"{sum(scores) / len(scores):.2f}", err=errors, refresh=False)

        async def one(req: PlannedRequest, record: RequestRecord) -> None:
            try:
                reader = readers.get(req.req_id) if readers else None
                async with slots:
                    if endpoint.transport == "ws":
                        await ws_stream_request(endpoint, model, req, reader, record, t0 + req.at_s)
                    else:
                        await stream_request(session, endpoint, model, req, record, t0 + req.at_s)
                        if reader is not None:  # scored as this reader, who could not say so
                            record.read_tds_tok_s = reader.read_tds_tok_s
                            record.pauses_s = reader.pauses_during(record.token_times_s)
            except asyncio.CancelledError:
                record.error = record.error or (
                    "cancelled" if not math.isnan(record.sent_s) else "not sent (stopped)"
                )
                raise
            finished(record)

        async def dispatch() -> None:
            for req, record in zip(plan, records, strict=True):
                delay = t0 + req.at_s - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.add(asyncio.create_task(one(req, record)))
            if tasks:
                await asyncio.wait(tasks)

        main = asyncio.create_task(dispatch())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted = not main.done()
            pending = [main, stopper, *tasks]
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
            bar.close()
        for record in records:
            if math.isnan(record.sent_s) and record.error is None:
                record.error = "not sent (stopped)"
    meta = {
        "endpoint": endpoint.ws_url if endpoint.transport == "ws" else endpoint.url,
        "transport": endpoint.transport,
        "api": endpoint.api,
        "model": model,
        "started_unix_s": round(started_wall, 3),
        "wall_s": round(clock() - t0, 3),
        "max_concurrency": config.max_concurrency,
        "t0_clock_s": t0,  # time.perf_counter() of the run start (due times count from it)
        "num_planned": len(plan),
    }
    return BenchRun(records=records, meta=meta, interrupted=interrupted)
