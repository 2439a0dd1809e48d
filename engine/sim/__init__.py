"""A trace-driven, virtual-time continuous-batching simulator for comparing scheduling policies.

One noun per module: :mod:`~engine.sim.workload` (what is asked), :mod:`~engine.sim.arrivals`
(when), :mod:`~engine.sim.profile` (how fast the hardware is), :mod:`~engine.sim.simulator` (the
engine), :mod:`~engine.sim.report` (what came out) and :mod:`~engine.sim.cli` (``andes sim``).
Nothing here imports torch, vllm, aiohttp or asyncio; policies are the same objects the vLLM
scheduler uses.
"""
