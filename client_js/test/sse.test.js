// The transport-free SSE parser.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createParser, readEvents } from "../src/sse.js";

function parseAll(chunks) {
  const events = [];
  const p = createParser({ onEvent: (e) => events.push(e) });
  for (const c of chunks) p.feed(c);
  return events;
}

const STREAM =
  '\ufeff: ping\n\ndata: {"a":1}\n\nevent: note\nid: 7\ndata: line one\ndata:line two\n\n' +
  "data\n\nfield-without-colon\n\ndata: [DONE]\r\n\r\n";
const WANT = [
  { data: '{"a":1}', event: "message", id: null },
  { data: "line one\nline two", event: "note", id: "7" },
  { data: "", event: "message", id: "7" },
  { data: "[DONE]", event: "message", id: "7" },
];

test("parses comments, multi-line data, event names, ids, CRLF", () => {
  assert.deepEqual(parseAll([STREAM]), WANT);
});

test("the same events however the stream is split", () => {
  for (let size = 1; size <= 7; size++) {
    const chunks = [];
    for (let i = 0; i < STREAM.length; i += size) chunks.push(STREAM.slice(i, i + size));
    assert.deepEqual(parseAll(chunks), WANT, `split every ${size}`);
  }
});

test("lone CR ends a line; a CR at the end of a chunk pairs with the next LF", () => {
  assert.deepEqual(parseAll(["data: a\r\rdata: b\r", "\n\r", "\n"]).map((e) => e.data), ["a", "b"]);
});

test("an event without a blank line is not dispatched; events without data are dropped", () => {
  assert.deepEqual(parseAll(["event: x\n\n", "data: pending"]), []);
});

test("over-long lines are refused", () => {
  const p = createParser({ onEvent: () => {}, maxLineChars: 10 });
  assert.throws(() => p.feed("data: 0123456789"), RangeError);
});

test("readEvents decodes UTF-8 split across reads", async () => {
  const bytes = new TextEncoder().encode("data: h\u00e9llo \u4e16\u754c\n\n");
  const body = new ReadableStream({
    start(c) {
      for (const b of bytes) c.enqueue(new Uint8Array([b]));
      c.close();
    },
  });
  const events = [];
  await readEvents(new Response(body), (e) => events.push(e));
  assert.deepEqual(events.map((e) => e.data), ["h\u00e9llo \u4e16\u754c"]);
});
