"""Stream a chat answer through the Andes gateway with the official `openai` client.

Start the stack first (`bash scripts/serve.sh`, or `andes serve`), then:

    .venv/bin/python examples/openai_stream.py "Why is the sky blue?"

The gateway paces the text at the reader's pace given in `qoe.tds` (tokens/s) and reports the
stream's measured QoE in the final chunk's extra `andes` field.
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI

GATEWAY = os.environ.get("ANDES_URL", "http://127.0.0.1:8080")
MODEL = os.environ.get("ANDES_MODEL", "smollm2-135m-instruct")

client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=os.environ.get("ANDES_API_KEY", "unused"))
question = " ".join(sys.argv[1:]) or "What is the capital of France?"

stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": question}],
    max_tokens=128,
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"qoe": {"ttft": 1.0, "tds": 8.0}, "pacing": "server"},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    extra = (chunk.model_extra or {}).get("andes")
    if extra:
        print(f"\n[QoE {extra['qoe']:.3f}, TTFT {extra['ttft_s']:.2f} s]")
    if chunk.usage:
        print(f"[{chunk.usage.completion_tokens} tokens]")
