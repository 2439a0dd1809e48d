// The stream controller: pacing, acks, pause on hidden, pace changes, cancel, errors — driven by a
// fake gateway on a fake WebSocket, a fake clock and fake animation frames.
import { test } from "node:test";
import assert from "node:assert/strict";
import { stream, gatewayUrls, splitTokens, StreamError } from "../src/stream.js";
import { FakeDocument, FakeTime, FakeWebSocket } from "./fakes.js";

const MESSAGES = [{ role: "user", content: "Tell me a story." }];
const words = (n, from = 0) => Array.from({ length: n }, (_, k) => `w${from + k} `);

function setup(extra = {}) {
  FakeWebSocket.instances = [];
  const time = new FakeTime();
  const doc = new FakeDocument();
  const shown = []; // [time, text, info]
  const events = { errors: [], done: [] };
  const ctl = stream({
    url: "http://127.0.0.1:8080",
    messages: MESSAGES,
    qoe: { ttft: 1, tds: 5 },
    onText: (text, info) => shown.push([time.now, text, info]),
    onError: (e) => events.errors.push(e),
    onDone: (r) => events.done.push(r),
    clock: time.clock,
    scheduler: time.scheduler,
    timers: time.timers,
    WebSocket: FakeWebSocket,
    document: doc,
    ...extra,
  });
  const ws = FakeWebSocket.instances[0];
  return { time, doc, shown, events, ctl, ws };
}

function started(ws, pacing = "client") {
  ws.accept();
  ws.reply({ type: "started", stream_id: "s1", model: "m", pacing, qoe: { ttft: 1, tds: 5 }, id: null });
}

let nextIndex = 0;
function deltas(ws, pieces, from) {
  nextIndex = from ?? nextIndex;
  for (const text of pieces) {
    ws.reply({ type: "delta", index: nextIndex, count: 1, text });
    nextIndex += 1;
  }
}

const DONE = (tokens) => ({
  type: "done", finish_reason: "stop", usage: { prompt_tokens: 5, completion_tokens: tokens, total_tokens: tokens + 5 },
  qoe: 0.93, ttft_s: 0.2, tokens,
});

test("connects to /v1/stream with the JSON subprotocol and starts with client pacing", () => {
  const { ws } = setup({ model: "smollm2", maxTokens: 50 });
  assert.equal(ws.url, "ws://127.0.0.1:8080/v1/stream");
  assert.deepEqual(ws.protocols, ["andes.v1.json"]);
  ws.accept();
  assert.deepEqual(ws.sent, [{
    type: "start", messages: MESSAGES, model: "smollm2", max_tokens: 50, qoe: { ttft: 1, tds: 5 }, pacing: "client",
  }]);
});

test("shows a burst at the reader's pace, never ahead of it", () => {
  const { time, ws, shown } = setup();
  started(ws);
  deltas(ws, words(30), 0);
  const t0 = time.now;
  for (let k = 0; k < 30; k++) {
    time.advance(0.1);
    const count = shown.reduce((n, [, , info]) => n + info.count, 0);
    const elapsed = time.now - t0;
    // The pacer releases up to one frame early; 5 tok/s from the first token on.
    assert.ok(count <= 1 + Math.floor((elapsed + 1 / 60) * 5 + 1e-9), `${count} shown after ${elapsed.toFixed(2)} s`);
    assert.ok(count >= Math.floor(elapsed * 5), `only ${count} shown after ${elapsed.toFixed(2)} s`);
  }
  assert.equal(shown.map(([, t]) => t).join(""), words(16).join(""));
});

test("acknowledges what was shown, coalesced, and the last one by timer", () => {
  // 50 tok/s: new text on almost every display frame, acks still at most every 0.15 s.
  const { time, ws, shown } = setup({ ackIntervalS: 0.15, qoe: { tds: 50 } });
  started(ws);
  deltas(ws, words(60), 0);
  time.advance(1.0);
  const acks = ws.ofType("ack").map((f) => f.consumed);
  assert.ok(acks.length >= 5 && acks.length <= Math.ceil(1.0 / 0.15) + 1, `acks: ${acks}`);
  assert.deepEqual([...acks].sort((a, b) => a - b), acks, "acks never go backwards");
  const shownCount = shown.reduce((n, [, , info]) => n + info.count, 0);
  time.advance(0.2); // no new text is due before the timer flushes the last ack
  assert.ok(ws.ofType("ack").at(-1).consumed >= shownCount);
  for (const a of ws.ofType("ack")) assert.ok(a.consumed <= 60);
});

test("finishes after the done frame once everything is shown, and reports both QoEs", async () => {
  const { time, ws, shown, events, ctl } = setup();
  started(ws);
  deltas(ws, words(6), 0);
  ws.reply(DONE(6));
  assert.equal(ws.closedWith, 1000, "nothing more to say to the gateway");
  time.advance(0.2);
  assert.equal(events.done.length, 0, "still rendering");
  time.advance(2);
  const result = await ctl.done;
  assert.equal(result.text, words(6).join(""));
  assert.equal(result.tokens, 6);
  assert.equal(result.qoe, 0.93);
  assert.equal(result.ttftS, 0.2);
  assert.equal(result.streamId, "s1");
  assert.equal(result.finishReason, "stop");
  assert.ok(result.shownQoE > 0.99, `shown QoE ${result.shownQoE}`); // first token well before ttft
  assert.deepEqual(events.done, [result]);
  assert.equal(shown.at(-1)[2].fullText, result.text);
  assert.equal(ctl.text(), result.text);
});

test("a hidden page pauses the stream and tells the gateway; visible resumes", () => {
  const { time, doc, ws, shown } = setup();
  started(ws);
  deltas(ws, words(20), 0);
  time.advance(0.5);
  const before = shown.length;
  doc.setVisibility("hidden");
  assert.deepEqual(ws.sent.at(-1), { type: "pause" });
  time.advance(3);
  assert.equal(shown.length, before, "nothing shown while hidden");
  assert.equal(ws.ofType("pause").length, 1);
  doc.setVisibility("visible");
  assert.deepEqual(ws.sent.at(-1), { type: "resume" });
  time.advance(1);
  const after = shown.length - before;
  assert.ok(after >= 4 && after <= 6, `${after} shown in the second after resuming`);
});

test("a page hidden at start pauses right after the start frame", () => {
  FakeWebSocket.instances = [];
  const time = new FakeTime();
  const doc = new FakeDocument();
  doc.visibilityState = "hidden";
  const shown = [];
  stream({
    url: "http://h:1", messages: MESSAGES, clock: time.clock, scheduler: time.scheduler, timers: time.timers,
    WebSocket: FakeWebSocket, document: doc, onText: (t) => shown.push(t),
  });
  const ws = FakeWebSocket.instances[0];
  ws.accept();
  assert.deepEqual(ws.sent.map((f) => f.type), ["start", "pause"]);
  assert.equal(ws.sent[0].qoe, undefined, "no pace asked for: the gateway's default applies");
  deltas(ws, ["a "], 0);
  time.advance(1);
  assert.deepEqual(shown, []);
});

test("user pause and hidden page combine: resuming one keeps the other paused", () => {
  const { doc, ws, ctl } = setup();
  started(ws);
  ctl.pause();
  doc.setVisibility("hidden");
  doc.setVisibility("visible");
  assert.deepEqual(ws.sent.slice(1).map((f) => f.type), ["pause"]);
  ctl.resume();
  assert.deepEqual(ws.sent.slice(1).map((f) => f.type), ["pause", "resume"]);
});

test("setPace changes the local pace and tells the gateway", () => {
  const { time, ws, shown, ctl } = setup();
  started(ws);
  deltas(ws, words(60), 0);
  time.advance(1);
  const at1 = shown.reduce((n, [, , i]) => n + i.count, 0);
  ctl.setPace(20);
  assert.deepEqual(ws.sent.at(-1), { type: "pace", tds: 20 });
  time.advance(1);
  const gained = shown.reduce((n, [, , i]) => n + i.count, 0) - at1;
  assert.ok(gained >= 18 && gained <= 22, `${gained} tokens in 1 s at 20 tok/s`);
  assert.throws(() => ctl.setPace(0), RangeError);
});

test("cancel sends cancel, closes, and rejects with code 'cancelled' (no onError)", async () => {
  const { ws, ctl, events } = setup();
  started(ws);
  deltas(ws, ["a "], 0);
  ctl.cancel();
  assert.deepEqual(ws.sent.at(-1), { type: "cancel" });
  assert.equal(ws.closedWith, 1000);
  await assert.rejects(ctl.done, (e) => e instanceof StreamError && e.code === "cancelled" && e.name === "AbortError");
  assert.equal(events.errors.length, 0);
});

test("an AbortSignal cancels; an already aborted one never connects", async () => {
  const ac = new AbortController();
  const { ws, ctl } = setup({ signal: ac.signal });
  started(ws);
  ac.abort();
  assert.equal(ws.ofType("cancel").length, 1);
  await assert.rejects(ctl.done, { code: "cancelled" });

  FakeWebSocket.instances = [];
  const ctl2 = stream({ messages: MESSAGES, signal: AbortSignal.abort(), WebSocket: FakeWebSocket, document: null });
  assert.equal(FakeWebSocket.instances.length, 0);
  await assert.rejects(ctl2.done, { code: "cancelled" });
});

test("a gateway error frame rejects with its code and message", async () => {
  const { ws, ctl, events, time } = setup();
  started(ws);
  deltas(ws, ["partial "], 0);
  time.advance(0.1);
  ws.reply({ type: "error", code: "upstream_error", message: "the engine went away", fatal: false });
  await assert.rejects(ctl.done, (e) => e.code === "upstream_error" && /engine went away/.test(e.message) && e.text === "partial ");
  assert.equal(events.errors.length, 1);
  assert.equal(ws.closedWith, 1000);
});

test("a refused start (invalid_request) rejects", async () => {
  const { ws, ctl } = setup();
  ws.accept();
  ws.reply({ type: "error", code: "invalid_request", message: "qoe.tds must be ...", fatal: false });
  await assert.rejects(ctl.done, { code: "invalid_request" });
});

test("a late non-fatal error after done does not fail the stream", async () => {
  const { ws, ctl, time } = setup();
  started(ws);
  deltas(ws, ["x"], 0);
  ws.reply(DONE(1));
  ws.reply({ type: "error", code: "out_of_order", message: "'pause' with no stream running", fatal: false });
  time.advance(0.5);
  assert.equal((await ctl.done).text, "x");
});

test("the connection closing early rejects with connection_closed and the close code", async () => {
  const { ws, ctl } = setup();
  started(ws);
  ws.drop(1011, "server error");
  await assert.rejects(ctl.done, (e) => e.code === "connection_closed" && e.closeCode === 1011 && /1011: server error/.test(e.message));
});

test("a bad frame or a gap in the token indexes rejects with bad_frame", async () => {
  let { ws, ctl } = setup();
  started(ws);
  ws.reply("{nope");
  await assert.rejects(ctl.done, { code: "bad_frame" });
  ({ ws, ctl } = setup());
  started(ws);
  deltas(ws, ["a"], 0);
  deltas(ws, ["c"], 2);
  await assert.rejects(ctl.done, (e) => e.code === "bad_frame" && /token 1, got token 2/.test(e.message));
});

test("server pacing: text is shown as it arrives and no acks are sent", () => {
  const { time, ws, shown } = setup({ pacing: "server" });
  ws.accept();
  assert.equal(ws.sent[0].pacing, "server");
  ws.reply({ type: "started", stream_id: "s", model: "m", pacing: "server", qoe: { ttft: 1, tds: 5 } });
  deltas(ws, words(10), 0);
  time.advance(0.05);
  assert.equal(shown.reduce((n, [, , i]) => n + i.count, 0), 10);
  time.advance(1);
  assert.equal(ws.ofType("ack").length, 0);
});

test("the API key travels as a query parameter", () => {
  const { ws } = setup({ apiKey: "k 1" });
  assert.equal(new URL(ws.url).searchParams.get("api_key"), "k 1");
});

test("splitTokens keeps the text and never splits a surrogate pair", () => {
  for (const [text, n] of [["hello world", 3], ["a\u{1F30D}b", 3], ["", 2], ["xy", 5]]) {
    const parts = splitTokens(text, n);
    assert.equal(parts.length, n);
    assert.equal(parts.join(""), text);
    for (const p of parts) assert.ok(!/^[\udc00-\udfff]|[\ud800-\udbff]$/.test(p), JSON.stringify(parts));
  }
});

test("gatewayUrls derives both endpoints from a base, ws or http URL", () => {
  assert.deepEqual(gatewayUrls("http://127.0.0.1:8080"), { ws: "ws://127.0.0.1:8080/v1/stream", http: "http://127.0.0.1:8080" });
  assert.deepEqual(gatewayUrls("wss://x.test/andes/v1/stream"), { ws: "wss://x.test/andes/v1/stream", http: "https://x.test/andes" });
  assert.deepEqual(gatewayUrls("https://x.test/v1/chat/completions"), { ws: "wss://x.test/v1/stream", http: "https://x.test" });
});

test("SSE transport: the same frames over fetch, acks and pauses on the side channel", async () => {
  const time = new FakeTime();
  const calls = [];
  let push;
  const body = new ReadableStream({ start(c) { push = c; } });
  const enc = new TextEncoder();
  const send = (obj) => push.enqueue(enc.encode(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`));
  let listed = 0;
  const fakeFetch = async (url, init) => {
    if (url.endsWith("/v1/models")) {
      listed += 1;
      return new Response(JSON.stringify({ object: "list", data: [{ id: "m1" }, { id: "m2" }] }));
    }
    calls.push({ url, body: JSON.parse(init.body) });
    if (url.endsWith("/v1/chat/completions")) {
      return new Response(body, { headers: { "Content-Type": "text/event-stream", "X-Andes-Stream-Id": "abc" } });
    }
    return new Response(null, { status: 204 });
  };
  const doc = new FakeDocument();
  const ctl = stream({
    url: "http://gw:1", transport: "sse", messages: MESSAGES, qoe: { tds: 5 }, fetch: fakeFetch,
    clock: time.clock, scheduler: time.scheduler, timers: time.timers, document: doc,
  });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(calls[0].url, "http://gw:1/v1/chat/completions");
  assert.equal(calls[0].body.pacing, "client");
  assert.equal(calls[0].body.stream, true);
  // No model given: the gateway's first, as the WebSocket's start would get it.
  assert.equal(listed, 1);
  assert.equal(calls[0].body.model, "m1");
  const chunk = (content, extra = {}) => ({ id: "chatcmpl-abc", model: "m", choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: null }], ...extra });
  send(chunk(""));
  for (const w of words(5)) send(chunk(w));
  await new Promise((r) => setTimeout(r, 5));
  time.advance(0.5);
  doc.setVisibility("hidden");
  doc.setVisibility("visible");
  send({ id: "x", model: "m", choices: [{ index: 0, delta: {}, finish_reason: "stop" }], andes: { stream_id: "abc", qoe: 0.8, ttft_s: 0.3, tokens: 5 } });
  send("[DONE]");
  push.close();
  await new Promise((r) => setTimeout(r, 5));
  time.advance(2);
  const result = await ctl.done;
  assert.equal(result.text, words(5).join(""));
  assert.equal(result.qoe, 0.8);
  assert.equal(result.streamId, "abc");
  const side = calls.slice(1);
  assert.ok(side.every((c) => c.url === "http://gw:1/v1/streams/abc/ack"));
  assert.ok(side.some((c) => c.body.consumed >= 1));
  assert.deepEqual(side.filter((c) => "paused" in c.body).map((c) => c.body.paused), [true, false]);
});

test("SSE transport: an HTTP error rejects with the OpenAI error's code and the status", async () => {
  const fakeFetch = async () => new Response(JSON.stringify({ error: { message: "no such model", type: "invalid_request_error", code: "model_not_found" } }), { status: 404 });
  const ctl = stream({ url: "http://gw:1", transport: "sse", messages: MESSAGES, fetch: fakeFetch, document: null });
  await assert.rejects(ctl.done, (e) => e.code === "model_not_found" && e.status === 404 && /no such model/.test(e.message));
});

test("extraBody goes out as start.extra_body (WebSocket) and as top-level fields (SSE)", async () => {
  const { ws } = setup({ extraBody: { ignore_eos: true, min_tokens: 4 } });
  ws.accept();
  assert.deepEqual(ws.sent[0].extra_body, { ignore_eos: true, min_tokens: 4 });
  const calls = [];
  const fakeFetch = async (url, init) => {
    calls.push(JSON.parse(init.body));
    return new Response(JSON.stringify({ error: { message: "stop here", code: "x" } }), { status: 400 });
  };
  const ctl = stream({
    url: "http://gw:1", transport: "sse", messages: MESSAGES, model: "m", extraBody: { ignore_eos: true },
    fetch: fakeFetch, document: null,
  });
  await assert.rejects(ctl.done);
  assert.equal(calls[0].ignore_eos, true);
  assert.equal("extra_body" in calls[0], false);
});

test("SSE transport: a 401 is unauthorized, whether listing models or streaming", async () => {
  const fakeFetch = async () => new Response(JSON.stringify({ error: { message: "Incorrect or missing API key", code: "invalid_api_key" } }), { status: 401 });
  const ctl = stream({ url: "http://gw:1", transport: "sse", messages: MESSAGES, fetch: fakeFetch, document: null });
  await assert.rejects(ctl.done, (e) => e.code === "unauthorized" && e.status === 401);
});

test("SSE transport: Stop tells the gateway before it closes the connection", async () => {
  const order = [];
  let push;
  const body = new ReadableStream({ start(c) { push = c; } });
  const fakeFetch = async (url, init) => {
    if (url.endsWith("/v1/chat/completions")) {
      init.signal.addEventListener("abort", () => order.push("abort"));
      return new Response(body, { headers: { "X-Andes-Stream-Id": "s9" } });
    }
    order.push(url.replace("http://gw:1", ""));
    return new Response(null, { status: 204 });
  };
  const ctl = stream({ url: "http://gw:1", transport: "sse", messages: MESSAGES, model: "m", fetch: fakeFetch, document: null });
  await new Promise((r) => setTimeout(r, 5));
  push.enqueue(new TextEncoder().encode('data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'));
  await new Promise((r) => setTimeout(r, 5));
  ctl.cancel();
  await assert.rejects(ctl.done, (e) => e.code === "cancelled");
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(order, ["/v1/streams/s9/cancel", "abort"]);
});

test("stats(): the live numbers of a stream", () => {
  const { ws, time, ctl } = setup({ qoe: { tds: 10 } });
  assert.equal(ctl.stats().qoe, null);
  ws.accept();
  ws.reply({ type: "started", stream_id: "s1", model: "m", pacing: "client", qoe: { ttft: 1, tds: 10 } });
  ws.reply({ type: "delta", index: 0, count: 6, text: words(6).join("") });
  time.advance(0.25);
  const st = ctl.stats();
  assert.equal(st.tds, 10);
  assert.equal(st.received, 6);
  assert.ok(st.shown >= 2 && st.shown < 6, `shown ${st.shown}`);
  assert.equal(st.ahead, 6 - st.shown);
  assert.equal(st.aheadS, st.ahead / 10);
  assert.ok(st.qoe > 0.9 && st.elapsedS > 0.2 && st.paused === false);
});
