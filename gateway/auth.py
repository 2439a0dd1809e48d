"""What every transport shares at the edge: the app's state key and API-key authentication.

Neither transport owns these: the HTTP API, the WebSocket endpoint and the app's middleware all
read the :class:`~gateway.service.Gateway` through :data:`GATEWAY` and check keys with
:func:`key_ok`.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.service import Gateway

__all__ = ["GATEWAY", "bearer", "key_ok"]

GATEWAY = web.AppKey("gateway", Gateway)  # the app's one Gateway service


def key_ok(gw: Gateway, presented: str | None) -> bool:
    """Constant-time comparison against every configured key; no keys = open gateway."""
    if not gw.config.api_keys:
        return True
    if not presented:
        return False
    ok = False
    for key in gw.config.api_keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
