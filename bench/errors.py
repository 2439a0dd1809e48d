"""The load generator's exceptions.

::

    BenchError                   anything ``andes bench`` reports as a one-line error
    ├── BenchConfigError         a bad option or input file (quotes the bad value)
    └── EndpointError            the endpoint cannot be used at all (unreachable, no model served)

A failure of one request is never an exception here: it is recorded on that request's
:class:`~bench.result.RequestRecord` and counted in the summary.
"""

from __future__ import annotations

__all__ = ["BenchConfigError", "BenchError", "EndpointError"]


class BenchError(Exception):
    """Base of every error the load generator raises on purpose."""


class BenchConfigError(BenchError, ValueError):
    """An option or input is invalid."""


class EndpointError(BenchError, RuntimeError):
    """The endpoint cannot serve the benchmark."""
