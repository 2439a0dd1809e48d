// Server-sent events: a transport-free parser and the fetch adapter for the HTTP fallback.
//
// The parser follows the WHATWG event-stream rules that matter here (the same as
// gateway/sse.py): lines end in \n, \r\n or \r (possibly split across reads), ":" starts a comment
// (keep-alives), several data: lines join with \n, one space after the colon is dropped, a blank
// line dispatches the event, an event with no data is dropped, a leading BOM is ignored.

/**
 * @typedef {object} SSEEvent
 * @property {string} data
 * @property {string} event  "message" unless the stream named it
 * @property {string | null} id
 */

/**
 * @typedef {object} SSEParser
 * @property {(chunk: string) => void} feed   text as it arrives (decode bytes with a streaming TextDecoder)
 * @property {() => void} reset
 */

/**
 * A transport-free event-stream parser: `createParser({onEvent}).feed(text)`.
 * @param {{onEvent: (event: SSEEvent) => void, maxLineChars?: number}} options
 * @returns {SSEParser}
 */
export function createParser({ onEvent, maxLineChars = 1 << 24 }) {
  let buf = "";
  /** @type {string[]} */
  let data = [];
  let event = "";
  /** @type {string | null} */
  let id = null;
  let first = true;
  let crPending = false; // the last chunk ended in "\r": a leading "\n" belongs to it

  /** @param {string} line */
  function onLine(line) {
    if (first) {
      first = false;
      if (line.startsWith("\ufeff")) line = line.slice(1);
    }
    if (line === "") {
      if (data.length) onEvent({ data: data.join("\n"), event: event || "message", id });
      data = [];
      event = "";
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value);
    else if (name === "event") event = value;
    else if (name === "id" && !value.includes("\0")) id = value;
  }

  return {
    feed(chunk) {
      if (crPending && chunk.startsWith("\n")) chunk = chunk.slice(1);
      crPending = false;
      buf += chunk;
      let start = 0;
      for (;;) {
        const m = /\r\n|\r|\n/g;
        m.lastIndex = start;
        const hit = m.exec(buf);
        if (!hit) break;
        if (hit[0] === "\r" && hit.index + 1 === buf.length) crPending = true;
        onLine(buf.slice(start, hit.index));
        start = hit.index + hit[0].length;
      }
      buf = buf.slice(start);
      if (buf.length > maxLineChars) throw new RangeError(`an SSE line longer than ${maxLineChars} characters`);
    },
    reset() {
      buf = "";
      data = [];
      event = "";
      id = null;
      first = true;
      crPending = false;
    },
  };
}

/**
 * Read a fetch() Response body as events: the thin adapter around createParser.
 * @param {Response} response
 * @param {(event: SSEEvent) => void} onEvent
 * @returns {Promise<void>} resolves at the end of the body
 */
export async function readEvents(response, onEvent) {
  if (!response.body) throw new TypeError("the response has no body to read events from");
  const parser = createParser({ onEvent });
  const decoder = new TextDecoder();
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
    parser.feed(decoder.decode());
  } finally {
    reader.releaseLock();
  }
}

/**
 * The SSE transport, for networks that block WebSockets: the OpenAI-compatible
 * `POST /v1/chat/completions` with `pacing: "client"`, read through fetch (without a model it
 * asks `GET /v1/models` for the gateway's first, as the WebSocket's default), and the side
 * channel `POST /v1/streams/{id}/ack {consumed, tds?, paused?}` for acknowledgements, pace
 * changes and pauses, `POST /v1/streams/{id}/cancel` for a Stop. It presents the same frames as the WebSocket (started, delta, done, error), so
 * stream.js does not care which one runs.
 *
 * One limitation: an SSE chunk does not say how many tokens it carries; each is counted as one.
 * Acknowledgements can therefore only undercount (the gateway refuses an ack beyond what it
 * sent), and the `done` frame's `tokens` is the gateway's exact count.
 *
 * @param {{baseUrl: string, apiKey?: string, fetch: typeof fetch | undefined,
 *   start: import("./protocol.js").StartFrame}} options
 * @param {import("./stream.js").TransportHandlers} on
 * @returns {import("./stream.js").Transport}
 */
export function openSSE({ baseUrl, apiKey, fetch: fetchImpl, start }, on) {
  if (typeof fetchImpl !== "function") throw new TypeError("no fetch implementation available");
  const abort = new AbortController();
  /** @type {Record<string, string>} */
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  /** @type {string | null} */
  let streamId = null;
  let closed = false;

  /** @param {Record<string, unknown>} body */
  function post(body) {
    if (!streamId || closed) return;
    fetchImpl(`${baseUrl}/v1/streams/${encodeURIComponent(streamId)}/ack`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    }).catch(() => {}); // best effort: the stream may have just ended
  }

  /** The error a refused request stands for: the gateway's own code, "unauthorized" for a 401
   * (as the WebSocket calls it). @param {Response} resp */
  async function httpError(resp) {
    let err = {};
    try {
      err = (await resp.json()).error ?? {};
    } catch {
      // not JSON: keep the status
    }
    const e = /** @type {{message?: string, code?: string}} */ (err);
    const error = new Error(e.message ?? `HTTP ${resp.status}`);
    Object.assign(error, { code: resp.status === 401 ? "unauthorized" : (e.code ?? "http_error"), status: resp.status });
    return error;
  }

  /** The gateway's first model, as the WebSocket's `start` without a model gets it. */
  async function defaultModel() {
    const resp = await fetchImpl(`${baseUrl}/v1/models`, { headers, signal: abort.signal });
    if (!resp.ok) throw await httpError(resp);
    /** @type {any} */
    const list = await resp.json();
    const id = list?.data?.[0]?.id;
    if (typeof id !== "string" || !id) throw Object.assign(new Error("the gateway serves no model"), { code: "upstream_error" });
    return id;
  }

  async function run() {
    // extra_body's fields are top-level request fields over HTTP (as the gateway's WebSocket
    // forwards them); none of them collides with the start frame's own (protocol.js refuses those).
    const { type: _type, extra_body: extra, ...fields } = start;
    // The OpenAI API needs a model; the WebSocket fills in the gateway's default, so do we.
    const model = fields.model ?? (await defaultModel());
    const body = { ...(extra ?? {}), ...fields, model, stream: true, stream_options: { include_usage: true } };
    const resp = await fetchImpl(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: abort.signal,
    });
    if (!resp.ok) throw await httpError(resp);
    streamId = resp.headers.get("X-Andes-Stream-Id");
    let index = 0;
    let finish = null;
    let usage = null;
    /** @type {any} */
    let andes = null;
    let sawDone = false;
    let startedSent = false;
    await readEvents(resp, (ev) => {
      if (closed) return;
      if (ev.data === "[DONE]") {
        sawDone = true;
        return;
      }
      /** @type {any} */
      const obj = JSON.parse(ev.data);
      if (obj.error) {
        const error = new Error(obj.error.message ?? "the gateway reported an error");
        Object.assign(error, { code: obj.error.code ?? "upstream_error" });
        throw error;
      }
      if (!startedSent) {
        startedSent = true;
        on.frame({ type: "started", stream_id: streamId ?? String(obj.id ?? ""), model: String(obj.model ?? ""), pacing: start.pacing ?? "client", qoe: start.qoe ?? {}, id: null });
      }
      if (obj.usage) usage = obj.usage;
      if (obj.andes) andes = obj.andes;
      const choice = obj.choices?.[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      const text = choice.delta?.content;
      if (typeof text === "string" && text !== "") {
        on.frame({ type: "delta", index, count: 1, text });
        index += 1;
      }
    });
    if (closed) return;
    if (!sawDone || !andes) {
      on.closed(1006, "the event stream ended before [DONE]");
      return;
    }
    on.frame({
      type: "done",
      finish_reason: finish,
      usage: usage ?? { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
      qoe: andes.qoe,
      ttft_s: andes.ttft_s ?? null,
      tokens: andes.tokens ?? index,
    });
  }

  /** @type {Promise<unknown> | null} */
  let cancelling = null;

  /** The reader's Stop: say so before the connection closes, so the gateway counts a cancel,
   * not a client gone away (docs/protocol.md). Bounded: a gateway that does not answer within
   * a second is disconnected anyway. */
  function cancelRemote() {
    if (!streamId || closed || cancelling) return;
    const sent = fetchImpl(`${baseUrl}/v1/streams/${encodeURIComponent(streamId)}/cancel`, { method: "POST", headers }).catch(() => {});
    cancelling = Promise.race([sent, new Promise((res) => setTimeout(res, 1000))]);
  }

  queueMicrotask(() => on.open());
  return {
    send(frame) {
      switch (frame.type) {
        case "start":
          run().catch((e) => {
            if (closed) return;
            closed = true;
            abort.abort();
            const err = /** @type {any} */ (e);
            on.fail(Object.assign(new Error(err.message), { code: err.code ?? "connection_failed", status: err.status }));
          });
          break;
        case "ack": post({ consumed: frame.consumed }); break;
        case "pace": post({ tds: frame.tds }); break;
        case "pause": post({ paused: true }); break;
        case "resume": post({ paused: false }); break;
        case "cancel": cancelRemote(); break; // close() follows: the gateway ends the stream
      }
    },
    close() {
      closed = true;
      if (cancelling) cancelling.then(() => abort.abort());
      else abort.abort();
    },
  };
}
