"""What the engine supports passes through the gateway, with the official ``openai`` client against
a real gateway in front of the scripted engine: tools with streamed tool-call deltas (text paced,
tool-call and reasoning deltas at once and in order), ``n`` > 1, logprobs, the fields the engine
reads as they are, and the engine's own errors in the gateway's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import websockets

from bench.scripted_engine import Script

MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ARGS = json.dumps({"city": "Paris", "unit": "celsius", "detail": "hourly"})


@pytest.fixture
async def sdk(gateway: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, pointed at the gateway."""
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused",
                                  max_retries=0) as c:
        yield c


async def test_tool_calls_stream_through_in_order_after_the_paced_text(upstream, sdk) -> None:
    upstream.script = Script(tokens=["Let", " me", " check", "."], reasoning=["The user ", "asks."],
                             tool_calls=[("get_weather", ARGS)])
    events: list[tuple[str, Any]] = []
    # The reader's pace is one token every 5 s: were the tool call paced like text, or held
    # behind the paced text, this stream would take 20 s; the bound below is half of that.
    async with asyncio.timeout(10):
        stream = await sdk.chat.completions.create(
            model="test-model", messages=MSGS, tools=TOOLS, tool_choice="auto", stream=True,
            extra_body={"qoe": {"tds": 0.2}, "pacing": "server"})
        async for chunk in stream:
            for choice in chunk.choices:
                delta = choice.delta
                extra = delta.model_extra or {}
                if extra.get("reasoning_content"):
                    events.append(("reasoning", extra["reasoning_content"]))
                if delta.content:
                    events.append(("text", delta.content))
                for call in delta.tool_calls or ():
                    events.append(("tool", call))
                if choice.finish_reason:
                    events.append(("finish", choice.finish_reason))
    body = upstream.records[0].body
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    kinds = [k for k, _ in events]
    # In order: the reasoning, the text, the tool call, the finish.
    assert kinds == sorted(kinds, key=["reasoning", "text", "tool", "finish"].index), kinds
    assert "".join(v for k, v in events if k == "reasoning") == "The user asks."
    assert "".join(v for k, v in events if k == "text") == "Let me check."
    calls = [v for k, v in events if k == "tool"]
    assert calls[0].id == "call_0" and calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments or "" for c in calls) == ARGS
    assert len(calls) > 2  # the fragments as the engine sent them, not coalesced
    assert events[-1] == ("finish", "tool_calls")


async def test_tool_calls_in_one_json_answer(gateway, upstream, sdk) -> None:
    upstream.script = Script(tokens=[], reasoning=["Think", "ing."],
                             tool_calls=[("get_weather", ARGS), ("get_time", "{}")])
    answer = await sdk.chat.completions.create(
        model="test-model", messages=MSGS, tools=TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_0", "get_weather", ARGS), ("call_1", "get_time", "{}")]
    assert (choice.message.model_extra or {})["reasoning_content"] == "Thinking."


async def test_n_choices_stream_each_at_the_readers_pace(gateway, upstream, sdk) -> None:
    upstream.script = Script(tokens=["a ", "b ", "c "])
    stream = await sdk.chat.completions.create(
        model="test-model", messages=MSGS, n=3, stream=True, extra_body={"qoe": {"tds": 100}})
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "a b c ", 1: "a#1 b#1 c#1 ", 2: "a#2 b#2 c#2 "}
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    assert upstream.records[0].body["n"] == 3


async def test_n_choices_in_one_json_answer(gateway, upstream, sdk) -> None:
    upstream.script = Script(tokens=["x ", "y "])
    answer = await sdk.chat.completions.create(model="test-model", messages=MSGS, n=2)
    assert [(c.index, c.message.content, c.finish_reason) for c in answer.choices] == [
        (0, "x y ", "stop"), (1, "x#1 y#1 ", "stop")]


async def test_chat_logprobs_travel_with_their_tokens(gateway, upstream, sdk) -> None:
    upstream.script = Script(tokens=["The", " sky", " is", " blue", "."])
    stream = await sdk.chat.completions.create(
        model="test-model", messages=MSGS, logprobs=True, top_logprobs=2, stream=True,
        extra_body={"qoe": {"tds": 100}, "pacing": "server"})
    text, entries = "", []
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                entries += choice.logprobs.content or []
            else:  # only the finish chunk has none
                assert not choice.delta.content
    assert text == "The sky is blue."
    assert [e.token for e in entries] == ["The", " sky", " is", " blue", "."]
    assert all(len(e.top_logprobs) == 2 for e in entries)
    answer = await sdk.chat.completions.create(
        model="test-model", messages=MSGS, logprobs=True)
    assert [e.token for e in answer.choices[0].logprobs.content] == [e.token for e in entries]


async def test_completions_logprobs(gateway, upstream, sdk) -> None:
    upstream.script = Script(tokens=["one", " two", " three"])
    answer = await sdk.completions.create(model="test-model", prompt="count",
                                                      logprobs=1)
    lp = answer.choices[0].logprobs
    assert answer.choices[0].text == "one two three"
    assert lp.tokens == ["one", " two", " three"] and lp.text_offset == [0, 3, 7]
    assert len(lp.token_logprobs) == 3 and len(lp.top_logprobs) == 3


async def test_engine_fields_reach_the_engine_as_sent(gateway, upstream, sdk) -> None:
    fields = {"response_format": {"type": "json_object"}, "seed": 7, "stop": ["\n\n", "END"],
              "user": "reader-42", "frequency_penalty": 0.5, "logit_bias": {"50256": -100}}
    await sdk.chat.completions.create(model="test-model", messages=MSGS, **fields)
    body = upstream.records[0].body
    assert {k: body[k] for k in fields} == fields
    # ... and over the WebSocket: stop and seed as start fields, the rest in extra_body.
    async with websockets.connect(gateway.ws_url, subprotocols=["andes.v1.json"]) as ws:
        await ws.send(json.dumps({"type": "start", "messages": MSGS, "stop": ["END"], "seed": 7,
                                  "extra_body": {"response_format": {"type": "json_object"},
                                                 "user": "reader-42"}}))
        while json.loads(await ws.recv())["type"] != "done":
            pass
    body = upstream.records[1].body
    assert (body["stop"], body["seed"], body["response_format"], body["user"]) == (
        ["END"], 7, {"type": "json_object"}, "reader-42")


VLLM_ERRORS = [
    pytest.param(  # vLLM's own validation: the parameter suffix
        {"message": "`top_logprobs` must be a positive value or -1. (parameter=top_logprobs, "
                    "value=-5)", "type": "BadRequestError", "param": "top_logprobs", "code": 400},
        {"top_logprobs": -5, "logprobs": True},
        "`top_logprobs` must be a positive value or -1.", "top_logprobs", id="parameter"),
    pytest.param(  # pydantic through FastAPI: a Python repr of each error
        {"message": "1 validation error:\n  {'type': 'bool_parsing', 'loc': ('body', "
                    "'logprobs'), 'msg': 'Input should be a valid boolean, unable to interpret "
                    "input', 'input': 'maybe'}", "type": "Bad Request", "param": "body.logprobs",
         "code": 400},
        {"logprobs": "maybe"},
        "logprobs: Input should be a valid boolean, unable to interpret input", "logprobs",
        id="pydantic"),
    pytest.param(  # no param from the engine: the one request field its message quotes
        {"message": "'max_tokens' or 'max_completion_tokens' is too large: 900. This model's "
                    "maximum context length is 512 tokens.", "type": "BadRequestError",
         "param": None, "code": 400},
        {"max_tokens": 900},
        "'max_tokens' or 'max_completion_tokens' is too large: 900. This model's maximum "
        "context length is 512 tokens.", "max_tokens", id="quoted"),
]


@pytest.mark.parametrize(("engine_error", "fields", "message", "param"), VLLM_ERRORS)
async def test_engine_errors_reach_the_client_in_the_gateways_shape(
        gateway, upstream, sdk, engine_error, fields, message, param) -> None:
    upstream.script = Script(status=400, error=engine_error)
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="test-model", messages=MSGS,
                                                      extra_body=fields)
    error = info.value.body
    assert error == {"message": message, "type": "invalid_request_error", "param": param,
                     "code": None}
    assert info.value.param == param


async def test_engine_refusals_are_not_engine_failures_in_the_metrics(
        gateway, upstream, sdk) -> None:
    upstream.queue = [Script(status=400), Script(status=500)]
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            await sdk.chat.completions.create(model="test-model", messages=MSGS)
    async with aiohttp.ClientSession() as s, s.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    failures = [line for line in text.splitlines()
                if line.startswith("andes_gateway_upstream_errors_total{")]
    # The engine's 500 is its failure; its 400 is the client's error, relayed.
    assert failures == ['andes_gateway_upstream_errors_total{kind="status",model="test-model"} '
                        '1.0'], failures
    assert 'andes_gateway_requests_total{route="/v1/chat/completions",status="400"} 1.0' in text


async def test_an_engine_500_is_an_upstream_error_object(gateway, upstream, sdk) -> None:
    upstream.script = Script(status=500, error={"message": "CUDA out of memory",
                                                "type": "InternalServerError", "code": 500})
    with pytest.raises(openai.InternalServerError) as info:
        await sdk.chat.completions.create(model="test-model", messages=MSGS)
    assert info.value.body == {"message": "CUDA out of memory", "type": "upstream_error",
                               "param": None, "code": None}


async def test_continuous_usage_counts_what_was_delivered(gateway, upstream, sdk) -> None:
    # vLLM's continuous_usage_stats through the gateway: a load generator counts tokens by it
    # (andes bench does), so it must count what reached the reader, chunk by chunk.
    upstream.script = Script(tokens=[f"w{i} " for i in range(12)])
    async with aiohttp.ClientSession() as s, s.post(gateway.url + "/v1/completions", json={
            "model": "test-model", "prompt": "go", "stream": True, "qoe": {"tds": 100},
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}) as resp:
        raw = (await resp.read()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines()
              if line.startswith("data: {")]
    counted = 0
    for chunk in chunks:
        if chunk["choices"] and chunk["choices"][0]["text"]:
            assert chunk["usage"]["prompt_tokens"] == 7  # the engine's own count
            assert chunk["usage"]["completion_tokens"] > counted
            counted = chunk["usage"]["completion_tokens"]
    assert counted == 12 and chunks[-1]["usage"]["completion_tokens"] == 12
    assert upstream.records[0].body["stream_options"] == {"continuous_usage_stats": True,
                                                          "include_usage": True}
