"""The simulator's exceptions.

::

    SimError                     anything the simulator reports as a user-facing error
    ├── WorkloadError            a workload file is unreadable or malformed
    ├── ProfileError             a latency profile is malformed (names file and field)
    └── SimulationError          the run cannot proceed (a request can never fit, a policy stalls)

``andes sim`` prints any :class:`SimError` as one line and exits with status 2.
"""

from __future__ import annotations

__all__ = ["ProfileError", "SimError", "SimulationError", "WorkloadError"]


class SimError(Exception):
    """Base of every error the simulator raises on purpose."""


class WorkloadError(SimError, ValueError):
    """A workload file is unreadable or malformed."""


class ProfileError(SimError, ValueError):
    """A latency profile is malformed."""


class SimulationError(SimError, RuntimeError):
    """The simulation cannot make progress."""
