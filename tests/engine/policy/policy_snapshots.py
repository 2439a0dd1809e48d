"""Hand-made snapshots for policy tests (vLLM's scheduler tests build requests the same way)."""

from __future__ import annotations

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from engine.policy import Capacity, ReqState, RequestView

BLOCK = 16


def make_request(
    req_id: str,
    arrival_s: float,
    state: ReqState = ReqState.WAITING,
    *,
    prompt: int = 32,
    delivered_at: list[float] | None = None,
    spec: QoESpec | None = None,
    slack: SlackRecord | None = None,
) -> RequestView:
    """A request whose tokens were delivered at the absolute times ``delivered_at``."""
    spec = spec or QoESpec(ttft_s=1.0, tds_tok_s=5.0)
    tracker = QoETracker(spec, arrival_s=arrival_s)
    for t in delivered_at or []:
        tracker.add(t)
    out = tracker.num_tokens
    return RequestView(
        req_id=req_id,
        arrival_s=arrival_s,
        spec=spec,
        state=state,
        prompt_tokens=prompt,
        output_tokens=out,
        kv_blocks=-(-(prompt + out) // BLOCK),
        tracker=tracker,
        slack=slack,
    )


def capacity(kv_blocks: int, max_batch: int = 64, latency_s: float = 0.05) -> Capacity:
    return Capacity(
        kv_blocks=kv_blocks,
        block_size=BLOCK,
        max_batch=max_batch,
        token_latency_s=lambda b: latency_s,
    )
