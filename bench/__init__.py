"""``andes bench``: replay a workload against an OpenAI-compatible endpoint, score QoE per request.

One noun per module: :mod:`~bench.plan` (what to send and when),
:mod:`~bench.readers` (who reads each stream, and the QoE on the reader's clock),
:mod:`~bench.client` (one streamed request over HTTP, timed at the client, its events parsed by
the gateway's :mod:`gateway.sse`), :mod:`~bench.ws_client` (one request
over the Andes gateway's WebSocket, read by its reader), :mod:`~bench.reader_slack` (the same
readers as the simulator's client model), :mod:`~bench.runner` (the open-loop load
generator), :mod:`~bench.result` (what came back, scored) and :mod:`~bench.cli`. Beside them,
for tests and benchmarks: :mod:`~bench.scripted_engine` (an OpenAI-compatible engine whose timing
follows a script) and :mod:`~bench.snapshots` (random policy snapshots).

The load generator never imports vLLM: over HTTP it measures any engine (vLLM with or without the
Andes scheduler, the gateway, SGLang, TGI, llama.cpp) the same way; over the WebSocket it needs the
Andes gateway in front of the engine.
"""
