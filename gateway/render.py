"""OpenAI's objects for what a stream carries beyond one choice's text: several choices
(``n`` > 1), logprobs, tool calls and reasoning. Pure functions and one accumulator, no I/O.

Streaming (SSE): a written chunk of paced text may hold tokens of several choices; it becomes one
event per run of consecutive tokens of one choice, each with its tokens' logprobs joined
(:func:`choice_runs`). A non-text delta (:class:`~gateway.stream.Extra`: ``tool_calls``,
``reasoning_content``, ...) is an event of its own, as the engine sent it.

One JSON answer: :class:`Answer` gathers every choice's text, logprobs and non-text deltas, and
builds OpenAI's ``choices``: tool-call deltas merged into whole calls (``id``, ``type``,
``function.name``, the ``arguments`` fragments joined), string fields such as
``reasoning_content`` joined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.stream import Extra, TokenMeta, merge_logprobs

__all__ = ["Answer", "ChoiceRun", "choice_runs"]


@dataclass(frozen=True, slots=True)
class ChoiceRun:
    """Consecutive tokens of one choice: their text and their logprobs as one object."""

    choice: int
    text: str
    logprobs: Any


def choice_runs(metas: Sequence[TokenMeta]) -> list[ChoiceRun]:
    """A written chunk's tokens (:meth:`~gateway.stream.Stream.meta_for`) as runs by choice."""
    runs: list[ChoiceRun] = []
    start = 0
    for i in range(1, len(metas) + 1):
        if i == len(metas) or metas[i].choice != metas[start].choice:
            part = metas[start:i]
            runs.append(ChoiceRun(part[0].choice, "".join(m.text for m in part),
                                  merge_logprobs(m.logprobs for m in part)))
            start = i
    return runs


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # reasoning_content and the like

    def add_extra(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if key == "tool_calls" and isinstance(value, list):
                self._add_tool_calls(value)
            elif isinstance(value, str) and isinstance(self.fields.get(key), str):
                self.fields[key] += value
            else:
                self.fields[key] = value

    def _add_tool_calls(self, parts: list[Any]) -> None:
        for position, part in enumerate(parts):
            if not isinstance(part, dict):
                continue
            index = part.get("index", position)
            call = self.tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            if part.get("id"):
                call["id"] = part["id"]
            if part.get("type"):
                call["type"] = part["type"]
            function = part.get("function") if isinstance(part.get("function"), dict) else {}
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    call["function"][key] += function[key]


class Answer:
    """Everything a non-streamed request's choices received, built into OpenAI's ``choices``."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}

    def _of(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        return choice

    def add_text(self, index: int, text: str, logprobs: Any = None) -> None:
        choice = self._of(index)
        choice.text.append(text)
        if logprobs is not None:
            choice.logprobs.append(logprobs)

    def add_runs(self, runs: Iterable[ChoiceRun]) -> None:
        for run in runs:
            self.add_text(run.choice, run.text, run.logprobs)

    def add_extra(self, extra: Extra) -> None:
        self._of(extra.choice).add_extra(extra.delta)

    def text(self, index: int = 0) -> str:
        choice = self._choices.get(index)
        return "".join(choice.text) if choice is not None else ""

    def choices(self, chat: bool, finish_reasons: dict[int, str], n: int) -> list[dict[str, Any]]:
        """OpenAI's ``choices`` for ``n`` choices (at least every one that received anything)."""
        indices = sorted(set(range(n)) | self._choices.keys() | finish_reasons.keys())
        return [self._choice(i, chat, finish_reasons.get(i) or "stop") for i in indices]

    def _choice(self, index: int, chat: bool, finish: str) -> dict[str, Any]:
        c = self._choices.get(index) or _Choice()
        text = "".join(c.text)
        logprobs = merge_logprobs(c.logprobs)
        if not chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not c.tool_calls else None}
        message.update(c.fields)
        if c.tool_calls:
            message["tool_calls"] = [c.tool_calls[k] for k in sorted(c.tool_calls)]
        return {"index": index, "message": message, "logprobs": logprobs,
                "finish_reason": finish}
