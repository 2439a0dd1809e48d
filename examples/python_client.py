"""Stream over the gateway's WebSocket with the Python client: local pacing and acknowledgements.

    .venv/bin/python examples/python_client.py "Tell me a short story."

The client asks for `client` pacing, renders at the reader's pace with the same pacer the gateway
uses, and acknowledges what it has shown, so the engine's scheduler knows how far you have read.
"""

from __future__ import annotations

import asyncio
import os
import sys

from gateway.client import stream

MODEL = os.environ.get("ANDES_MODEL")  # None: the gateway's default model


async def main(question: str) -> None:
    messages = [{"role": "user", "content": question}]
    # No url: $ANDES_URL, else http://127.0.0.1:8080 (where `andes serve` listens).
    async with stream(messages=messages, model=MODEL, qoe={"tds": 6.0}, max_tokens=128) as s:
        async for text in s:
            print(text, end="", flush=True)
    print(f"\n[QoE {s.result.qoe:.3f}]")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Tell me a short story."))
