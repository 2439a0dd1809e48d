"""The gateway's exceptions, and how the edge shows them.

::

    GatewayError                      status  OpenAI type             WS code
    ├── InvalidRequest                400     invalid_request_error   invalid_request
    │   └── ModelNotFound             404     invalid_request_error   invalid_request
    ├── Unauthorized                  401     invalid_request_error   unauthorized
    ├── StreamNotFound                404     invalid_request_error   invalid_request
    ├── PayloadTooLarge               413     invalid_request_error   invalid_request
    ├── UnsupportedMediaType          415     invalid_request_error   invalid_request
    ├── RequestTimeout                408     invalid_request_error   invalid_request
    ├── RateLimited                   429     rate_limit_error        rate_limited
    ├── ShuttingDown                  503     server_error            shutting_down
    ├── SlowReader                    —       server_error            slow_reader
    └── UpstreamError                 502     upstream_error          upstream_error
        ├── UpstreamUnavailable       502     (connection refused, reset)
        ├── UpstreamTimeout           504     (the engine accepted and then said nothing)
        └── UpstreamStatus            4xx/5xx forwarded with the engine's own error object
                                              (429: rate_limit_error / rate_limited)

A 429 carries ``Retry-After`` (:attr:`GatewayError.retry_after_s`, the engine's own when it sent
one).

Handlers raise these; :func:`openai_error` renders the body OpenAI clients expect, and the
WebSocket handler sends an ``error`` frame with :attr:`GatewayError.ws_code`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "GatewayError",
    "InvalidRequest",
    "ModelNotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ShuttingDown",
    "SlowReader",
    "StreamNotFound",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "openai_error",
]


class GatewayError(Exception):
    """Base class. ``message`` is safe to show a client (no secrets, no stack)."""

    status = 500
    error_type = "server_error"
    ws_code = "internal_error"
    default_code: str | None = None
    retry_after_s: float | None = None  # sent as Retry-After (429s)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, Any]:
        return openai_error(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's response."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after_s)))}


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    ws_code = "invalid_request"


class ModelNotFound(InvalidRequest):
    status = 404
    default_code = "model_not_found"


class Unauthorized(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    ws_code = "unauthorized"
    default_code = "invalid_api_key"


class StreamNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    ws_code = "invalid_request"
    default_code = "stream_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    ws_code = "invalid_request"
    default_code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    """A body that is not declared JSON. Browsers send such a POST cross-site without asking
    (a CORS "simple request"); requiring application/json makes them ask first, and the gateway
    answers no CORS preflight, so a foreign web page cannot drive the API."""

    status = 415
    error_type = "invalid_request_error"
    ws_code = "invalid_request"
    default_code = "unsupported_media_type"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    ws_code = "invalid_request"
    default_code = "request_timeout"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    ws_code = "rate_limited"
    default_code = "too_many_streams"
    retry_after_s = 1.0


class ShuttingDown(GatewayError):
    status = 503
    ws_code = "shutting_down"
    default_code = "shutting_down"


class SlowReader(GatewayError):
    """The client did not take the text in time, or let too much pile up; the stream is ended."""

    status = 408
    ws_code = "slow_reader"
    default_code = "slow_reader"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    ws_code = "upstream_error"
    default_code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """The engine answered with an error status; forwarded with the engine's error object."""

    def __init__(self, status: int, error: dict[str, Any],
                 retry_after_s: float | None = None) -> None:
        message = str(error.get("message") or f"upstream returned HTTP {status}")
        super().__init__(message, param=error.get("param"))
        self.code = error.get("code")  # the engine's (gateway/engine_errors.py), none included
        self.status = status
        self.error_type = str(error.get("type") or self.error_type)
        if status == 429:
            # The engine is overloaded: to a client that is a rate limit, retried later, not a
            # bad request to fix.
            self.ws_code = "rate_limited"
            self.error_type = "rate_limit_error"
            self.retry_after_s = 1.0 if retry_after_s is None else retry_after_s
        elif 400 <= status < 500:
            self.ws_code = "invalid_request"


def openai_error(message: str, error_type: str, param: str | None = None,
                 code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
