// Fakes with controllable time for the stream tests: a clock, animation frames, timers, a
// WebSocket the test plays the gateway on, and a document whose visibility the test flips.

export class FakeTime {
  constructor() {
    this.now = 100; // seconds; not 0, so that nothing relies on a zero origin
    /** @type {Array<() => void>} */
    this.frames = [];
    /** @type {Array<{at: number, cb: () => void, id: number}>} */
    this.timerList = [];
    this.nextId = 1;
    this.clock = () => this.now;
    this.scheduler = {
      request: (cb) => { this.frames.push(cb); return cb; },
      cancel: (h) => { this.frames = this.frames.filter((f) => f !== h); },
    };
    this.timers = {
      set: (cb, ms) => { const id = this.nextId++; this.timerList.push({ at: this.now + ms / 1000, cb, id }); return id; },
      clear: (id) => { this.timerList = this.timerList.filter((t) => t.id !== id); },
    };
  }

  /** Run one display frame (what requestAnimationFrame would call now). */
  frame() {
    const due = this.frames;
    this.frames = [];
    for (const cb of due) cb();
  }

  /** Advance `s` seconds in display frames of `step`, firing timers on the way. */
  advance(s, step = 1 / 60) {
    const end = this.now + s - 1e-9;
    while (this.now < end) {
      this.now = Math.min(this.now + step, end + 1e-9);
      for (const t of this.timerList.filter((t) => t.at <= this.now + 1e-12)) {
        this.timerList = this.timerList.filter((x) => x !== t);
        t.cb();
      }
      this.frame();
    }
  }
}

export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static instances = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    /** @type {any[]} frames the client sent, decoded */
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000) {
    this.readyState = 3;
    this.closedWith = code;
  }

  // -- the test plays the gateway --
  accept() {
    this.readyState = 1;
    this.onopen?.();
  }

  reply(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  ofType(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

export class FakeDocument {
  constructor() {
    this.visibilityState = "visible";
    this.listeners = new Set();
  }

  get hidden() {
    return this.visibilityState === "hidden";
  }

  addEventListener(name, fn) {
    if (name === "visibilitychange") this.listeners.add(fn);
  }

  removeEventListener(name, fn) {
    if (name === "visibilitychange") this.listeners.delete(fn);
  }

  setVisibility(state) {
    this.visibilityState = state;
    for (const fn of [...this.listeners]) fn();
  }
}
