"""Continuation requests: how a parked stream is resumed exactly where it stopped. Sans-I/O.

Parking aborts a stream's upstream request (the engine frees its KV cache); resuming sends the
original prompt plus what was generated so far as a new prompt, asking for the rest. The engine's
prefix cache makes the resume cheap where it still holds the prefix. The reader must see one
unbroken stream, so a continuation is only used where it is *exact* — the tokens after the seam
are the ones the unparked request would have produced:

* ``token_ids`` (vLLM): the gateway asks for ``return_token_ids`` and keeps the prompt's and every
  generated token's id; the continuation is ``POST /v1/completions`` with the prompt as that id
  list, so nothing is re-tokenized and the seam is exact by construction. A chat request resumes
  the same way: its prompt ids are the chat template already applied.
* ``text`` (llama-cpp-python's server, which returns no token ids and takes string prompts only):
  ``POST /v1/completions`` with the original prompt + the text so far. Exact only when
  re-tokenizing that text gives back the tokens that were generated — true of the tokens a model
  emits in practice (its tokenizer's own segmentation), not guaranteed; the gateway cannot check
  it before a park (llama-cpp-python's tokenize endpoint waits for the engine's one slot), so it
  checks afterwards and counts a mismatch as a seam defect (:func:`gateway.usage.check_seams`).
  Only with ``repeat_penalty`` 1: llama.cpp's penalty sampler remembers the tokens it sampled,
  not the prompt, so its history would restart at the seam (llama-cpp-python defaults to 1.1).
  Chat requests cannot be continued there (the chat template is applied inside the engine and
  not exposed).

What else must hold, whatever the kind (:func:`not_parkable` says which rule a request breaks):
greedy decoding or unseeded sampling (a seeded sampler restarts its random state at the seam, so
it would no longer reproduce the seed's output); no stop strings (one spanning the seam would be
missed: the engine only matches them in its own output); no presence/frequency penalties (they
count only the output, which becomes prompt); no structured output, grammars or mirostat (their
state lives in the engine); no logprobs, echo or suffix; ``n = 1``. Fields the gateway does not
know are refused too: an unknown field may change generation in ways a continuation loses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ContinuationKind", "Progress", "continuation_body", "not_parkable"]

ContinuationKind = Literal["token_ids", "text"]

# OpenAI's documented default for /v1/completions (vLLM and llama-cpp-python follow it).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# Fields a continuation carries over unchanged: they shape sampling the same before and after
# the seam.
_CARRIED = frozenset({
    "model", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repeat_penalty",
    "ignore_eos", "stop_token_ids", "skip_special_tokens", "spaces_between_special_tokens",
    "cache_salt", "vllm_xargs", "logit_bias", "allowed_token_ids", "bad_words", "user",
    "include_stop_str_in_output", "priority", "truncate_prompt_tokens",
})
# Fields consumed by building the continuation (the prompt, the length limits).
_REBUILT = frozenset({"prompt", "messages", "max_tokens", "max_completion_tokens", "min_tokens",
                      "stream", "stream_options", "return_token_ids", "seed"})
# Chat-only fields whose effect is already in the prompt's token ids (the template applied).
_CHAT_TEMPLATE = frozenset({"chat_template", "chat_template_kwargs", "add_generation_prompt",
                            "continue_final_message", "documents", "add_special_tokens",
                            "echo", "mm_processor_kwargs"})
# Fields that are harmless when they have their neutral value.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logprobs": (None, False), "top_logprobs": (None, 0),
    "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1), "n": (None, 1),
    "response_format": (None, {"type": "text"}), "grammar": (None, ""),
    "mirostat_mode": (None, 0), "structured_outputs": (None,), "guided_json": (None,),
    "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
}


@dataclass(slots=True)
class Progress:
    """What a stream has produced so far, across all its segments."""

    prompt_token_ids: list[int] | None = None  # the prompt as the engine saw it (token_ids kind)
    token_ids: list[int] = field(default_factory=list)  # generated ids (token_ids kind)
    text: str = ""  # generated text received from the engine
    tokens: int = 0  # generated tokens, as counted (ids where known, else deltas)


def not_parkable(endpoint: str, body: Mapping[str, Any], kind: ContinuationKind | None,
                 max_model_len: int | None = None) -> str | None:  # fmt: skip
    """Why this request cannot be continued exactly on an engine of ``kind`` (None: it can)."""
    if kind is None:
        return "the upstream offers no exact continuation"
    if kind == "text":
        if endpoint != "completions":
            return "chat on an engine that returns no token ids (its template is not exposed)"
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if len(prompt) == 1 else None
        if not isinstance(prompt, str):
            return "the prompt is not a string"
        if body.get("repeat_penalty") not in (1, 1.0):
            # llama.cpp's penalty sampler remembers only the tokens it sampled, so a continuation
            # starts with an empty history (and llama-cpp-python's default is 1.1, not off).
            return "repeat_penalty is not 1 (its history restarts at the seam)"
    for key, value in body.items():
        if key in _CARRIED or key in _REBUILT:
            continue
        if key in _CHAT_TEMPLATE and endpoint == "chat" and kind == "token_ids" and key != "echo":
            continue
        neutral = _NEUTRAL.get(key)
        if neutral is None:
            return f"field {key!r} may not survive a continuation"
        if value not in neutral:
            return f"{key}={value!r} cannot be continued exactly"
    temperature = body.get("temperature")
    if temperature not in (None, 0, 0.0) and body.get("seed") is not None:
        return "seeded sampling"
    if (endpoint == "chat" and _max_tokens(endpoint, body) is None and max_model_len is None):
        return "no max_tokens and the engine's context length is unknown"
    return None


def _max_tokens(endpoint: str, body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return COMPLETIONS_DEFAULT_MAX_TOKENS if endpoint == "completions" else None


def remaining_tokens(endpoint: str, body: Mapping[str, Any], progress: Progress,
                     max_model_len: int | None = None) -> int:  # fmt: skip
    """Tokens the request may still produce."""
    limit = _max_tokens(endpoint, body)
    if limit is None:
        used = len(progress.prompt_token_ids or ()) + progress.tokens
        return max((max_model_len or 0) - used, 0)
    return max(limit - progress.tokens, 0)


def continuation_body(endpoint: str, body: Mapping[str, Any], progress: Progress,
                      kind: ContinuationKind,
                      max_model_len: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The ``/v1/completions`` body that resumes ``body`` after ``progress``.

    ``body`` is the original request as sent upstream (model already resolved). The caller has
    checked :func:`not_parkable`. Raises :class:`ValueError` when the progress lacks what the
    kind needs (no prompt ids for ``token_ids``).
    """
    out = {k: v for k, v in body.items() if k in _CARRIED}
    if kind == "token_ids":
        if progress.prompt_token_ids is None:
            raise ValueError("the engine sent no prompt token ids")
        out["prompt"] = [*progress.prompt_token_ids, *progress.token_ids]
        out["return_token_ids"] = True
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0]
        out["prompt"] = str(prompt) + progress.text
    out["max_tokens"] = remaining_tokens(endpoint, body, progress, max_model_len)
    min_tokens = body.get("min_tokens")
    if isinstance(min_tokens, int) and not isinstance(min_tokens, bool) and min_tokens > 0:
        out["min_tokens"] = max(min_tokens - progress.tokens, 0)
    return out
