"""``andes bench``: replay a workload against an OpenAI-compatible endpoint, score QoE per request.

One noun per module: :mod:`~engine.bench.plan` (what to send and when),
:mod:`~engine.bench.sse` (the server-sent-events parser, sans-I/O), :mod:`~engine.bench.client`
(one streamed request, timed at the client), :mod:`~engine.bench.runner` (the open-loop load
generator), :mod:`~engine.bench.result` (what came back, scored) and :mod:`~engine.bench.cli`.

The load generator speaks HTTP only; it never imports vLLM, so it measures any engine (vLLM with or
without the Andes scheduler, the gateway, SGLang, TGI, llama.cpp) the same way.
"""
