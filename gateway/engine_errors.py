"""The engine's errors, relayed in the gateway's own OpenAI error shape.

A client of the gateway should see one kind of error object whoever found the fault — the gateway
or the engine behind it. Engines answer in their own dialects: vLLM's ``type`` is an exception
class or an HTTP phrase (``"BadRequestError"``, ``"Bad Request"``), its ``code`` the status
number, its pydantic validation messages a Python ``repr`` of each error
(``{'type': 'bool_parsing', 'loc': ('body', 'logprobs'), 'msg': ...}``), its own validation
errors end in ``(parameter=top_logprobs, value=30)``. :func:`relay_error` turns any of them into
``{"message", "type", "param", "code"}`` with

* ``type`` from the status, as the gateway types its own errors (``invalid_request_error`` for
  4xx, ``rate_limit_error`` for 429, ``upstream_error`` for the engine's 5xx);
* ``param`` the one request field at fault, when the engine names it (its ``param``, the
  validation error's location, the ``parameter=`` suffix) or, failing that, when its message
  quotes exactly one of the request's fields;
* ``message`` in plain words: the pydantic entries as ``field: what is wrong``;
* ``code`` the engine's when it is a string (OpenAI's codes are), else none.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["relay_error"]

_PARAMETER_SUFFIX = re.compile(r"\s*\(parameter=([\w.\[\]]+)(?:, value=.*)?\)\s*$", re.S)
_VALIDATION_HEAD = re.compile(r"^\d+ validation errors?:?\s*$")
_MAX_ENTRY_CHARS = 4000  # a longer line is not parsed (ast.literal_eval on bounded input only)


def _type_for(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "upstream_error"


def _field(loc: Any) -> str | None:
    """A pydantic location as the request field's name: ``('body', 'logprobs')`` → ``logprobs``."""
    if isinstance(loc, str):
        parts = loc.split(".")
    elif isinstance(loc, list | tuple):
        parts = [str(p) for p in loc]
    else:
        return None
    parts = [p for p in parts if p and p != "body"]
    return ".".join(parts) or None


def _validation_entries(message: str) -> list[dict[str, Any]] | None:
    """vLLM's ``N validation error(s):`` message as its entries, or None if it is not one."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if not lines or not _VALIDATION_HEAD.match(lines[0]):
        return None
    entries = []
    for line in lines[1:]:
        if not line.startswith("{") or len(line) > _MAX_ENTRY_CHARS:
            continue  # "...and 3 more errors", or too long to read safely
        try:
            entry = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(entry, dict) and "msg" in entry:
            entries.append(entry)
    return entries or None


def _describe(entry: dict[str, Any]) -> str:
    field = _field(entry.get("loc"))
    text = str(entry["msg"])
    return f"{field}: {text}" if field else text


def _quoted_field(message: str, body: Mapping[str, Any]) -> str | None:
    """The one request field the message quotes ('x', "x" or `x`), if exactly one."""
    found = {key for key in body if isinstance(key, str) and len(key) > 1
             and re.search(rf"['\"`]{re.escape(key)}['\"`]", message)}
    return found.pop() if len(found) == 1 else None


def relay_error(status: int, error: Mapping[str, Any],
                body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The engine's error ``error`` (answered with ``status`` to a request of ``body``) in the
    gateway's shape. See the module docstring."""
    message = str(error.get("message") or f"the engine answered HTTP {status}")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    entries = _validation_entries(message)
    if entries is not None:
        message = "; ".join(_describe(e) for e in entries)
        param = param or _field(entries[0].get("loc"))
    suffix = _PARAMETER_SUFFIX.search(message)
    if suffix is not None:
        param = param or suffix.group(1)
        message = message[: suffix.start()]
    if param is not None:
        param = _field(param)
    if param is None and body:
        param = _quoted_field(message, body)
    code = error.get("code")
    return {"message": message.strip() or f"the engine answered HTTP {status}",
            "type": _type_for(status), "param": param,
            "code": code if isinstance(code, str) and code else None}
