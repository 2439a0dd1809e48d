// stream(): one chat completion from an Andes gateway, shown at the reader's pace.
//
// The gateway is asked for `pacing: "client"`: it sends text as the engine produces it, and this
// module paces it locally with the same pacer the gateway uses (pacer.js), renders on animation
// frames, acknowledges what it has shown (coalesced), and tells the gateway when the reader
// stops (page hidden) and comes back. The gateway reports the acknowledged position to the
// engine's scheduler as the stream's slack — the closed loop of docs/architecture.md.
//
// The core (Session) is transport-free; a transport is {send(frame), close()} plus callbacks.
// Two thin adapters: the WebSocket (below) and SSE over fetch (sse.js). Clock, frame scheduler,
// timers, WebSocket, fetch and document are injectable, so the logic runs under node's test
// runner with fakes.

import { Pacer } from "./pacer.js";
import { QoETracker } from "./qoe.js";
import {
  FrameError, JSON_SUBPROTOCOL, ackFrame, decode, encode, paceFrame, parseServerFrame, startFrame,
} from "./protocol.js";
import { openSSE } from "./sse.js";

/**
 * @typedef {import("./protocol.js").ChatMessage} ChatMessage
 * @typedef {import("./protocol.js").ServerFrame} ServerFrame
 * @typedef {import("./protocol.js").ClientFrame} ClientFrame
 * @typedef {import("./protocol.js").StartedFrame} StartedFrame
 * @typedef {import("./protocol.js").DoneFrame} DoneFrame
 *
 * @typedef {object} Transport
 * @property {(frame: ClientFrame) => void} send  a control frame (start, ack, pace, pause, resume, cancel)
 * @property {(code?: number) => void} close
 *
 * @typedef {object} TransportHandlers
 * @property {() => void} open                         ready: send `start`
 * @property {(frame: ServerFrame) => void} frame       a validated frame from the gateway
 * @property {(error: Error) => void} fail              the transport broke (protocol or network)
 * @property {(code: number, reason: string) => void} closed
 *
 * @typedef {object} TextInfo
 * @property {number} index    first token of this piece
 * @property {number} count    tokens in this piece
 * @property {number} shown    tokens shown so far, this piece included
 * @property {string} fullText everything shown so far
 *
 * @typedef {object} StreamResult
 * @property {string} text              everything shown
 * @property {number} tokens            tokens shown
 * @property {string | null} finishReason
 * @property {import("./protocol.js").Usage} usage
 * @property {number} qoe               QoE measured by the gateway (its `done` frame), 0–1
 * @property {number | null} ttftS      time to first token measured by the gateway, seconds
 * @property {number} shownQoE          QoE of the text as shown here (render times), 0–1
 * @property {number | null} shownTtftS time from stream() to the first text shown, seconds
 * @property {string | null} streamId
 * @property {string | null} model
 *
 * @typedef {object} StreamOptions
 * @property {string} [url]  the gateway: its base URL (http[s]://host:port) or its WebSocket URL
 *   (ws[s]://host:port/v1/stream); default: the page's origin
 * @property {ChatMessage[]} messages
 * @property {string} [model]
 * @property {{ttft?: number, tds?: number}} [qoe]  expected time to first token (s), reading pace (tokens/s)
 * @property {"websocket" | "sse"} [transport]     default "websocket"
 * @property {"client" | "server"} [pacing]        who paces; default "client" (this module)
 * @property {number} [maxTokens]
 * @property {number} [temperature]
 * @property {Record<string, unknown>} [extraBody]  more engine request fields (start.extra_body),
 *   e.g. {ignore_eos: true} for vLLM
 * @property {string} [apiKey]
 * @property {(text: string, info: TextInfo) => void} [onText]
 * @property {(frame: StartedFrame) => void} [onStarted]
 * @property {(result: StreamResult) => void} [onDone]
 * @property {(error: StreamError) => void} [onError]   not called for cancel()
 * @property {AbortSignal} [signal]                  aborting it cancels the stream
 * @property {boolean} [pauseWhenHidden]             default true
 * @property {number} [ackIntervalS]                 coalesce acknowledgements; default 0.15 s
 * @property {number} [frameS]                       at most one render per frame_s; default 1/60 s
 * @property {boolean} [wordBoundary]                default true
 * @property {() => number} [clock]                  seconds; default performance.now()/1000
 * @property {{request: (cb: () => void) => unknown, cancel: (handle: any) => void}} [scheduler]
 *   default requestAnimationFrame
 * @property {{set: (cb: () => void, ms: number) => unknown, clear: (handle: any) => void}} [timers]
 * @property {any} [WebSocket]                       default globalThis.WebSocket
 * @property {typeof fetch} [fetch]                  default globalThis.fetch
 * @property {any} [document]                        default globalThis.document
 *
 * @typedef {object} StreamController
 * @property {(tds: number) => void} setPace  change the reading pace (tokens/s) from now on
 * @property {() => void} pause
 * @property {() => void} resume
 * @property {() => void} cancel              stop now; `done` rejects with code "cancelled"
 * @property {Promise<StreamResult>} done
 * @property {() => string} text              what has been shown so far
 * @property {() => string | null} streamId
 * @property {() => StreamStats} stats         live numbers, for a status line while streaming
 *
 * @typedef {object} StreamStats
 * @property {number} tds        the reading pace now, tokens/s
 * @property {number} shown      tokens shown
 * @property {number} received   tokens received from the gateway
 * @property {number} ahead      received and not yet shown: the text buffered here
 * @property {number} aheadS     how long the reader can go on from it, seconds (ahead / tds)
 * @property {number | null} qoe the QoE of what has been shown so far (null before any text)
 * @property {number} elapsedS   since stream() was called
 * @property {boolean} paused
 */

/** An error that ended a stream. `code` is the gateway's error code or one of this module's. */
export class StreamError extends Error {
  /**
   * @param {string} code  a protocol code (invalid_request, upstream_error, ...) or
   *   cancelled | connection_closed | connection_failed | http_error | bad_frame
   * @param {string} message
   * @param {{fatal?: boolean, closeCode?: number, status?: number, text?: string}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = code === "cancelled" ? "AbortError" : "StreamError";
    this.code = code;
    this.fatal = details.fatal ?? false;
    this.closeCode = details.closeCode;
    this.status = details.status;
    /** text shown before the error */
    this.text = details.text ?? "";
  }
}

/**
 * Where the gateway is, for each transport.
 * @param {string | undefined} url
 * @returns {{ws: string, http: string}}  the WebSocket URL and the HTTP base URL
 */
export function gatewayUrls(url) {
  const loc = /** @type {any} */ (globalThis).location;
  const u = new URL(url ?? "/", loc?.href ?? "http://127.0.0.1:8080/");
  const secure = u.protocol === "https:" || u.protocol === "wss:";
  const path = u.pathname.replace(/\/+$/, "").replace(/(\/v1)?(\/stream|\/chat\/completions)?$/, "");
  const http = new URL(u.href);
  http.protocol = secure ? "https:" : "http:";
  http.pathname = path;
  http.search = "";
  const ws = new URL(http.href);
  ws.protocol = secure ? "wss:" : "ws:";
  ws.pathname = `${path}/v1/stream`;
  ws.search = u.search;
  return { ws: ws.href, http: http.href.replace(/\/+$/, "") };
}

/**
 * The WebSocket adapter: JSON frames over `andes.v1.json`. Browsers cannot set headers on a
 * WebSocket, so an API key travels as the `api_key` query parameter (docs/protocol.md).
 * @param {{url: string, apiKey?: string, WebSocket: any}} options
 * @param {TransportHandlers} on
 * @returns {Transport}
 */
export function openWebSocket({ url, apiKey, WebSocket: WS }, on) {
  if (!WS) throw new StreamError("connection_failed", "no WebSocket implementation available");
  const u = new URL(url);
  if (apiKey) u.searchParams.set("api_key", apiKey);
  const ws = new WS(u.href, [JSON_SUBPROTOCOL]);
  ws.onopen = () => on.open();
  ws.onmessage = (/** @type {{data: any}} */ ev) => {
    let frame;
    try {
      frame = parseServerFrame(decode(ev.data));
    } catch (e) {
      on.fail(e instanceof FrameError ? new StreamError("bad_frame", `the gateway sent a bad frame: ${e.message}`) : /** @type {Error} */ (e));
      return;
    }
    on.frame(frame);
  };
  ws.onerror = () => {}; // a close event follows with the details
  ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => on.closed(ev.code, ev.reason ?? "");
  return {
    send(frame) {
      if (ws.readyState === 1) ws.send(encode(frame));
    },
    close(code = 1000) {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(code);
    },
  };
}

/**
 * Split `text` carrying `count` tokens into `count` pieces of about equal length, so the local
 * pacer can pace tokens that the gateway sent together (their boundaries are not on the wire).
 * @param {string} text
 * @param {number} count
 * @returns {string[]}
 */
export function splitTokens(text, count) {
  if (count <= 1) return [text];
  const chars = Array.from(text); // code points: never split a surrogate pair
  const out = [];
  for (let i = 0; i < count; i++) {
    out.push(chars.slice(Math.round((i * chars.length) / count), Math.round(((i + 1) * chars.length) / count)).join(""));
  }
  return out;
}

const defaultClock = () => globalThis.performance.now() / 1000;

function defaultScheduler() {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.requestAnimationFrame === "function") {
    return { request: (/** @type {() => void} */ cb) => g.requestAnimationFrame(cb), cancel: (/** @type {any} */ h) => g.cancelAnimationFrame(h) };
  }
  return { request: (/** @type {() => void} */ cb) => setTimeout(cb, 16), cancel: (/** @type {any} */ h) => clearTimeout(h) };
}

const defaultTimers = {
  set: (/** @type {() => void} */ cb, /** @type {number} */ ms) => setTimeout(cb, ms),
  clear: (/** @type {any} */ h) => clearTimeout(h),
};

/** One stream's state machine. Use stream(); exported for tests. */
export class Session {
  /** @param {StreamOptions} options */
  constructor(options) {
    if (!Array.isArray(options.messages)) throw new TypeError("stream(): messages must be an array of chat messages");
    this.o = options;
    this.clock = options.clock ?? defaultClock;
    this.scheduler = options.scheduler ?? defaultScheduler();
    this.timers = options.timers ?? defaultTimers;
    this.doc = options.document !== undefined ? options.document : /** @type {any} */ (globalThis).document;
    this.pacing = options.pacing ?? "client";
    this.tds = options.qoe?.tds;
    this.pacer = new Pacer({
      tds_tok_s: this.tds ?? 4.8,
      mode: this.pacing === "client" ? "server" : "off", // "server": this pacer does the pacing
      frame_s: options.frameS ?? 1 / 60,
      word_boundary: options.wordBoundary ?? true,
    });
    this.ackIntervalS = options.ackIntervalS ?? 0.15;
    this.arrivalS = this.clock();
    this.qoe = new QoETracker(options.qoe ?? {}, this.arrivalS);
    /** @type {Transport | null} */
    this.transport = null;
    this.state = /** @type {"connecting" | "streaming" | "ending" | "finished"} */ ("connecting");
    this.text = "";
    this.shown = 0;
    this.received = 0;
    this.acked = 0;
    this.lastAckS = -Infinity;
    /** @type {unknown} */ this.ackTimer = null;
    /** @type {unknown} */ this.frameHandle = null;
    this.userPaused = false;
    this.hiddenPaused = false;
    /** @type {StartedFrame | null} */ this.started = null;
    /** @type {DoneFrame | null} */ this.doneFrame = null;
    this.firstShownS = /** @type {number | null} */ (null);
    /** @type {(r: StreamResult) => void} */ let resolve = () => {};
    /** @type {(e: StreamError) => void} */ let reject = () => {};
    /** @type {Promise<StreamResult>} */
    this.done = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.done.catch(() => {}); // a caller who never looks at `done` gets no unhandled rejection
    this.resolve = resolve;
    this.reject = reject;
    this.onVisibility = () => this.setHidden(this.isHidden());
    this.onAbort = () => this.cancel();
  }

  /** Open the transport and send `start`. */
  open() {
    const { signal } = this.o;
    if (signal?.aborted) {
      this.fail(new StreamError("cancelled", "the stream was cancelled before it started"), false);
      return;
    }
    signal?.addEventListener("abort", this.onAbort, { once: true });
    if (this.o.pauseWhenHidden !== false && this.doc?.addEventListener) {
      this.doc.addEventListener("visibilitychange", this.onVisibility);
      this.hiddenPaused = this.isHidden();
      if (this.hiddenPaused) this.pacer.pause(this.clock());
    }
    const urls = gatewayUrls(this.o.url);
    /** @type {TransportHandlers} */
    const handlers = {
      open: () => this.onOpen(),
      frame: (f) => this.onFrame(f),
      fail: (e) => {
        const x = /** @type {any} */ (e);
        this.fail(e instanceof StreamError ? e : new StreamError(x.code ?? "connection_failed", x.message, { status: x.status }));
      },
      closed: (code, reason) => this.onClosed(code, reason),
    };
    try {
      if (this.o.transport === "sse") {
        this.transport = openSSE({ baseUrl: urls.http, apiKey: this.o.apiKey, fetch: this.o.fetch ?? globalThis.fetch?.bind(globalThis), start: this.startFrame() }, handlers);
      } else {
        this.transport = openWebSocket({ url: urls.ws, apiKey: this.o.apiKey, WebSocket: this.o.WebSocket ?? /** @type {any} */ (globalThis).WebSocket }, handlers);
      }
    } catch (e) {
      this.fail(e instanceof StreamError ? e : new StreamError("connection_failed", String(/** @type {Error} */ (e).message ?? e)));
    }
  }

  startFrame() {
    const o = this.o;
    /** @type {{ttft?: number, tds?: number}} */
    const qoe = {};
    if (o.qoe?.ttft !== undefined) qoe.ttft = o.qoe.ttft;
    if (this.tds !== undefined) qoe.tds = this.pacer.tdsTokS;
    return startFrame({
      messages: o.messages,
      model: o.model,
      max_tokens: o.maxTokens,
      temperature: o.temperature,
      qoe: Object.keys(qoe).length ? qoe : undefined,
      pacing: this.pacing,
      extra_body: o.extraBody,
    });
  }

  isHidden() {
    return Boolean(this.doc && (this.doc.visibilityState === "hidden" || this.doc.hidden === true));
  }

  // -- transport events -----------------------------------------------------------------------

  onOpen() {
    if (this.state !== "connecting") return;
    this.state = "streaming";
    this.transport?.send(this.startFrame());
    if (this.paused) this.transport?.send({ type: "pause" });
  }

  /** @param {ServerFrame} f */
  onFrame(f) {
    if (this.state === "finished") return;
    const now = this.clock();
    switch (f.type) {
      case "started":
        this.started = f;
        if (this.tds === undefined && f.qoe.tds) {
          this.pacer.setPace(f.qoe.tds, now); // the gateway's default pace
          this.qoe = new QoETracker({ ttft: f.qoe.ttft, tds: f.qoe.tds }, this.arrivalS);
        }
        this.o.onStarted?.(f);
        return;
      case "delta":
        if (f.index !== this.received) {
          this.fail(new StreamError("bad_frame", `expected text from token ${this.received}, got token ${f.index}`));
          return;
        }
        this.received += f.count;
        this.pacer.feed(splitTokens(f.text, f.count), now);
        this.wake();
        return;
      case "done":
        this.doneFrame = f;
        this.state = "ending"; // the gateway is done with us; the rest is local rendering
        this.pacer.close();
        this.closeTransport();
        this.wake();
        return;
      case "error":
        if (this.state === "ending" && !f.fatal) return; // e.g. a late pause racing the end
        this.fail(new StreamError(f.code, f.message, { fatal: f.fatal }));
    }
  }

  /** @param {number} code @param {string} reason */
  onClosed(code, reason) {
    this.transport = null;
    if (this.state === "connecting" || this.state === "streaming") {
      const why = reason ? `: ${reason}` : "";
      this.fail(new StreamError("connection_closed", `the connection closed (code ${code}${why}) before the stream ended`, { closeCode: code }));
    }
  }

  // -- rendering ------------------------------------------------------------------------------

  /** Make sure a frame is coming if anything is or may become due. */
  wake() {
    if (this.frameHandle !== null || this.state === "finished") return;
    if (this.pacer.nextDueS() === null && !(this.pacer.done && this.doneFrame)) return;
    this.frameHandle = this.scheduler.request(() => {
      this.frameHandle = null;
      this.tick();
    });
  }

  /** One animation frame: show what is due, acknowledge, finish. */
  tick() {
    if (this.state === "finished") return;
    const now = this.clock();
    for (const chunk of this.pacer.due(now)) {
      this.shown += chunk.count;
      this.text += chunk.text;
      this.qoe.add(now, chunk.count);
      if (this.firstShownS === null) this.firstShownS = now;
      this.o.onText?.(chunk.text, { index: chunk.index, count: chunk.count, shown: this.shown, fullText: this.text });
      if (this.state === "finished") return; // onText cancelled
    }
    this.maybeAck(now);
    if (this.pacer.done && this.doneFrame) this.finish();
    else this.wake();
  }

  /** Acknowledge what is shown, at most once per ackIntervalS (a timer sends the last one). */
  maybeAck(/** @type {number} */ now) {
    if (this.pacing !== "client" || this.state !== "streaming" || this.shown <= this.acked) return;
    const wait = this.lastAckS + this.ackIntervalS - now;
    if (wait <= 0) {
      this.sendAck(now);
    } else if (this.ackTimer === null) {
      this.ackTimer = this.timers.set(() => {
        this.ackTimer = null;
        if (this.state === "streaming" && this.shown > this.acked) this.sendAck(this.clock());
      }, wait * 1000);
    }
  }

  /** @param {number} now */
  sendAck(now) {
    this.acked = this.shown;
    this.lastAckS = now;
    this.transport?.send(ackFrame(this.shown));
  }

  // -- control --------------------------------------------------------------------------------

  get paused() {
    return this.userPaused || this.hiddenPaused;
  }

  /** @param {() => void} change */
  changePause(change) {
    const before = this.paused;
    change();
    const after = this.paused;
    if (before === after || this.state === "finished") return;
    const now = this.clock();
    if (after) {
      this.pacer.pause(now);
      if (this.frameHandle !== null) {
        this.scheduler.cancel(this.frameHandle);
        this.frameHandle = null;
      }
    } else {
      this.pacer.resume(now);
      this.wake();
    }
    if (this.state === "streaming") this.transport?.send({ type: after ? "pause" : "resume" });
  }

  /** @param {boolean} hidden */
  setHidden(hidden) {
    this.changePause(() => {
      this.hiddenPaused = hidden;
    });
  }

  /** @param {number} tds */
  setPace(tds) {
    if (!(typeof tds === "number" && Number.isFinite(tds) && tds > 0)) {
      throw new RangeError(`setPace: tds must be a finite number > 0, got ${tds}`);
    }
    if (this.state === "finished") return;
    this.tds = tds;
    this.pacer.setPace(tds, this.clock());
    if (this.state === "streaming") this.transport?.send(paceFrame(tds));
    this.wake();
  }

  /** @returns {StreamStats} */
  stats() {
    const tds = this.pacer.tdsTokS;
    const ahead = Math.max(this.received - this.shown, 0);
    return {
      tds, shown: this.shown, received: this.received, ahead, aheadS: ahead / tds,
      qoe: this.shown > 0 ? this.qoe.qoe() : null, elapsedS: this.clock() - this.arrivalS,
      paused: this.paused,
    };
  }

  cancel() {
    if (this.state === "finished") return;
    if (this.state === "streaming") this.transport?.send({ type: "cancel" });
    this.fail(new StreamError("cancelled", "the stream was cancelled"));
  }

  // -- endings --------------------------------------------------------------------------------

  closeTransport() {
    const t = this.transport;
    this.transport = null;
    t?.close(1000);
  }

  cleanup() {
    this.state = "finished";
    if (this.frameHandle !== null) this.scheduler.cancel(this.frameHandle);
    if (this.ackTimer !== null) this.timers.clear(this.ackTimer);
    this.frameHandle = this.ackTimer = null;
    this.doc?.removeEventListener?.("visibilitychange", this.onVisibility);
    this.o.signal?.removeEventListener("abort", this.onAbort);
    this.closeTransport();
  }

  finish() {
    const d = /** @type {DoneFrame} */ (this.doneFrame);
    this.cleanup();
    /** @type {StreamResult} */
    const result = {
      text: this.text,
      tokens: this.shown,
      finishReason: d.finish_reason,
      usage: d.usage,
      qoe: d.qoe,
      ttftS: d.ttft_s,
      shownQoE: this.qoe.qoe(),
      shownTtftS: this.firstShownS === null ? null : this.firstShownS - this.arrivalS,
      streamId: this.started?.stream_id ?? null,
      model: this.started?.model ?? null,
    };
    this.o.onDone?.(result);
    this.resolve(result);
  }

  /** @param {StreamError} error @param {boolean} [notify] call onError (not for cancel) */
  fail(error, notify = error.code !== "cancelled") {
    if (this.state === "finished") return;
    this.cleanup();
    error.text = this.text;
    if (notify) this.o.onError?.(error);
    this.reject(error);
  }
}

/**
 * Stream one chat completion at the reader's pace.
 * @param {StreamOptions} options
 * @returns {StreamController}
 */
export function stream(options) {
  const s = new Session(options);
  s.open();
  return {
    setPace: (tds) => s.setPace(tds),
    pause: () => s.changePause(() => { s.userPaused = true; }),
    resume: () => s.changePause(() => { s.userPaused = false; }),
    cancel: () => s.cancel(),
    done: s.done,
    text: () => s.text,
    streamId: () => s.started?.stream_id ?? null,
    stats: () => s.stats(),
  };
}
