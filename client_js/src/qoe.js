// The QoE of a stream as its reader saw it: a mirror of core/qoe.py's QoETracker.
//
// Token i is expected at e_i = ttft + i/tds and read at c_i = max(d_i, c_{i-1} + 1/tds);
// QoE = 1 - Σ max(c_i - e_i, 0) / Σ (c_{n-1} - e_i), clipped to [0, 1]; 0 with no token.

export const DEFAULT_TTFT_S = 1.0;
export const DEFAULT_TDS_TOK_S = 4.8;

/** Incremental QoE: O(1) per token. Times in seconds on one clock. */
export class QoETracker {
  /**
   * @param {{ttft?: number, tds?: number}} spec  expected time to first token (s), pace (tokens/s)
   * @param {number} arrivalS  when the request was made, on the clock used for add()
   */
  constructor(spec = {}, arrivalS = 0) {
    this.ttftS = spec.ttft ?? DEFAULT_TTFT_S;
    this.tdsTokS = spec.tds ?? DEFAULT_TDS_TOK_S;
    this.arrivalS = arrivalS;
    this.numTokens = 0;
    this.lastReadS = -Infinity; // c_{n-1}, relative to arrival
    this.lateAreaS = 0; // Σ max(c_i - e_i, 0)
  }

  /** Record `count` tokens shown at `nowS`. @param {number} nowS @param {number} [count] */
  add(nowS, count = 1) {
    const d = nowS - this.arrivalS;
    const gap = 1 / this.tdsTokS;
    for (let k = 0; k < count; k++) {
      const c = Math.max(d, this.lastReadS + gap);
      this.lateAreaS += Math.max(c - (this.ttftS + this.numTokens / this.tdsTokS), 0);
      this.lastReadS = c;
      this.numTokens += 1;
    }
  }

  /** The QoE so far. */
  qoe() {
    const n = this.numTokens;
    if (n === 0) return 0;
    if (this.lateAreaS <= 0) return 1;
    const expected = n * this.lastReadS - (n * this.ttftS + (n * (n - 1)) / (2 * this.tdsTokS));
    if (expected <= 0) return 0;
    return Math.min(1, Math.max(0, 1 - this.lateAreaS / expected));
  }
}
