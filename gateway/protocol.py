"""The Andes WebSocket protocol: frame types, validation, JSON and msgpack encodings. Sans-I/O.

The written specification is ``docs/protocol.md``; this module is its Python definition (the JS one
is ``client_js/src/protocol.js``) and both are tested against ``tests/golden/frames.json``.

Every frame is a map with a ``type``. :func:`parse_client_frame` / :func:`parse_server_frame` turn a
decoded map into a frame dataclass or raise :class:`FrameError` whose ``code`` is the protocol's
error code (``bad_frame`` is fatal: the frame could not be understood at all; ``invalid_request`` is
not: the frame was understood but a field is wrong). :func:`decode` and :func:`encode` add the
encoding chosen by the WebSocket subprotocol.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

__all__ = [
    "DEFAULT_SUBPROTOCOL",
    "ERROR_CODES",
    "SUBPROTOCOLS",
    "Ack",
    "Cancel",
    "ClientFrame",
    "Delta",
    "Done",
    "Error",
    "FrameError",
    "Pace",
    "Pause",
    "QoEFields",
    "Resume",
    "ServerFrame",
    "Start",
    "Started",
    "Usage",
    "check_depth",
    "check_text",
    "decode",
    "encode",
    "loads",
    "one_of",
    "parse_client_frame",
    "parse_server_frame",
    "show",
    "to_dict",
]

JSON_SUBPROTOCOL = "andes.v1.json"
MSGPACK_SUBPROTOCOL = "andes.v1.msgpack"
SUBPROTOCOLS = (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)
DEFAULT_SUBPROTOCOL = JSON_SUBPROTOCOL  # when the client offers none

ERROR_CODES = (
    "bad_frame",  # undecodable frame; fatal, close 1007
    "invalid_request",  # a field is wrong; the connection stays usable
    "out_of_order",  # a frame the current state does not allow
    "unauthorized",  # bad or missing API key; close 4401
    "rate_limited",  # too many concurrent streams; retry later
    "upstream_error",  # the engine failed; the stream ends
    "slow_reader",  # the client did not take the text in time / buffered too much; the stream ends
    "shutting_down",  # the gateway is stopping; close 1001
    "internal_error",  # a gateway bug; the stream ends
)

# Limits on a start frame; the gateway applies its own (smaller) configured limits on top.
MAX_TTFT_S = 600.0
MAX_TDS_TOK_S = 1000.0
MAX_ID_CHARS = 256
MAX_STOP_SEQUENCES = 4
MAX_EXTRA_BODY_KEYS = 32
# Deepest nesting of maps and lists a frame or body may have: far beyond any real request (a tool's
# JSON schema included), well within what encoding it again for the engine can recurse through.
MAX_DEPTH = 100
# What `start.extra_body` may not set: what the gateway itself controls or validates (the request's
# shape, its length limit, the Andes fields), and what `start` has its own field for.
RESERVED_EXTRA_BODY_KEYS = (
    "messages", "prompt", "model", "stream", "stream_options", "max_tokens",
    "max_completion_tokens", "n", "tools", "functions", "qoe", "pacing",
    "temperature", "top_p", "stop", "seed",
)  # fmt: skip
ROLES = ("system", "developer", "user", "assistant", "tool")
PACINGS = ("server", "client", "off")

PacingName = Literal["server", "client", "off"]


class FrameError(Exception):
    """A frame that cannot be accepted. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = (code == "bad_frame") if fatal is None else fatal


# -- client → gateway ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QoEFields:
    """A reader's expectation: ``ttft`` seconds to the first token, ``tds`` tokens/s pace."""

    ttft: float | None = None
    tds: float | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """Start a chat completion. Fields mirror OpenAI's chat request; ``None`` = gateway default."""

    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    qoe: QoEFields = field(default_factory=QoEFields)
    pacing: PacingName | None = None
    id: str | None = None  # the client's own reference, echoed in `started`
    # More top-level fields of the engine request, forwarded as they are (like the openai client's
    # extra_body), e.g. vLLM's ignore_eos or min_tokens; never a RESERVED_EXTRA_BODY_KEYS key.
    extra_body: dict[str, Any] | None = None
    type: Literal["start"] = "start"


@dataclass(frozen=True, slots=True)
class Ack:
    """Client pacing: the reader has seen ``consumed`` tokens (cumulative)."""

    consumed: int
    type: Literal["ack"] = "ack"


@dataclass(frozen=True, slots=True)
class Pace:
    """The reader's pace changed to ``tds`` tokens/s."""

    tds: float
    type: Literal["pace"] = "pace"


@dataclass(frozen=True, slots=True)
class Pause:
    type: Literal["pause"] = "pause"


@dataclass(frozen=True, slots=True)
class Resume:
    type: Literal["resume"] = "resume"


@dataclass(frozen=True, slots=True)
class Cancel:
    type: Literal["cancel"] = "cancel"


ClientFrame = Start | Ack | Pace | Pause | Resume | Cancel


# -- gateway → client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    stream_id: str
    model: str
    pacing: PacingName
    qoe: QoEFields
    id: str | None = None
    type: Literal["started"] = "started"


@dataclass(frozen=True, slots=True)
class Delta:
    index: int  # index of the first token in `text`
    count: int  # tokens in `text`
    text: str
    type: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str | None
    usage: Usage
    qoe: float  # measured at delivery, 0–1
    ttft_s: float | None  # seconds from start to the first delivered token; None if none
    tokens: int  # tokens delivered
    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    fatal: bool = False
    type: Literal["error"] = "error"


ServerFrame = Started | Delta | Done | Error


# -- validation helpers -------------------------------------------------------------------------


def _invalid(message: str) -> FrameError:
    return FrameError("invalid_request", message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _opt_int(d: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"within [{lo}, {hi}]"
        raise _invalid(f"{key} must be an integer {bound}, got {show(v)}")
    return v


def _opt_num(d: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not _is_num(v) or not lo <= v <= hi:
        raise _invalid(f"{key} must be a number within [{lo}, {hi}], got {show(v)}")
    return float(v)


def parse_qoe(v: Any, where: str = "qoe") -> QoEFields:
    """Validate a ``{ttft, tds}`` map (both optional). Shared with the HTTP API."""
    if v is None:
        return QoEFields()
    if not isinstance(v, dict):
        raise _invalid(f"{where} must be an object {{ttft, tds}}, got {show(v)}")
    ttft, tds = v.get("ttft"), v.get("tds")
    if ttft is not None and not (_is_num(ttft) and 0 <= ttft <= MAX_TTFT_S):
        raise _invalid(f"{where}.ttft must be a number of seconds within [0, {MAX_TTFT_S}], "
                       f"got {show(ttft)}")
    if tds is not None and not (_is_num(tds) and 0 < tds <= MAX_TDS_TOK_S):
        raise _invalid(f"{where}.tds must be a number of tokens/s within (0, {MAX_TDS_TOK_S}], "
                       f"got {show(tds)}")
    return QoEFields(None if ttft is None else float(ttft), None if tds is None else float(tds))


def parse_messages(v: Any) -> list[dict[str, Any]]:
    """Validate OpenAI chat messages: a non-empty list of ``{role, content}`` maps."""
    if v is None:
        raise _invalid("messages is required: a non-empty list of {role, content}")
    if not isinstance(v, list) or not v:
        raise _invalid(f"messages must be a non-empty list, got {_short(v)}")
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise _invalid(f"messages[{i}] must be an object, got {_short(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise _invalid(f"messages[{i}].role must be one of {one_of(ROLES)}, got {show(role)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(f"messages[{i}].content must be a string or a list of parts, "
                           f"got {_short(content)}")
    return v


def parse_stop(v: Any) -> str | list[str] | None:
    if v is None or isinstance(v, str):
        return v
    if (isinstance(v, list) and len(v) <= MAX_STOP_SEQUENCES
            and all(isinstance(s, str) for s in v)):
        return v
    raise _invalid(f"stop must be a string or a list of at most {MAX_STOP_SEQUENCES} strings, "
                   f"got {_short(v)}")


def parse_pacing(v: Any, where: str = "pacing") -> PacingName | None:
    if v is None:
        return None
    if v not in PACINGS:
        raise _invalid(f"{where} must be one of {one_of(PACINGS)}, got {_short(v)}")
    return v


def parse_extra_body(v: Any) -> dict[str, Any] | None:
    """Validate ``start.extra_body``: a map of at most :data:`MAX_EXTRA_BODY_KEYS` fields, none of
    them one the gateway controls (:data:`RESERVED_EXTRA_BODY_KEYS`)."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _invalid(f"extra_body must be an object of engine request fields, got {_short(v)}")
    if len(v) > MAX_EXTRA_BODY_KEYS:
        raise _invalid(f"extra_body may hold at most {MAX_EXTRA_BODY_KEYS} fields, got {len(v)}")
    for key in v:
        if not isinstance(key, str) or not key:
            raise _invalid(f"extra_body keys must be non-empty strings, got {_short(key)}")
        if key in RESERVED_EXTRA_BODY_KEYS:
            raise _invalid(f"extra_body may not set {key!r}: the gateway controls it (start has "
                           "its own fields for model, max_tokens, temperature, top_p, stop, seed, "
                           "qoe and pacing)")
    parse_vllm_xargs(v.get("vllm_xargs"), "extra_body.vllm_xargs")
    return dict(v)


def parse_vllm_xargs(v: Any, where: str = "vllm_xargs") -> dict[str, Any] | None:
    """vLLM's ``vllm_xargs``: an object (the gateway merges its own keys into it)."""
    if v is not None and not isinstance(v, dict):
        raise _invalid(f"{where} must be an object, got {show(v)}")
    return v


def show(v: Any, limit: int = 80) -> str:
    """A value as a client wrote it, for error messages: JSON words (``null``, ``true``,
    ``[1,2]``, ``{"a":1}``), strings in single quotes; never Python's (``None``, ``True``). Cut to
    ``limit`` characters. The JS mirror is ``short`` in ``client_js/src/protocol.js``."""
    if isinstance(v, str):
        text = repr(v)
    else:
        try:
            text = json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError):
            text = repr(v)  # bytes, NaN: nothing JSON can say better
    return text if len(text) <= limit else text[: limit - 3] + "..."


_short = show


def one_of(choices: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'`` for an error message."""
    quoted = [repr(c) for c in choices]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


# -- parsing ------------------------------------------------------------------------------------


def _frame_type(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise FrameError("bad_frame", f"a frame must be a map, got {_short(obj)}")
    t = obj.get("type")
    if not isinstance(t, str):
        raise FrameError("bad_frame", f"a frame needs a string 'type', got {_short(t)}")
    return t


def parse_client_frame(obj: Any) -> ClientFrame:
    """A decoded map from a client → a frame. Raises :class:`FrameError`.

    Unknown fields are ignored (forward compatibility); wrong types and values are not.
    """
    t = _frame_type(obj)
    if t == "start":
        model = obj.get("model")
        if model is not None and not (isinstance(model, str) and model):
            raise _invalid(f"model must be a non-empty string, got {_short(model)}")
        if model is not None:
            check_text(model, "model")
        ref = obj.get("id")
        if ref is not None and not (isinstance(ref, str) and len(ref) <= MAX_ID_CHARS):
            raise _invalid(f"id must be a string of at most {MAX_ID_CHARS} characters, "
                           f"got {_short(ref)}")
        if ref is not None:
            check_text(ref, "id")
        pacing = parse_pacing(obj.get("pacing"))
        seed = obj.get("seed")
        if seed is not None and not _is_int(seed):
            raise _invalid(f"seed must be an integer, got {show(seed)}")
        return Start(
            messages=parse_messages(obj.get("messages")),
            model=model,
            max_tokens=_opt_int(obj, "max_tokens", 1),
            temperature=_opt_num(obj, "temperature", 0.0, 2.0),
            top_p=_opt_num(obj, "top_p", 0.0, 1.0),
            stop=parse_stop(obj.get("stop")),
            seed=seed,
            qoe=parse_qoe(obj.get("qoe")),
            pacing=pacing,
            id=ref,
            extra_body=parse_extra_body(obj.get("extra_body")),
        )
    if t == "ack":
        consumed = obj.get("consumed")
        if not _is_int(consumed) or consumed < 0:
            raise _invalid(f"ack.consumed must be an integer >= 0, got {_short(consumed)}")
        return Ack(consumed)
    if t == "pace":
        tds = obj.get("tds")
        if not (_is_num(tds) and 0 < tds <= MAX_TDS_TOK_S):
            raise _invalid(f"pace.tds must be a number of tokens/s within (0, {MAX_TDS_TOK_S}], "
                           f"got {_short(tds)}")
        return Pace(float(tds))
    if t == "pause":
        return Pause()
    if t == "resume":
        return Resume()
    if t == "cancel":
        return Cancel()
    raise FrameError("bad_frame", f"unknown frame type {_short(t)}")


def parse_server_frame(obj: Any) -> ServerFrame:
    """A decoded map from the gateway → a frame (used by clients). Raises :class:`FrameError`."""
    t = _frame_type(obj)
    try:
        if t == "started":
            q = obj["qoe"]
            return Started(str(obj["stream_id"]), str(obj["model"]), obj["pacing"],
                           QoEFields(q.get("ttft"), q.get("tds")), obj.get("id"))
        if t == "delta":
            index, count, text = obj["index"], obj["count"], obj["text"]
            if not (_is_int(index) and _is_int(count) and isinstance(text, str)):
                raise TypeError("index and count must be integers, text a string")
            return Delta(index, count, text)
        if t == "done":
            u = obj.get("usage") or {}
            usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)),
                          int(u.get("total_tokens", 0)))
            return Done(obj.get("finish_reason"), usage, float(obj["qoe"]), obj.get("ttft_s"),
                        int(obj["tokens"]))
        if t == "error":
            return Error(str(obj["code"]), str(obj["message"]), bool(obj.get("fatal", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FrameError("bad_frame", f"malformed {t!r} frame: {exc}") from None
    raise FrameError("bad_frame", f"unknown frame type {_short(t)}")


def to_dict(frame: ClientFrame | ServerFrame) -> dict[str, Any]:
    """The wire map of a frame: ``type`` first, ``None`` fields left out."""
    out: dict[str, Any] = {"type": frame.type}
    for name in frame.__dataclass_fields__:
        if name == "type":
            continue
        v = getattr(frame, name)
        if isinstance(v, QoEFields):
            v = {k: x for k, x in (("ttft", v.ttft), ("tds", v.tds)) if x is not None}
        elif isinstance(v, Usage):
            v = {"prompt_tokens": v.prompt_tokens, "completion_tokens": v.completion_tokens,
                 "total_tokens": v.total_tokens}
        if v is not None or name in ("finish_reason", "ttft_s"):
            out[name] = v
    return out


# -- encodings ----------------------------------------------------------------------------------


def encode(frame: ClientFrame | ServerFrame | dict[str, Any], subprotocol: str) -> str | bytes:
    """A frame as a WebSocket payload: text for JSON, bytes for msgpack."""
    obj = frame if isinstance(frame, dict) else to_dict(frame)
    if subprotocol == MSGPACK_SUBPROTOCOL:
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(data: str | bytes, subprotocol: str) -> Any:
    """A WebSocket payload → the decoded map (not yet validated). Raises ``bad_frame``.

    JSON connections take text frames, msgpack connections binary frames; the other kind is an
    error rather than a guess, so a client with a broken encoder fails loudly.
    """
    if subprotocol == MSGPACK_SUBPROTOCOL:
        if not isinstance(data, bytes | bytearray):
            raise FrameError("bad_frame", "andes.v1.msgpack takes binary frames, got a text frame")
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameError("bad_frame", f"not msgpack: {exc}") from None
        check_depth(obj, "bad_frame")
        return obj
    if not isinstance(data, str):
        raise FrameError("bad_frame", "andes.v1.json takes text frames, got a binary frame")
    try:
        return loads(data)
    except FrameError as exc:
        raise FrameError("bad_frame", f"not JSON: {exc.message}") from None


def loads(data: str | bytes) -> Any:
    """Standard JSON only (no NaN, no Infinity: the engine would get them as they are, which is
    not JSON), nested at most :data:`MAX_DEPTH` deep. Raises ``invalid_request``."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise _invalid(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(str(exc)) from None
    check_depth(obj)
    return obj


def check_depth(obj: Any, code: str = "invalid_request") -> None:
    """Raise :class:`FrameError` if maps and lists in ``obj`` nest deeper than
    :data:`MAX_DEPTH`. Iterative: the check itself never recurses."""
    stack = [(obj, 1)] if isinstance(obj, dict | list) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > MAX_DEPTH:
            raise FrameError(code, f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def check_text(value: str, where: str) -> str:
    """``value`` if it encodes as UTF-8. A lone surrogate (``"\\ud800"`` in JSON) decodes to a str
    that cannot be sent on: refused where it comes in rather than failing on the way out."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(f"{where} is not valid Unicode text (a lone surrogate)") from None
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
