"""What every transport shares at the edge: the app's state key and API-key authentication.

Neither transport owns these: the HTTP API, the WebSocket endpoint and the app's middleware all
read the :class:`~gateway.service.Gateway` through :data:`GATEWAY` and check keys with
:func:`key_ok`.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.service import Gateway

__all__ = ["GATEWAY", "bearer", "key_index", "key_ok"]

GATEWAY = web.AppKey("gateway", Gateway)  # the app's one Gateway service


def key_ok(gw: Gateway, presented: str | None) -> bool:
    """Constant-time comparison against every configured key; no keys = open gateway."""
    if not gw.config.api_keys:
        return True
    return key_index(gw, presented) is not None


def key_index(gw: Gateway, presented: str | None) -> int | None:
    """Which configured key ``presented`` is (its index), compared in constant time against
    every key; ``None`` if none, or if the gateway has no keys. A stream remembers the index of
    the key that opened it (``Stream.owner``): only that key may act on it."""
    if not presented or not gw.config.api_keys:
        return None
    found: int | None = None
    given = presented.encode("utf-8", "surrogatepass")
    for i, key in enumerate(gw.config.api_keys):
        if hmac.compare_digest(given, key.encode()) and found is None:
            found = i
    return found


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
