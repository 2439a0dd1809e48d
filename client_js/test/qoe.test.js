// The shown-text QoE mirrors core/qoe.py (the checks its module docstring gives).
import { test } from "node:test";
import assert from "node:assert/strict";
import { QoETracker } from "../src/qoe.js";

const score = (times, spec) => {
  const t = new QoETracker(spec, 0);
  for (const x of times) t.add(x);
  return t.qoe();
};

test("perfect, empty, and the late-stream examples of core/qoe.py", () => {
  const spec = { ttft: 1, tds: 5 };
  assert.equal(score([], spec), 0);
  assert.equal(score([0.5, 0.6, 0.7], spec), 1);
  assert.ok(Math.abs(score([10.0, 10.2], spec) - 0.011) < 5e-4);
  assert.ok(Math.abs(score([10.0, 20.2], spec) - 0.267) < 5e-4);
});

test("a first-token delay d scores about 1/(1 + 2·d·tds/l)", () => {
  const l = 200, tds = 5, d = 2;
  const times = Array.from({ length: l }, (_, i) => 1 + d + i / tds);
  const want = 1 / (1 + (2 * d * tds) / l);
  assert.ok(Math.abs(score(times, { ttft: 1, tds }) - want) < 0.01);
});
