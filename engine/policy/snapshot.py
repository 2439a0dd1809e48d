"""The live requests as an adapter keeps them between steps, with a log of what changed.

A policy that keeps state per request (``andes`` keeps numpy columns) reads only what changed
since its last step instead of re-reading every view: at 512 running and 2,000 waiting requests a
full re-read alone costs about a millisecond of CPython. The adapter's side of the contract:

* :meth:`Snapshot.add` / :meth:`Snapshot.remove` when a request arrives or ends;
* :meth:`Snapshot.deliver` for tokens delivered (it feeds the view's tracker);
* :meth:`Snapshot.touch` after changing anything else in a view (state, KV blocks, token counts,
  slack report, cached tokens).

The log is bounded: past :data:`MAX_LOG` entries it is dropped and marked ``overflowed``, and the
consumer re-reads everything (a policy that never reads the log costs nothing more than that).
A :class:`Snapshot` is also a plain ``Sequence[RequestView]`` in arrival order, so policies that
look at every request each step need nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from engine.policy.base import RequestView

__all__ = ["MAX_LOG", "Changes", "Snapshot"]

MAX_LOG = 1 << 16  # log entries kept before the consumer is told to re-read everything


@dataclass(slots=True)
class Changes:
    """What changed in a snapshot since the last :meth:`Snapshot.take_changes`."""

    added: list[str] = field(default_factory=list)  # arrived (in order)
    removed: set[str] = field(default_factory=set)  # ended
    touched: set[str] = field(default_factory=set)  # any field of the view changed
    # (req_id, now_s, count): tokens delivered to a view's tracker, in order.
    delivered: list[tuple[str, float, int]] = field(default_factory=list)
    overflowed: bool = False  # the log was dropped: re-read every view

    def __len__(self) -> int:
        return len(self.added) + len(self.removed) + len(self.touched) + len(self.delivered)


class Snapshot(Sequence[RequestView]):
    """Every live request (in arrival order) and the change log (module docstring)."""

    def __init__(self) -> None:
        self._views: dict[str, RequestView] = {}
        self._list: list[RequestView] | None = []
        self._changes = Changes()
        self._entries = 0  # log entries since the last take_changes

    # -- the adapter's side -----------------------------------------------------------------------

    def add(self, view: RequestView) -> None:
        if view.req_id in self._views:
            raise ValueError(f"two live requests share the id {view.req_id!r}")
        self._views[view.req_id] = view
        self._list = None
        self._log().added.append(view.req_id)

    def remove(self, req_id: str) -> RequestView | None:
        view = self._views.pop(req_id, None)
        if view is not None:
            self._list = None
            self._log().removed.add(req_id)
        return view

    def touch(self, req_id: str) -> None:
        self._log().touched.add(req_id)

    def deliver(self, req_id: str, now_s: float, count: int = 1) -> None:
        """``count`` tokens of ``req_id`` delivered at ``now_s``: fed to its tracker and logged."""
        self._views[req_id].tracker.add(now_s, count)
        self._log().delivered.append((req_id, now_s, count))

    # -- the policy's side ------------------------------------------------------------------------

    def take_changes(self) -> Changes:
        """The changes since the last call (and a fresh, empty log)."""
        changes, self._changes, self._entries = self._changes, Changes(), 0
        return changes

    def get(self, req_id: str) -> RequestView | None:
        return self._views.get(req_id)

    def __contains__(self, req_id: object) -> bool:
        return req_id in self._views

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self) -> Iterator[RequestView]:
        return iter(self._views.values())

    @overload
    def __getitem__(self, index: int) -> RequestView: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RequestView]: ...
    def __getitem__(self, index: int | slice) -> RequestView | Sequence[RequestView]:
        if self._list is None:
            self._list = list(self._views.values())
        return self._list[index]

    def _log(self) -> Changes:
        self._entries += 1
        if self._entries > MAX_LOG:  # nobody reads it: start again, and say so
            self._changes, self._entries = Changes(overflowed=True), 0
        return self._changes
