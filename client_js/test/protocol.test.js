// The JS frame codec against the golden frames shared with gateway/protocol.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FrameError, decode, encode, parseClientFrame, parseServerFrame, startFrame, ackFrame, paceFrame,
} from "../src/protocol.js";
import { golden } from "./golden.js";

const frames = golden("frames.json");

for (const f of frames) {
  const parse = f.direction === "client->gateway" ? parseClientFrame : parseServerFrame;
  test(`golden frame: ${f.name} (${f.direction})`, () => {
    if (f.valid) {
      const frame = parse(f.frame);
      assert.equal(frame.type, f.frame.type);
      // What we accept survives our own encoding unchanged.
      assert.deepEqual(parse(decode(encode(frame))), frame);
      // Known fields are kept with their values.
      for (const [k, v] of Object.entries(f.frame)) {
        if (k in frame && v !== null) assert.deepEqual(frame[k], v, `field ${k}`);
      }
    } else {
      assert.throws(() => parse(f.frame), (e) => {
        assert.ok(e instanceof FrameError, `not a FrameError: ${e}`);
        assert.equal(e.code, f.error_code);
        assert.equal(e.fatal, f.error_code === "bad_frame");
        assert.ok(e.message.length > 0);
        return true;
      });
    }
  });
}

test("golden frames cover both directions, valid and invalid", () => {
  const kinds = new Set(frames.map((f) => `${f.direction}/${f.valid}`));
  assert.equal(kinds.size, 4);
});

test("decode rejects what is not JSON text, fatally", () => {
  for (const bad of ["{", "nope", new Uint8Array([0x81, 0xa4])]) {
    assert.throws(() => decode(bad), (e) => e instanceof FrameError && e.code === "bad_frame" && e.fatal);
  }
  assert.deepEqual(decode('{"type":"pause"}'), { type: "pause" });
});

test("invalid_request errors quote the bad value", () => {
  assert.throws(() => parseClientFrame({ type: "pace", tds: -3 }), /got -3/);
  assert.throws(() => startFrame({ messages: [{ role: "user", content: "x" }], pacing: "fast" }), /got 'fast'/);
});

test("builders produce valid frames", () => {
  const s = startFrame({ messages: [{ role: "user", content: "hi" }], qoe: { ttft: 1, tds: 5 }, pacing: "client" });
  assert.deepEqual(JSON.parse(encode(s)), {
    type: "start", messages: [{ role: "user", content: "hi" }], qoe: { ttft: 1, tds: 5 }, pacing: "client",
  });
  assert.deepEqual(parseClientFrame(ackFrame(3)), { type: "ack", consumed: 3 });
  assert.deepEqual(parseClientFrame(paceFrame(7.5)), { type: "pace", tds: 7.5 });
});
