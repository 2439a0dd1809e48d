"""The dependency-free core that the engine and the gateway both import.

Standard library only (no numpy, no aiohttp, no vLLM): importing it costs a few milliseconds, so
the gateway can use the QoE model and the slack record without loading the scheduler.

* :mod:`core.qoe` — the QoE model: the exact score, the O(1) tracker, the horizon predictors.
* :mod:`core.slack` — :class:`~core.slack.SlackRecord`, one stream's delivery as the gateway
  measures it and the scheduler reads it, and the one definition of *slack*.
"""
