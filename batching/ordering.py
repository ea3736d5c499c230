"""A reorder buffer: results arrive in completion order, leave in input order."""

from __future__ import annotations

from batching.records import Result

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """Holds results until every earlier row is done, then releases them in order.

    The buffer itself does not bound its size: the pipeline does, by not reading
    further input while too many results wait here (see `pipeline`).

    >>> buf = ReorderBuffer(start=0)
    >>> buf.push(Result(index=1, id=1)); buf.pop_ready()
    []
    >>> buf.push(Result(index=0, id=0)); [r.index for r in buf.pop_ready()]
    [0, 1]
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._waiting: dict[int, Result] = {}

    @property
    def next_index(self) -> int:
        """The index of the first row not yet released."""
        return self._next

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, result: Result) -> None:
        if result.index < self._next or result.index in self._waiting:
            # Two results for one row would break the one-row-in, one-row-out
            # promise; this is a bug in the caller, never the user's input.
            raise ValueError(f"row {result.index} already has a result")
        self._waiting[result.index] = result

    def pop_ready(self) -> list[Result]:
        """Release the longest run of consecutive results from `next_index` on."""
        ready: list[Result] = []
        waiting = self._waiting
        while self._next in waiting:
            ready.append(waiting.pop(self._next))
            self._next += 1
        return ready
