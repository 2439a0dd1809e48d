// The Andes WebSocket protocol (docs/protocol.md): frame validation and the JSON encoding.
//
// The JavaScript definition of the wire format; gateway/protocol.py is the Python one. Both are
// tested against tests/golden/frames.json. Sans-I/O: strings in, plain frame objects out.
//
// Only the JSON subprotocol (`andes.v1.json`) is implemented here. A browser sends a few frames
// per second and receives at most one delta per display frame, so msgpack would save nothing that
// matters and would cost a dependency; the gateway speaks both, and the Python client can use
// msgpack.

export const JSON_SUBPROTOCOL = "andes.v1.json";
export const MSGPACK_SUBPROTOCOL = "andes.v1.msgpack";

/** The protocol's error codes (docs/protocol.md). */
export const ERROR_CODES = Object.freeze([
  "bad_frame", // undecodable frame; fatal, close 1007
  "invalid_request", // a field is wrong; the connection stays usable
  "out_of_order", // a frame the current state does not allow
  "unauthorized", // bad or missing API key; close 4401
  "rate_limited", // too many concurrent streams; retry later
  "upstream_error", // the engine failed; the stream ends
  "slow_reader", // the client did not take the text in time; the stream ends
  "shutting_down", // the gateway is stopping; close 1001
  "internal_error", // a gateway bug; the stream ends
]);

export const MAX_TTFT_S = 600;
export const MAX_TDS_TOK_S = 1000;
export const MAX_ID_CHARS = 256;
export const MAX_STOP_SEQUENCES = 4;
export const MAX_EXTRA_BODY_KEYS = 32;
// What `start.extra_body` may not set: what the gateway controls or validates, and what `start`
// has its own field for (gateway/protocol.py RESERVED_EXTRA_BODY_KEYS).
export const RESERVED_EXTRA_BODY_KEYS = Object.freeze([
  "messages", "prompt", "model", "stream", "stream_options", "max_tokens",
  "max_completion_tokens", "n", "tools", "functions", "qoe", "pacing",
  "temperature", "top_p", "stop", "seed",
]);
const ROLES = ["system", "developer", "user", "assistant", "tool"];
const PACINGS = ["server", "client", "off"];

/**
 * @typedef {{role: string, content?: string | object[] | null}} ChatMessage
 * @typedef {{ttft?: number, tds?: number}} QoEFields
 * @typedef {"server" | "client" | "off"} PacingName
 *
 * @typedef {{type: "start", messages: ChatMessage[], model?: string, max_tokens?: number,
 *   temperature?: number, top_p?: number, stop?: string | string[], seed?: number,
 *   qoe?: QoEFields, pacing?: PacingName, id?: string,
 *   extra_body?: Record<string, unknown>}} StartFrame
 * @typedef {{type: "ack", consumed: number}} AckFrame
 * @typedef {{type: "pace", tds: number}} PaceFrame
 * @typedef {{type: "pause"} | {type: "resume"} | {type: "cancel"}} ControlFrame
 * @typedef {StartFrame | AckFrame | PaceFrame | ControlFrame} ClientFrame
 *
 * @typedef {{type: "started", stream_id: string, model: string, pacing: PacingName,
 *   qoe: QoEFields, id?: string | null}} StartedFrame
 * @typedef {{type: "delta", index: number, count: number, text: string}} DeltaFrame
 * @typedef {{prompt_tokens: number, completion_tokens: number, total_tokens: number}} Usage
 * @typedef {{type: "done", finish_reason: string | null, usage: Usage, qoe: number,
 *   ttft_s: number | null, tokens: number}} DoneFrame
 * @typedef {{type: "error", code: string, message: string, fatal: boolean}} ErrorFrame
 * @typedef {StartedFrame | DeltaFrame | DoneFrame | ErrorFrame} ServerFrame
 */

/** A frame that cannot be accepted; `code` is one of ERROR_CODES. */
export class FrameError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {boolean} [fatal] default: true for bad_frame only
   */
  constructor(code, message, fatal) {
    super(message);
    this.name = "FrameError";
    this.code = code;
    this.fatal = fatal ?? code === "bad_frame";
  }
}

/** @param {string} message */
const invalid = (message) => new FrameError("invalid_request", message);
/** @param {unknown} v */
const isObj = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
/** @param {unknown} v @returns {v is number} */
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
/** @param {unknown} v @returns {v is number} */
const isInt = (v) => Number.isInteger(v);

/** A short rendering of a bad value for error messages. @param {unknown} v */
function short(v) {
  let text;
  try {
    // Strings quoted as gateway/protocol.py's show() quotes them; everything else in JSON's words.
    text = typeof v === "string" ? `'${v}'` : v === undefined ? "null" : JSON.stringify(v);
  } catch {
    text = String(v);
  }
  return text.length <= 80 ? text : `${text.slice(0, 77)}...`;
}

/** @param {Record<string, unknown>} o @param {string} key @param {number} lo */
function optInt(o, key, lo) {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isInt(v) || v < lo) throw invalid(`${key} must be an integer >= ${lo}, got ${short(v)}`);
  return v;
}

/** @param {Record<string, unknown>} o @param {string} key @param {number} lo @param {number} hi */
function optNum(o, key, lo, hi) {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isNum(v) || v < lo || v > hi) {
    throw invalid(`${key} must be a number within [${lo}, ${hi}], got ${short(v)}`);
  }
  return v;
}

/** Validate a `{ttft, tds}` map (both optional). @param {unknown} v @returns {QoEFields} */
export function parseQoE(v, where = "qoe") {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw invalid(`${where} must be an object {ttft, tds}, got ${short(v)}`);
  const { ttft, tds } = /** @type {Record<string, unknown>} */ (v);
  /** @type {QoEFields} */
  const out = {};
  if (ttft !== undefined && ttft !== null) {
    if (!(isNum(ttft) && ttft >= 0 && ttft <= MAX_TTFT_S)) {
      throw invalid(`${where}.ttft must be a number of seconds within [0, ${MAX_TTFT_S}], got ${short(ttft)}`);
    }
    out.ttft = ttft;
  }
  if (tds !== undefined && tds !== null) {
    if (!(isNum(tds) && tds > 0 && tds <= MAX_TDS_TOK_S)) {
      throw invalid(`${where}.tds must be a number of tokens/s within (0, ${MAX_TDS_TOK_S}], got ${short(tds)}`);
    }
    out.tds = tds;
  }
  return out;
}

/** @param {unknown} v @returns {ChatMessage[]} */
function parseMessages(v) {
  if (v === undefined || v === null) throw invalid("messages is required: a non-empty list of {role, content}");
  if (!Array.isArray(v) || v.length === 0) {
    throw invalid(`messages must be a non-empty list, got ${short(v)}`);
  }
  v.forEach((m, i) => {
    if (!isObj(m)) throw invalid(`messages[${i}] must be an object, got ${short(m)}`);
    if (!ROLES.includes(m.role)) {
      throw invalid(`messages[${i}].role must be one of ${ROLES.join(", ")}, got ${short(m.role)}`);
    }
    const c = m.content;
    if (c !== undefined && c !== null && typeof c !== "string" && !Array.isArray(c)) {
      throw invalid(`messages[${i}].content must be a string or a list of parts, got ${short(c)}`);
    }
  });
  return v;
}

/**
 * Validate `start.extra_body`: more engine request fields, forwarded as they are (e.g. vLLM's
 * ignore_eos), never one the gateway controls.
 * @param {unknown} v
 * @returns {Record<string, unknown> | undefined}
 */
function parseExtraBody(v) {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw invalid(`extra_body must be an object of engine request fields, got ${short(v)}`);
  const keys = Object.keys(/** @type {object} */ (v));
  if (keys.length > MAX_EXTRA_BODY_KEYS) {
    throw invalid(`extra_body may hold at most ${MAX_EXTRA_BODY_KEYS} fields, got ${keys.length}`);
  }
  for (const key of keys) {
    if (!key) throw invalid(`extra_body keys must be non-empty strings, got ${short(key)}`);
    if (RESERVED_EXTRA_BODY_KEYS.includes(key)) {
      throw invalid(
        `extra_body may not set '${key}': the gateway controls it (start has its own fields for ` +
          "model, max_tokens, temperature, top_p, stop, seed, qoe and pacing)",
      );
    }
  }
  return { .../** @type {object} */ (v) };
}

/** @param {unknown} obj @returns {string} */
function frameType(obj) {
  if (!isObj(obj)) throw new FrameError("bad_frame", `a frame must be a map, got ${short(obj)}`);
  const t = /** @type {Record<string, unknown>} */ (obj).type;
  if (typeof t !== "string") {
    throw new FrameError("bad_frame", `a frame needs a string 'type', got ${short(t)}`);
  }
  return t;
}

/** Drop undefined fields (they would not survive JSON anyway). @template T @param {T} o @returns {T} */
function compact(o) {
  for (const k of Object.keys(/** @type {object} */ (o))) {
    if (/** @type {any} */ (o)[k] === undefined) delete /** @type {any} */ (o)[k];
  }
  return o;
}

/**
 * A decoded map sent by a client → a frame. Throws FrameError. Unknown fields are dropped
 * (forward compatibility); wrong types and values are not.
 * @param {unknown} obj
 * @returns {ClientFrame}
 */
export function parseClientFrame(obj) {
  const t = frameType(obj);
  const o = /** @type {Record<string, any>} */ (obj);
  switch (t) {
    case "start": {
      if (o.model != null && !(typeof o.model === "string" && o.model)) {
        throw invalid(`model must be a non-empty string, got ${short(o.model)}`);
      }
      if (o.id != null && !(typeof o.id === "string" && o.id.length <= MAX_ID_CHARS)) {
        throw invalid(`id must be a string of at most ${MAX_ID_CHARS} characters, got ${short(o.id)}`);
      }
      if (o.pacing != null && !PACINGS.includes(o.pacing)) {
        throw invalid(`pacing must be one of ${PACINGS.join(", ")}, got ${short(o.pacing)}`);
      }
      if (o.seed != null && !isInt(o.seed)) throw invalid(`seed must be an integer, got ${short(o.seed)}`);
      const stop = o.stop;
      if (
        stop != null &&
        typeof stop !== "string" &&
        !(Array.isArray(stop) && stop.length <= MAX_STOP_SEQUENCES && stop.every((s) => typeof s === "string"))
      ) {
        throw invalid(`stop must be a string or a list of at most ${MAX_STOP_SEQUENCES} strings, got ${short(stop)}`);
      }
      const qoe = parseQoE(o.qoe);
      return compact({
        type: "start",
        messages: parseMessages(o.messages),
        model: o.model ?? undefined,
        max_tokens: optInt(o, "max_tokens", 1),
        temperature: optNum(o, "temperature", 0, 2),
        top_p: optNum(o, "top_p", 0, 1),
        stop: stop ?? undefined,
        seed: o.seed ?? undefined,
        qoe: Object.keys(qoe).length ? qoe : undefined,
        pacing: o.pacing ?? undefined,
        id: o.id ?? undefined,
        extra_body: parseExtraBody(o.extra_body),
      });
    }
    case "ack":
      if (!isInt(o.consumed) || o.consumed < 0) {
        throw invalid(`ack.consumed must be an integer >= 0, got ${short(o.consumed)}`);
      }
      return { type: "ack", consumed: o.consumed };
    case "pace":
      if (!(isNum(o.tds) && o.tds > 0 && o.tds <= MAX_TDS_TOK_S)) {
        throw invalid(`pace.tds must be a number of tokens/s within (0, ${MAX_TDS_TOK_S}], got ${short(o.tds)}`);
      }
      return { type: "pace", tds: o.tds };
    case "pause":
    case "resume":
    case "cancel":
      return { type: t };
    default:
      throw new FrameError("bad_frame", `unknown frame type ${short(t)}`);
  }
}

/**
 * A decoded map sent by the gateway → a frame. Throws FrameError("bad_frame").
 * @param {unknown} obj
 * @returns {ServerFrame}
 */
export function parseServerFrame(obj) {
  const t = frameType(obj);
  const o = /** @type {Record<string, any>} */ (obj);
  /** @param {string} why */
  const bad = (why) => new FrameError("bad_frame", `malformed '${t}' frame: ${why}`);
  switch (t) {
    case "started":
      if (o.stream_id == null || o.model == null || !PACINGS.includes(o.pacing) || !isObj(o.qoe)) {
        throw bad("needs stream_id, model, pacing and qoe");
      }
      return {
        type: "started",
        stream_id: String(o.stream_id),
        model: String(o.model),
        pacing: o.pacing,
        qoe: compact({ ttft: o.qoe.ttft ?? undefined, tds: o.qoe.tds ?? undefined }),
        id: o.id ?? null,
      };
    case "delta":
      if (!(isInt(o.index) && isInt(o.count) && typeof o.text === "string")) {
        throw bad("index and count must be integers, text a string");
      }
      return { type: "delta", index: o.index, count: o.count, text: o.text };
    case "done": {
      const u = isObj(o.usage) ? o.usage : {};
      if (!isNum(o.qoe) || !isInt(o.tokens) || (o.ttft_s != null && !isNum(o.ttft_s))) {
        throw bad("needs a numeric qoe and ttft_s (or null) and an integer tokens");
      }
      return {
        type: "done",
        finish_reason: o.finish_reason ?? null,
        usage: {
          prompt_tokens: u.prompt_tokens ?? 0,
          completion_tokens: u.completion_tokens ?? 0,
          total_tokens: u.total_tokens ?? 0,
        },
        qoe: o.qoe,
        ttft_s: o.ttft_s ?? null,
        tokens: o.tokens,
      };
    }
    case "error":
      if (o.code == null || o.message == null) throw bad("needs code and message");
      return { type: "error", code: String(o.code), message: String(o.message), fatal: Boolean(o.fatal) };
    default:
      throw new FrameError("bad_frame", `unknown frame type ${short(t)}`);
  }
}

/**
 * A frame as a text payload (andes.v1.json).
 * @param {ClientFrame | ServerFrame | Record<string, unknown>} frame
 * @returns {string}
 */
export function encode(frame) {
  return JSON.stringify(frame);
}

/**
 * A text payload → the decoded map (not yet validated). Throws FrameError("bad_frame").
 * @param {string | ArrayBuffer | Uint8Array} data
 * @returns {unknown}
 */
export function decode(data) {
  if (typeof data !== "string") {
    throw new FrameError("bad_frame", "andes.v1.json takes text frames, got a binary frame");
  }
  try {
    return JSON.parse(data);
  } catch (e) {
    throw new FrameError("bad_frame", `not JSON: ${/** @type {Error} */ (e).message}`);
  }
}

// -- builders for the client's frames ----------------------------------------------------------

/**
 * A validated `start` frame.
 * @param {Omit<StartFrame, "type">} fields
 * @returns {StartFrame}
 */
export function startFrame(fields) {
  return /** @type {StartFrame} */ (parseClientFrame({ type: "start", ...fields }));
}

/** @param {number} consumed @returns {AckFrame} */
export const ackFrame = (consumed) => ({ type: "ack", consumed });
/** @param {number} tds @returns {PaceFrame} */
export const paceFrame = (tds) => ({ type: "pace", tds });
