"""Raw-socket clients for the adversarial tests (tests/gateway/test_timeouts.py, test_storm.py):
a reader that never reads, a client that trickles its request, a WebSocket spoken by hand — what
aiohttp's or websockets' clients would never do."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

__all__ = ["connect_raw", "http_request", "ws_frame", "ws_handshake"]


async def connect_raw(url: str, rcvbuf: int | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``url``'s host and port; ``rcvbuf`` shrinks the kernel's receive
    buffer first, so a client that does not read fills the server's side quickly."""
    host, port = url.removeprefix("http://").removeprefix("ws://").split("/")[0].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock)


def http_request(path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    head = {"Host": "gateway", "Content-Type": "application/json",
            "Content-Length": str(len(data)), **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode() + data


def ws_handshake(path: str = "/v1/stream", headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = {"Host": "gateway", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


def ws_frame(payload: bytes | str, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
