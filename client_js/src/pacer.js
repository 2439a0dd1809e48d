// The pacer: releases a stream's text at its reader's pace. Sans-I/O.
//
// A line-for-line mirror of gateway/pacer.py (read its module docstring for the model); both are
// checked against tests/golden/pacer_vectors.json. It never reads a clock: every method whose
// effect depends on the time takes `nowS` (seconds on any monotonic clock). In the browser client it runs in "server" mode — the
// pacing happens here — fed by a gateway that sends text as it arrives ("client" pacing).

/** @typedef {"server" | "client" | "off"} PacingMode */

/**
 * @typedef {object} PacerConfigInit
 * @property {number} [tds_tok_s]           the reader's pace, tokens per second (default 4.8)
 * @property {PacingMode} [mode]            who paces (default "server": this pacer)
 * @property {number} [frame_s]             at most one release per frame (default 0.05 s)
 * @property {boolean} [word_boundary]      release the rest of a received word early (default true)
 * @property {number} [max_word_lookahead]  most tokens pulled forward to finish a word (default 8)
 * @property {"pace" | "flush"} [end]       after close(): keep the pace, or release all (default "pace")
 * @property {number} [max_buffered_tokens] most tokens waiting unreleased (default 65536)
 */

/**
 * @typedef {object} Chunk  text to show now: `count` tokens starting at token `index`
 * @property {string} text
 * @property {number} index  index (0-based) of the first token in the chunk
 * @property {number} count  tokens in the chunk
 * @property {number} due_s  when its first token was due to the reader
 */

const MODES = ["server", "client", "off"];
const ENDS = ["pace", "flush"];

/** More unreleased tokens than `max_buffered_tokens`. */
export class PacerOverflow extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "PacerOverflow";
  }
}

/** Python's repr() of a config value, so that error messages match gateway/pacer.py's. */
function repr(/** @type {unknown} */ v) {
  if (typeof v === "string") return `'${v}'`;
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "nan";
    if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  }
  if (typeof v === "boolean") return v ? "True" : "False";
  return String(v);
}

/** Python's float repr for a tuple of choices: ('a', 'b'). */
function tuple(/** @type {string[]} */ xs) {
  return `(${xs.map(repr).join(", ")})`;
}

/**
 * How a stream is paced. Validated once; errors (RangeError) quote the bad value.
 * Field names are the Python dataclass's, so one JSON config serves both.
 */
export class PacerConfig {
  /** @param {PacerConfigInit} [init] */
  constructor(init = {}) {
    const {
      tds_tok_s = 4.8,
      mode = "server",
      frame_s = 0.05,
      word_boundary = true,
      max_word_lookahead = 8,
      end = "pace",
      max_buffered_tokens = 65536,
    } = init;
    if (!(typeof tds_tok_s === "number" && Number.isFinite(tds_tok_s) && tds_tok_s > 0)) {
      throw new RangeError(`tds_tok_s must be a finite number > 0, got ${repr(tds_tok_s)}`);
    }
    if (!MODES.includes(mode)) {
      throw new RangeError(`mode must be one of ${tuple(MODES)}, got ${repr(mode)}`);
    }
    if (!(typeof frame_s === "number" && Number.isFinite(frame_s) && frame_s >= 0 && frame_s <= 1)) {
      throw new RangeError(`frame_s must be within [0, 1] seconds, got ${repr(frame_s)}`);
    }
    if (!(max_word_lookahead >= 0)) {
      throw new RangeError(`max_word_lookahead must be >= 0, got ${repr(max_word_lookahead)}`);
    }
    if (!ENDS.includes(end)) {
      throw new RangeError(`end must be one of ${tuple(ENDS)}, got ${repr(end)}`);
    }
    if (!(max_buffered_tokens >= 1)) {
      throw new RangeError(`max_buffered_tokens must be >= 1, got ${repr(max_buffered_tokens)}`);
    }
    /** @readonly */ this.tds_tok_s = tds_tok_s;
    /** @readonly @type {PacingMode} */ this.mode = mode;
    /** @readonly */ this.frame_s = frame_s;
    /** @readonly */ this.word_boundary = word_boundary;
    /** @readonly */ this.max_word_lookahead = max_word_lookahead;
    /** @readonly @type {"pace" | "flush"} */ this.end = end;
    /** @readonly */ this.max_buffered_tokens = max_buffered_tokens;
    Object.freeze(this);
  }
}

// Python's str.isspace() for one character (JavaScript's \s differs: it has U+FEFF and lacks
// U+001C..U+001F and U+0085). The vectors pin the difference.
const PY_SPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/;

/** @param {string} ch */
function isSpace(ch) {
  return PY_SPACE.test(ch);
}

/** Paces one stream. */
export class Pacer {
  /** @param {PacerConfig | PacerConfigInit} [config] */
  constructor(config) {
    /** @readonly */
    this.config = config instanceof PacerConfig ? config : new PacerConfig(config);
    this._tds = this.config.tds_tok_s;
    /** @type {string[]} fed, not yet sent (a queue: _pending[_head..]) */
    this._pending = [];
    this._head = 0;
    this._fed = 0; // tokens fed
    this._sent = 0; // tokens released to the transport
    this._read = 0; // tokens the reading model says are read (server mode: == sent)
    this._nextS = -Infinity; // when the reader needs the next unread token
    this._lastEmitS = -Infinity;
    /** @type {number | null} the client's latest acknowledgement, if any */
    this._acked = null;
    this._closed = false;
    this._paused = false;
  }

  get _npending() {
    return this._pending.length - this._head;
  }

  // -- inputs --------------------------------------------------------------------------------

  /**
   * Add tokens (text pieces, one per token) that arrived at `nowS`.
   * @param {Iterable<string>} pieces
   * @param {number} nowS
   */
  feed(pieces, nowS) {
    if (this._closed) throw new RangeError("feed() after close()");
    const list = Array.from(pieces);
    if (list.length === 0) return;
    if (this._npending + list.length > this.config.max_buffered_tokens) {
      throw new PacerOverflow(
        `${this._npending + list.length} unreleased tokens exceed ` +
          `max_buffered_tokens=${this.config.max_buffered_tokens}`,
      );
    }
    this._catchUpModel(nowS);
    if (this._read >= this._fed && this._nextS < nowS) {
      // The reader had caught up and was waiting: the new token is needed right now.
      this._nextS = nowS;
    }
    for (const p of list) this._pending.push(p);
    this._fed += list.length;
  }

  /** The stream finished; no more feed(). */
  close() {
    this._closed = true;
  }

  /**
   * Change the reader's pace from `nowS` on.
   * @param {number} tds tokens per second
   * @param {number} nowS
   */
  setPace(tds, nowS) {
    if (!(typeof tds === "number" && Number.isFinite(tds) && tds > 0)) {
      throw new RangeError(`tds must be a finite number > 0, got ${repr(tds)}`);
    }
    this._catchUpModel(nowS);
    // Time left until the next token is due scales with the pace change.
    if (this._nextS > nowS) this._nextS = nowS + ((this._nextS - nowS) * this._tds) / tds;
    this._tds = tds;
  }

  /** The reader stopped reading: release nothing until resume(). @param {number} nowS */
  pause(nowS) {
    this._catchUpModel(nowS);
    this._paused = true;
  }

  /** The reader is back: continue from where they stopped. @param {number} nowS */
  resume(nowS) {
    if (this._paused) {
      this._paused = false;
      this._nextS = Math.max(this._nextS, nowS);
    }
  }

  /**
   * The client has shown `consumed` tokens (client pacing). Never moves backwards.
   * @param {number} consumed
   */
  ack(consumed) {
    if (consumed < 0 || consumed > this._sent) {
      throw new RangeError(`ack of ${consumed} tokens, but ${this._sent} were sent`);
    }
    this._acked = Math.max(this._acked ?? 0, consumed);
  }

  // -- outputs -------------------------------------------------------------------------------

  /**
   * Text to release at `nowS`: at most one coalesced chunk.
   * @param {number} nowS
   * @returns {Chunk[]}
   */
  due(nowS) {
    const cfg = this.config;
    if (cfg.mode !== "server") {
      this._catchUpModel(nowS);
      return this._release(this._npending, nowS, nowS);
    }
    if (this._paused || this._npending === 0) return [];
    if (this._closed && cfg.end === "flush") {
      return this._release(this._npending, nowS, Math.max(this._nextS, nowS));
    }
    if (nowS < this._lastEmitS + cfg.frame_s && nowS + 1e-9 < this._nextS) return [];
    const horizon = nowS + cfg.frame_s;
    // The epsilon keeps due(nextDueS()) from coming back empty through float rounding.
    if (horizon + 1e-9 < this._nextS) return [];
    let count = Math.min(this._npending, Math.trunc((horizon - this._nextS) * this._tds + 1e-9) + 1);
    count = this._extendToWord(count);
    const dueS = this._nextS;
    this._nextS += count / this._tds;
    this._read = this._sent + count;
    return this._release(count, nowS, dueS);
  }

  /**
   * When due() next has something to release; null until more is fed or resumed.
   * @returns {number | null}
   */
  nextDueS() {
    const cfg = this.config;
    if (this._npending === 0 || (this._paused && cfg.mode === "server")) return null;
    if (cfg.mode !== "server" || (this._closed && cfg.end === "flush")) return -Infinity;
    return Math.max(this._nextS - cfg.frame_s, this._lastEmitS + cfg.frame_s);
  }

  // -- state ---------------------------------------------------------------------------------

  /** The reader's current pace, tokens/s. */
  get tdsTokS() {
    return this._tds;
  }

  get paused() {
    return this._paused;
  }

  get closed() {
    return this._closed;
  }

  /** Closed and everything fed has been released. */
  get done() {
    return this._closed && this._npending === 0;
  }

  /** Tokens received. */
  get fed() {
    return this._fed;
  }

  /** Tokens released. */
  get sent() {
    return this._sent;
  }

  /**
   * Tokens the reader has read: the latest ack if any, else the reading model's estimate.
   * @param {number} nowS
   */
  consumed(nowS) {
    if (this._acked !== null) return this._acked;
    if (this.config.mode === "server") return this._sent;
    this._catchUpModel(nowS);
    return Math.trunc(this._read);
  }

  /** Tokens received but not yet read. @param {number} nowS */
  buffered(nowS) {
    return this._fed - this.consumed(nowS);
  }

  /** Seconds the reader can go on from what is buffered; Infinity while paused. @param {number} nowS */
  slackS(nowS) {
    if (this._paused) return Infinity;
    return this.buffered(nowS) / this._tds;
  }

  // -- internals -----------------------------------------------------------------------------

  /** @param {number} nowS */
  _catchUpModel(nowS) {
    if (this.config.mode === "server" || this._paused) return;
    const unread = this._fed - this._read;
    if (unread <= 0 || nowS < this._nextS) return;
    const reads = Math.min(unread, Math.floor((nowS - this._nextS) * this._tds) + 1);
    this._read += reads;
    this._nextS += reads / this._tds;
  }

  /** @param {number} count */
  _extendToWord(count) {
    const cfg = this.config;
    if (!cfg.word_boundary) return count;
    const limit = Math.min(this._npending, count + cfg.max_word_lookahead);
    while (count < limit) {
      const prev = this._pending[this._head + count - 1];
      const next = this._pending[this._head + count];
      if (!prev || isSpace(prev[prev.length - 1]) || !next || isSpace(next[0])) break;
      count += 1;
    }
    return count;
  }

  /**
   * @param {number} count
   * @param {number} nowS
   * @param {number} dueS
   * @returns {Chunk[]}
   */
  _release(count, nowS, dueS) {
    if (count <= 0) return [];
    const parts = this._pending.slice(this._head, this._head + count);
    this._head += count;
    if (this._head > 1024 && this._head * 2 > this._pending.length) {
      this._pending = this._pending.slice(this._head); // compact the queue now and then
      this._head = 0;
    }
    const chunk = { text: parts.join(""), index: this._sent, count, due_s: dueS };
    this._sent += count;
    this._lastEmitS = nowS;
    return [chunk];
  }
}
