"""The Andes scheduler's settings, read once from the environment of vLLM's engine-core process.

vLLM builds the scheduler itself inside a spawned engine-core process, from a class name; the
process environment is the one channel that reaches it. ``andes engine`` sets these variables (see
``engine/vllm/cli.py``); set them yourself when starting vLLM by hand.

==============================  =========================================================  =======
variable                        meaning                                                    default
==============================  =========================================================  =======
``ANDES_POLICY``                policy name (``andes``, ``fcfs``, ``lqf``, ...), or        andes
                                ``pkg.module:name`` to import a module that registers it
``ANDES_POLICY_OPTIONS``        JSON object of extra policy options                        {}
``ANDES_DELTA_T_S``             the policy's horizon Δt, seconds (option ``horizon_s``)     (policy)
``ANDES_DEFAULT_TTFT_S``        expected time to first token when a request sets none      1.0
``ANDES_DEFAULT_TDS``           reading pace, tokens/s, when a request sets none           4.8
``ANDES_SLACK_STALE_S``         ignore a measured slack report older than this (seconds)   2.0
``ANDES_TOKEN_LATENCY_S``       prior for the decode step latency (seconds)                0.03
``ANDES_PREFILL_S_PER_TOKEN``   prior for the prefill cost (seconds per prompt token)      0.0005
``ANDES_OFFLOAD_S_PER_TOKEN``   with vLLM's KV offloading: seconds to load one token's     5e-6
                                KV back from host memory (prices a park's resume)
``ANDES_DECISION_LOG``          a file to append one JSON line per engine step to          (off)
                                (what bound, batch, parks; see engine/vllm/scheduler.py)
==============================  =========================================================  =======
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.qoe import DEFAULT_TDS_TOK_S, DEFAULT_TTFT_S
from engine.policy.base import Policy
from engine.policy.registry import get_policy

__all__ = ["SchedulerSettings", "load_policy"]


@dataclass(frozen=True)
class SchedulerSettings:
    """Validated settings of :class:`engine.vllm.scheduler.AndesScheduler`."""

    policy: str = "andes"  # registered policy name, or "pkg.module:name"
    policy_options: Mapping[str, Any] = field(default_factory=dict)  # passed to get_policy
    delta_t_s: float | None = None  # policy horizon; None keeps the policy's default
    default_ttft_s: float = DEFAULT_TTFT_S  # for requests without andes_ttft
    default_tds_tok_s: float = DEFAULT_TDS_TOK_S  # for requests without andes_tds
    slack_stale_s: float = 2.0  # measured slack older than this is ignored (seconds)
    token_latency_s: float = 0.03  # prior decode step latency (seconds per iteration)
    prefill_s_per_token: float = 0.0005  # prior prefill cost (seconds per prompt token)
    offload_s_per_token: float = 5e-6  # host-to-device KV copy per token (KV offloading)

    def __post_init__(self) -> None:
        if not self.policy or not isinstance(self.policy, str):
            raise ValueError(f"ANDES_POLICY must name a policy, got {self.policy!r}")
        if not isinstance(self.policy_options, Mapping):
            raise ValueError(
                f"ANDES_POLICY_OPTIONS must be a JSON object, got {self.policy_options!r}"
            )
        _check("ANDES_DELTA_T_S", self.delta_t_s, positive=True, optional=True)
        _check("ANDES_DEFAULT_TTFT_S", self.default_ttft_s)
        _check("ANDES_DEFAULT_TDS", self.default_tds_tok_s, positive=True)
        _check("ANDES_SLACK_STALE_S", self.slack_stale_s, positive=True)
        _check("ANDES_TOKEN_LATENCY_S", self.token_latency_s, positive=True)
        _check("ANDES_PREFILL_S_PER_TOKEN", self.prefill_s_per_token)
        _check("ANDES_OFFLOAD_S_PER_TOKEN", self.offload_s_per_token)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerSettings:
        """Read the ``ANDES_*`` variables from ``env``; unset or empty ones keep their defaults."""
        kwargs: dict[str, Any] = {}
        if env.get("ANDES_POLICY"):
            kwargs["policy"] = env["ANDES_POLICY"].strip()
        if env.get("ANDES_POLICY_OPTIONS"):
            raw = env["ANDES_POLICY_OPTIONS"]
            try:
                kwargs["policy_options"] = json.loads(raw)
            except ValueError as exc:
                raise ValueError(
                    f"ANDES_POLICY_OPTIONS is not valid JSON ({exc}): {raw!r}"
                ) from None
        for name, key in (
            ("ANDES_DELTA_T_S", "delta_t_s"),
            ("ANDES_DEFAULT_TTFT_S", "default_ttft_s"),
            ("ANDES_DEFAULT_TDS", "default_tds_tok_s"),
            ("ANDES_SLACK_STALE_S", "slack_stale_s"),
            ("ANDES_TOKEN_LATENCY_S", "token_latency_s"),
            ("ANDES_PREFILL_S_PER_TOKEN", "prefill_s_per_token"),
            ("ANDES_OFFLOAD_S_PER_TOKEN", "offload_s_per_token"),
        ):
            if env.get(name):
                kwargs[key] = _float(name, env[name])
        return cls(**kwargs)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for ``andes engine``)."""
        env = {
            "ANDES_POLICY": self.policy,
            "ANDES_DEFAULT_TTFT_S": repr(self.default_ttft_s),
            "ANDES_DEFAULT_TDS": repr(self.default_tds_tok_s),
            "ANDES_SLACK_STALE_S": repr(self.slack_stale_s),
            "ANDES_TOKEN_LATENCY_S": repr(self.token_latency_s),
            "ANDES_PREFILL_S_PER_TOKEN": repr(self.prefill_s_per_token),
            "ANDES_OFFLOAD_S_PER_TOKEN": repr(self.offload_s_per_token),
        }
        if self.policy_options:
            env["ANDES_POLICY_OPTIONS"] = json.dumps(dict(self.policy_options))
        if self.delta_t_s is not None:
            env["ANDES_DELTA_T_S"] = repr(self.delta_t_s)
        return env

    def policy_kwargs(self) -> dict[str, Any]:
        """Options for ``get_policy``: ``policy_options``, plus ``horizon_s`` = Δt if set."""
        options = dict(self.policy_options)
        if self.delta_t_s is not None:
            options["horizon_s"] = self.delta_t_s  # the policies call Δt horizon_s
        return options


def load_policy(settings: SchedulerSettings) -> Policy:
    """Build the configured policy; ``pkg.module:name`` first imports ``pkg.module``.

    Pure Python (no vLLM), so ``andes serve`` and ``andes engine`` build it once before starting
    the engine: a bad ``ANDES_POLICY_OPTIONS`` is refused at once with the policy's own message
    (naming the bad option), not 30–80 s later inside vLLM's engine core.
    """
    name = settings.policy
    if ":" in name:
        module, _, name = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"ANDES_POLICY={settings.policy!r}: cannot import {module!r}: {exc}"
            ) from exc
    return get_policy(name, **settings.policy_kwargs())


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _check(name: str, value: float | None, positive: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = (
        isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
        )
