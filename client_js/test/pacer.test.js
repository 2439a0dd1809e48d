// The JS pacer against the golden vectors generated from gateway/pacer.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Pacer, PacerConfig, PacerOverflow } from "../src/pacer.js";
import { golden, dec } from "./golden.js";

const { vectors, bad_configs: badConfigs } = golden("pacer_vectors.json");

/** Equal, floats to 1e-9. */
function same(a, b) {
  a = dec(a);
  b = dec(b);
  if (typeof a === "number" && typeof b === "number") return a === b || Math.abs(a - b) <= 1e-9;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (a && b && typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a).sort();
    const kb = Object.keys(b).sort();
    return same(ka, kb) && ka.every((k) => same(a[k], b[k]));
  }
  return a === b;
}

function state(p, t) {
  // The order matters (consumed() advances the reading model): the vectors' order.
  return {
    consumed: p.consumed(t),
    buffered: p.buffered(t),
    slack_s: p.slackS(t),
    next_due_s: p.nextDueS(),
    fed: p.fed,
    sent: p.sent,
    done: p.done,
    paused: p.paused,
    tds: p.tdsTokS,
  };
}

function runOp(p, op) {
  const got = {};
  try {
    switch (op.op) {
      case "feed": p.feed(op.pieces, op.t); break;
      case "due": got.chunks = p.due(op.t); break;
      case "close": p.close(); break;
      case "pause": p.pause(op.t); break;
      case "resume": p.resume(op.t); break;
      case "set_pace": p.setPace(op.tds, op.t); break;
      case "ack": p.ack(op.consumed); break;
      default: throw new Error(`unknown op ${op.op}`);
    }
    got.error = null;
  } catch (e) {
    if (e instanceof PacerOverflow) got.error = "overflow";
    else if (e instanceof RangeError) got.error = "invalid";
    else throw e;
  }
  got.state = state(p, op.t);
  return got;
}

for (const v of vectors) {
  test(`golden vector ${v.name}`, () => {
    const p = new Pacer(new PacerConfig(v.config));
    v.ops.forEach((op, n) => {
      const got = runOp(p, op);
      const want = Object.fromEntries(Object.keys(got).map((k) => [k, op[k]]));
      assert.ok(same(got, want), `op #${n} ${op.op} at t=${op.t}:\n got ${JSON.stringify(got)}\nwant ${JSON.stringify(want)}`);
    });
  });
}

test("bad configs throw RangeError with the Python message", () => {
  assert.ok(badConfigs.length >= 5);
  for (const bad of badConfigs) {
    const fields = Object.fromEntries(Object.entries(bad.config).map(([k, v]) => [k, dec(v)]));
    assert.throws(() => new PacerConfig(fields), (e) => e instanceof RangeError && e.message === bad.message);
  }
});

test("the config is frozen and defaults match the Python dataclass", () => {
  const c = new PacerConfig();
  assert.deepEqual({ ...c }, {
    tds_tok_s: 4.8, mode: "server", frame_s: 0.05, word_boundary: true,
    max_word_lookahead: 8, end: "pace", max_buffered_tokens: 65536,
  });
  assert.throws(() => { c.tds_tok_s = 1; }, TypeError);
});

test("a long stream does not grow the queue without bound", () => {
  const p = new Pacer({ tds_tok_s: 1000, frame_s: 0, word_boundary: false });
  let t = 0;
  for (let k = 0; k < 5000; k++) {
    p.feed(["x"], t);
    for (const c of p.due(t)) assert.equal(c.index, k);
    t += 0.01;
  }
  assert.equal(p.sent, 5000);
  assert.ok(p._pending.length < 2100, `queue holds ${p._pending.length} slots`);
});
