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
