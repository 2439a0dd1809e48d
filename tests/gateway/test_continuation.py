"""Continuation bodies and the rules for when a request may be parked (gateway/continuation.py)."""

from __future__ import annotations

import pytest

from gateway.continuation import Progress, continuation_body, not_parkable


def test_token_ids_resume_on_completions_with_the_rest_of_the_budget() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
            "temperature": 0, "cache_salt": "s", "min_tokens": 20}
    assert not_parkable("chat", body, "token_ids") is None
    progress = Progress(prompt_token_ids=[1, 2, 3], token_ids=[7, 8], text="ab", tokens=2)
    out = continuation_body("chat", body, progress, "token_ids")
    assert out == {"model": "m", "temperature": 0, "cache_salt": "s", "prompt": [1, 2, 3, 7, 8],
                   "return_token_ids": True, "max_tokens": 48, "min_tokens": 18}


def test_text_continuations_append_the_text_and_need_a_neutral_repeat_penalty() -> None:
    body = {"model": "m", "prompt": "Once", "max_tokens": 10, "temperature": 0}
    assert "repeat_penalty" in str(not_parkable("completions", body, "text"))
    body["repeat_penalty"] = 1.0
    assert not_parkable("completions", body, "text") is None
    out = continuation_body("completions", body, Progress(text=" upon", tokens=1), "text")
    assert out["prompt"] == "Once upon" and out["max_tokens"] == 9
    chat = {"model": "m", "messages": [], "max_tokens": 10}
    assert "chat" in str(not_parkable("chat", chat, "text"))


@pytest.mark.parametrize(("field", "value"), [
    ("stop", ["\n"]), ("presence_penalty", 0.5), ("logprobs", 2), ("n", 2),
    ("response_format", {"type": "json_object"}), ("some_new_field", 1)])
def test_what_a_continuation_would_change_is_never_parked(field: str, value: object) -> None:
    body = {"model": "m", "prompt": "x", "max_tokens": 10, field: value}
    assert not_parkable("completions", body, "token_ids") is not None


def test_seeded_sampling_is_not_parked_but_greedy_and_unseeded_are() -> None:
    base = {"model": "m", "prompt": "x", "max_tokens": 10}
    assert not_parkable("completions", dict(base, temperature=0.7, seed=1), "token_ids")
    assert not_parkable("completions", dict(base, temperature=0.7), "token_ids") is None
    assert not_parkable("completions", dict(base, temperature=0, seed=1), "token_ids") is None
    assert not_parkable("completions", base, None) is not None  # no exact kind upstream
