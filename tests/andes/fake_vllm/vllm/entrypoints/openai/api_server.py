"""A small, real stand-in for ``python -m vllm.entrypoints.openai.api_server``.

``andes serve`` starts whatever ``vllm`` package comes first on its ``PYTHONPATH``; the process
tests put this one there, so a whole ``andes serve`` (guard, engine, gateway, slack channel) runs in
seconds instead of a minute. Like vLLM it

* serves ``/health``, ``/v1/models`` (owned by vllm) and streaming ``/v1/chat/completions`` on
  ``--host``/``--port``, under ``--served-model-name``;
* spawns a child of its own, as vLLM spawns its engine core, and does *not* stop it when it exits
  itself (harsher than vLLM: only the guard's group kill ends it);
* runs the slack channel's receiver when ``ANDES_SLACK_PORT`` is set, as the scheduler does.

It writes ``$ANDES_FAKE_ENGINE_RECORD`` (JSON: its pid, its parent's, the "engine core"'s, its
argv and ``ANDES_*`` environment) as it starts, then "loads the model" for
``$ANDES_FAKE_ENGINE_LOAD_S`` seconds (default 0) before it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from aiohttp import web

from slack.receiver import start_for_engine


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--served-model-name", default="fake-model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_known_args(argv)


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    words = [f"word{i} " for i in range(int(body.get("max_tokens") or 8))]
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": body.get("model")}
    for i, word in enumerate(words):
        delta = {"content": word} if i else {"role": "assistant", "content": word}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await resp.write(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
        await asyncio.sleep(0.01)
    end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    await resp.write(b"data: " + json.dumps({**base, "choices": [end]}).encode() + b"\n\n")
    usage = {"prompt_tokens": 3, "completion_tokens": len(words),
             "total_tokens": 3 + len(words)}
    await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode()
                     + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


def main() -> None:
    args, rest = _parse(sys.argv[1:])
    core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    slack = start_for_engine(os.environ, 0, sys.argv)
    record = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(),
              "core_pid": core.pid, "argv": sys.argv[1:], "rest": rest,
              "slack": slack is not None,
              "env": {k: v for k, v in os.environ.items() if k.startswith("ANDES_")}}
    path = os.environ.get("ANDES_FAKE_ENGINE_RECORD")
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    print(f"fake vLLM: serving {args.served_model_name} on {args.host}:{args.port}", flush=True)
    time.sleep(float(os.environ.get("ANDES_FAKE_ENGINE_LOAD_S", "0")))  # "loading the model"

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": args.served_model_name, "object": "model", "owned_by": "vllm"}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", _chat)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
