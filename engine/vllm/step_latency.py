"""An online model of the engine's step latency, fed by the scheduler from what it observes.

The policies need ``token_latency_s(batch)`` (seconds per decode iteration at a batch size) and
``prefill_latency_s(tokens)`` (seconds to (re)compute a prompt) — :class:`engine.policy.Capacity`.
The scheduler times every step it sees and feeds :meth:`StepLatencyModel.observe`; the model keeps

* a decode line ``L(b) = base_s + per_seq_s · b`` fitted by exponentially-weighted least squares
  on steps that ran no prefill, and
* a prefill cost per token, an exponential moving average of the time a step took beyond the
  decode line, divided by the prefill tokens it ran.

Both start from priors (set by ``ANDES_TOKEN_LATENCY_S`` / ``ANDES_PREFILL_S_PER_TOKEN``) that
weigh as a few observations, so the first steps are sensible and data soon dominates. The decode
prior is a *level* only, flat in the batch size: the slope comes from the observed steps alone.
(Fitted as points at batch sizes 1 and 2, a prior whose level was off — 30 ms where this CPU takes
90 ms a step — turned into a steep slope once steps at batch 16 came in: smaller batches looked
twice as fast as they are, the latency trigger's batch pruning held streams that then fell behind
their readers.) Pure Python, O(1) per step.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["StepLatencyModel"]


class StepLatencyModel:
    """Per-iteration latency as a function of batch size, learned online."""

    __slots__ = (
        "_decay",
        "_prefill_s_per_token",
        "_prior_s",
        "_prior_w",
        "_sw",
        "_swx",
        "_swxx",
        "_swxy",
        "_swy",
    )

    def __init__(
        self,
        token_latency_s: float = 0.03,
        prefill_s_per_token: float = 0.0005,
        half_life_steps: float = 200.0,
        prior_weight: float = 4.0,
    ) -> None:
        if not (math.isfinite(token_latency_s) and token_latency_s > 0):
            raise ValueError(f"token_latency_s must be > 0, got {token_latency_s!r}")
        if not (math.isfinite(prefill_s_per_token) and prefill_s_per_token >= 0):
            raise ValueError(f"prefill_s_per_token must be >= 0, got {prefill_s_per_token!r}")
        if not half_life_steps > 0:
            raise ValueError(f"half_life_steps must be > 0, got {half_life_steps!r}")
        self._decay = 0.5 ** (1.0 / half_life_steps)
        # The prior: a flat line at token_latency_s, weighing as prior_weight steps (it decays as
        # they do); the sums are the observed decode steps only.
        self._prior_s, self._prior_w = token_latency_s, prior_weight
        self._sw = self._swx = self._swy = self._swxx = self._swxy = 0.0
        self._prefill_s_per_token = prefill_s_per_token

    def observe(self, step_s: float, decode_seqs: int, prefill_tokens: int) -> None:
        """Record one engine step that took ``step_s`` seconds.

        ``decode_seqs``: requests that decoded one token in it; ``prefill_tokens``: prompt tokens
        it (re)computed. Steps with neither, or with a non-positive duration, are ignored.
        """
        if not (step_s > 0 and math.isfinite(step_s)):
            return
        if prefill_tokens > 0:
            beyond = step_s - (self.token_latency_s(decode_seqs) if decode_seqs else 0.0)
            sample = max(beyond, 0.0) / prefill_tokens
            self._prefill_s_per_token += 0.1 * (sample - self._prefill_s_per_token)
        elif decode_seqs > 0:
            self._prior_w *= self._decay
            self._sw *= self._decay
            self._swx *= self._decay
            self._swy *= self._decay
            self._swxx *= self._decay
            self._swxy *= self._decay
            self._add(float(decode_seqs), step_s, 1.0)

    def token_latency_s(self, batch: int) -> float:
        """Seconds per decode iteration with ``batch`` running requests (never below 1 µs)."""
        base, slope = self._line()
        return max(base + slope * max(batch, 1), 1e-6)

    def prefill_latency_s(self, tokens: Any) -> Any:
        """Seconds to compute ``tokens`` prompt tokens (an int, or a numpy array elementwise)."""
        return self._prefill_s_per_token * (tokens * (tokens > 0))

    def _add(self, x: float, y: float, w: float) -> None:
        self._sw += w
        self._swx += w * x
        self._swy += w * y
        self._swxx += w * x * x
        self._swxy += w * x * y

    def _line(self) -> tuple[float, float]:
        """``(base, slope)``: the observed steps' line, its level blended with the prior's."""
        if self._sw <= 0.0:
            return self._prior_s, 0.0
        mean_x = self._swx / self._sw
        mean_y = self._swy / self._sw
        var_x = self._swxx / self._sw - mean_x * mean_x
        slope = 0.0  # one batch size seen so far: no slope information
        if var_x >= 1e-9:
            # A latency that falls with batch size is noise; clamp the slope at zero.
            slope = max((self._swxy / self._sw - mean_x * mean_y) / var_x, 0.0)
        base = mean_y - slope * mean_x
        w = self._sw / (self._sw + self._prior_w)
        return w * base + (1.0 - w) * self._prior_s, w * slope
