"""Generate ``tests/golden/pacer_vectors.json`` from ``gateway/pacer.py``.

The vectors pin the pacer's behaviour so that its mirror in ``client_js/src/pacer.js`` (and any
future change to the Python pacer) can be checked operation by operation. Each vector is a config
plus a timeline of operations at given times; after every operation it records what the pacer
returned and a snapshot of its state, in a fixed order of calls (some queries advance the reading
model, so the order is part of the vector).

Run from the repository root after changing the pacer, and review the diff::

    .venv/bin/python tests/golden/make_pacer_vectors.py

Infinite floats are written as the strings ``"inf"`` and ``"-inf"`` (JSON has no infinity).
"""

# ruff: noqa: RUF005  -- timelines read best as concatenated segments
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.pacer import Pacer, PacerConfig, PacerOverflow  # noqa: E402

OUT = Path(__file__).with_name("pacer_vectors.json")
MAX_OPS = 600  # a runaway scenario is a bug in the generator, not a vector

Op = dict[str, Any]


def enc(x: float | None) -> float | str | None:
    """JSON has no infinity: write it as a string."""
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"


def snapshot(p: Pacer, now: float) -> dict[str, Any]:
    """The pacer's observable state at ``now``. The call order is fixed (consumed() may advance the
    reading model in client/off modes) and mirrored by the replaying tests."""
    return {
        "consumed": p.consumed(now),
        "buffered": p.buffered(now),
        "slack_s": enc(p.slack_s(now)),
        "next_due_s": enc(p.next_due_s()),
        "fed": p.fed,
        "sent": p.sent,
        "done": p.done,
        "paused": p.paused,
        "tds": p.tds_tok_s,
    }


def apply(p: Pacer, op: Op) -> Op:
    """Run one operation; return it with its expected outcome."""
    t = op["t"]
    kind = op["op"]
    out: Op = dict(op)
    try:
        if kind == "feed":
            p.feed(op["pieces"], t)
        elif kind == "due":
            out["chunks"] = [asdict(c) for c in p.due(t)]
        elif kind == "close":
            p.close()
        elif kind == "pause":
            p.pause(t)
        elif kind == "resume":
            p.resume(t)
        elif kind == "set_pace":
            p.set_pace(op["tds"], t)
        elif kind == "ack":
            p.ack(op["consumed"])
        else:
            raise AssertionError(f"unknown op {kind!r}")
        out["error"] = None
    except PacerOverflow:
        out["error"] = "overflow"
    except ValueError:
        out["error"] = "invalid"
    out["state"] = snapshot(p, t)
    return out


def drive(config: PacerConfig, events: list[Op], *, poll_s: float | None = None,
          until_s: float | None = None) -> list[Op]:
    """Replay ``events`` (sorted by time) like a transport would: between events, call ``due``
    whenever ``next_due_s`` says something is due (and, with ``poll_s``, also on a fixed tick, to
    pin down the calls that must release nothing)."""
    p = Pacer(config)
    ops: list[Op] = []
    events = sorted(events, key=lambda e: e["t"])  # stable: same-time events keep their order
    i = 0
    now = 0.0
    tick = 0.0 if poll_s else math.inf
    while len(ops) < MAX_OPS:
        nd = p.next_due_s()
        due_at = math.inf if nd is None else max(nd, now)
        ev_at = events[i]["t"] if i < len(events) else math.inf
        nxt = min(due_at, ev_at, tick)
        if not math.isfinite(nxt) or (until_s is not None and nxt > until_s):
            break
        if i >= len(events) and nd is None and p.done:
            break
        now = nxt
        if ev_at == nxt:
            ops.append(apply(p, events[i]))
            i += 1
        else:
            ops.append(apply(p, {"t": now, "op": "due"}))
            if tick == nxt:
                tick = round(tick + poll_s, 9)  # type: ignore[operator]
            if i >= len(events) and p.next_due_s() is None and (p.done or poll_s is None):
                break
    else:
        raise AssertionError("scenario did not settle")
    return ops


def feeds(times: list[float], pieces: list[str], per: int = 1) -> list[Op]:
    """Feed ``per`` pieces at each time, in order."""
    out = []
    for k, t in enumerate(times):
        chunk = pieces[k * per:(k + 1) * per]
        if chunk:
            out.append({"t": round(t, 9), "op": "feed", "pieces": chunk})
    return out


def words(n: int) -> list[str]:
    return [f"w{k} " for k in range(n)]


def steady(n: int, rate: float, start: float = 0.1) -> list[float]:
    return [start + k / rate for k in range(n)]


def scenarios() -> list[tuple[str, str, PacerConfig, list[Op], dict[str, Any]]]:
    sub = ["Hel", "lo", ",", " wor", "ld", "!", " Pa", "cing", " is", " rea", "d", "ing", "."]
    out: list[tuple[str, str, PacerConfig, list[Op], dict[str, Any]]] = []

    def add(name: str, doc: str, cfg: PacerConfig, events: list[Op], **kw: Any) -> None:
        out.append((name, doc, cfg, events, kw))

    add("server_engine_slower_than_pace", "engine 2 tok/s, reader 5 tok/s: every token goes out on "
        "arrival", PacerConfig(tds_tok_s=5), feeds(steady(10, 2), words(10))
        + [{"t": 5.0, "op": "close"}], poll_s=0.1)
    add("server_engine_faster_than_pace", "engine 20 tok/s, reader 5 tok/s: released at 5 tok/s",
        PacerConfig(tds_tok_s=5), feeds(steady(30, 20), words(30)) + [{"t": 1.6, "op": "close"}])
    add("server_burst_coalesced", "40 tokens at once, fast reader: at most one chunk per frame",
        PacerConfig(tds_tok_s=50, frame_s=0.05), [{"t": 0.2, "op": "feed", "pieces": words(40)},
                                                  {"t": 0.2, "op": "close"}], poll_s=0.01)
    add("server_stall_then_burst", "steady, a 2 s engine stall, then a burst",
        PacerConfig(tds_tok_s=6), feeds(steady(8, 10), words(8))
        + feeds([3.0], [f"x{k} " for k in range(12)], per=12) + [{"t": 3.0, "op": "close"}])
    add("server_word_boundary", "sub-word tokens: a frame never ends inside a received word",
        PacerConfig(tds_tok_s=4, max_word_lookahead=8),
        [{"t": 0.0, "op": "feed", "pieces": sub}, {"t": 0.0, "op": "close"}])
    add("server_word_boundary_off", "the same tokens, split wherever the pace says",
        PacerConfig(tds_tok_s=4, word_boundary=False),
        [{"t": 0.0, "op": "feed", "pieces": sub}, {"t": 0.0, "op": "close"}])
    add("server_word_lookahead_capped", "a long word is pulled forward by at most 2 tokens",
        PacerConfig(tds_tok_s=3, max_word_lookahead=2),
        [{"t": 0.0, "op": "feed", "pieces": ["an", "ti", "dis", "est", "ab", "lish", " x"]},
         {"t": 0.0, "op": "close"}])
    add("server_unicode_spaces", "which characters count as spaces (Python str.isspace)",
        PacerConfig(tds_tok_s=2),
        [{"t": 0.0, "op": "feed", "pieces": ["a", "b\u00a0", "c", "d\u3000", "e", "f\x1f", "g",
                                             "h\ufeff", "i", "j\u2009", "k", "", "l", "m\x85",
                                             "n", "o"]},
         {"t": 0.0, "op": "close"}])
    add("server_pause_resume", "paused: nothing goes out; resumed: the pace restarts from then",
        PacerConfig(tds_tok_s=5), feeds(steady(20, 20), words(20))
        + [{"t": 1.0, "op": "pause"}, {"t": 3.0, "op": "resume"}, {"t": 3.0, "op": "close"}],
        poll_s=0.25)
    add("server_pause_before_first", "paused before anything arrived",
        PacerConfig(tds_tok_s=5), [{"t": 0.0, "op": "pause"}] + feeds(steady(5, 50), words(5))
        + [{"t": 1.0, "op": "resume"}, {"t": 1.0, "op": "resume"}, {"t": 1.5, "op": "close"}])
    add("server_set_pace", "pace doubled, then quartered, mid-stream",
        PacerConfig(tds_tok_s=4), [{"t": 0.0, "op": "feed", "pieces": words(24)},
                                   {"t": 1.03, "op": "set_pace", "tds": 8},
                                   {"t": 2.0, "op": "set_pace", "tds": 2},
                                   {"t": 2.0, "op": "set_pace", "tds": 0},
                                   {"t": 2.5, "op": "close"}])
    add("server_close_end_pace", "after close the buffer keeps its pace",
        PacerConfig(tds_tok_s=5, end="pace"), [{"t": 0.0, "op": "feed", "pieces": words(12)},
                                              {"t": 0.5, "op": "close"}])
    add("server_close_end_flush", "after close the buffer goes out at once",
        PacerConfig(tds_tok_s=5, end="flush"), [{"t": 0.0, "op": "feed", "pieces": words(12)},
                                               {"t": 0.5, "op": "close"}])
    add("server_frame_zero", "frame_s=0: one token per release, exactly on time",
        PacerConfig(tds_tok_s=10, frame_s=0, word_boundary=False),
        feeds([0.0], words(6), per=6) + [{"t": 0.0, "op": "close"}])
    add("server_overflow", "more unreleased tokens than allowed; the pacer is unchanged",
        PacerConfig(tds_tok_s=2, max_buffered_tokens=5),
        [{"t": 0.0, "op": "feed", "pieces": words(4)}, {"t": 0.1, "op": "feed",
                                                        "pieces": words(2)},
         {"t": 0.2, "op": "feed", "pieces": words(1)}, {"t": 0.3, "op": "close"},
         {"t": 0.3, "op": "feed", "pieces": words(1)}])
    add("client_acks", "client pacing: sent on arrival; consumed from the model until acks",
        PacerConfig(tds_tok_s=4, mode="client"), feeds(steady(12, 12), words(12))
        + [{"t": 0.7, "op": "ack", "consumed": 2}, {"t": 1.2, "op": "ack", "consumed": 1},
           {"t": 1.3, "op": "ack", "consumed": 40}, {"t": 1.5, "op": "pause"},
           {"t": 2.0, "op": "resume"}, {"t": 2.2, "op": "ack", "consumed": 9},
           {"t": 2.4, "op": "close"}, {"t": 3.0, "op": "ack", "consumed": 12}], poll_s=0.2)
    add("client_model_only", "client pacing without acks: the reading model estimates consumption",
        PacerConfig(tds_tok_s=3, mode="client"), feeds(steady(10, 5), words(10))
        + [{"t": 1.0, "op": "set_pace", "tds": 6}, {"t": 1.4, "op": "pause"},
           {"t": 2.4, "op": "resume"}, {"t": 2.5, "op": "close"}], poll_s=0.3, until_s=4.5)
    add("off_passthrough", "off: everything on arrival, slack still estimated",
        PacerConfig(tds_tok_s=5, mode="off"), feeds(steady(6, 2), words(6))
        + [{"t": 3.5, "op": "close"}], poll_s=0.5, until_s=4.0)
    return out


BAD_CONFIGS: list[dict[str, Any]] = [
    {"tds_tok_s": 0}, {"tds_tok_s": -1}, {"tds_tok_s": "inf"}, {"mode": "fast"},
    {"frame_s": -0.01}, {"frame_s": 2}, {"max_word_lookahead": -1}, {"end": "drop"},
    {"max_buffered_tokens": 0},
]


def dec(x: Any) -> Any:
    return float(x) if x in ("inf", "-inf") else x


def dump(doc: dict[str, Any]) -> str:
    """JSON with one operation per line, so that a change to the pacer reads as a small diff."""
    one = lambda x: json.dumps(x, ensure_ascii=True)  # noqa: E731
    vecs = []
    for v in doc["vectors"]:
        head = ", ".join(f"{one(k)}: {one(v[k])}" for k in ("name", "doc", "config"))
        ops = ",\n".join("   " + one(op) for op in v["ops"])
        vecs.append(f"  {{{head}, \"ops\": [\n{ops}\n  ]}}")
    bad = ",\n".join("  " + one(b) for b in doc["bad_configs"])
    return (f"{{\"about\": {one(doc['about'])},\n\"vectors\": [\n" + ",\n".join(vecs)
            + f"\n],\n\"bad_configs\": [\n{bad}\n]}}\n")


def main() -> int:
    vectors = []
    for name, doc, cfg, events, kw in scenarios():
        vectors.append({"name": name, "doc": doc, "config": asdict(cfg),
                        "ops": drive(cfg, events, **kw)})
    bad = []
    for fields in BAD_CONFIGS:
        try:
            PacerConfig(**{k: dec(v) for k, v in fields.items()})
        except ValueError as exc:
            bad.append({"config": fields, "field": next(iter(fields)), "message": str(exc)})
        else:
            raise AssertionError(f"config {fields} was accepted")
    doc = {
        "about": "Golden vectors for gateway/pacer.py and client_js/src/pacer.js. Generated by "
                 "tests/golden/make_pacer_vectors.py; do not edit by hand. After each op, "
                 "'state' is read in this order: consumed, buffered, slack_s, next_due_s, fed, "
                 "sent, done, paused, tds. 'inf'/'-inf' stand for infinite floats; 'error' is "
                 "null, 'invalid' (ValueError) or 'overflow' (PacerOverflow).",
        "vectors": vectors,
        "bad_configs": bad,
    }
    OUT.write_text(dump(doc))
    print(f"wrote {OUT.relative_to(ROOT)}: {len(vectors)} vectors, "
          f"{sum(len(v['ops']) for v in vectors)} ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
