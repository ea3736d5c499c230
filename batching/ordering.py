"""A reorder buffer: results arrive in completion order, leave in input order."""

from __future__ import annotations

from typing import Any

from batching.records import Result

__all__ = ["ReorderBuffer", "result_bytes"]

# Memory a finished row holds besides its text, measured with tracemalloc on 100k
# plain results kept in the buffer's dict: 274 bytes each with a 45-character output,
# so ~230 bytes of objects and dict slot. A logprob entry costs ~200 bytes (a small
# dict and its token string), and each alternative ~60 (a tuple of two).
_ROW_OVERHEAD_BYTES = 230
_LOGPROB_BYTES = 200
_ALTERNATIVE_BYTES = 60


def result_bytes(result: Result) -> int:
    """An estimate of the memory a finished row holds while it waits, in bytes.

    It counts characters as bytes (exact for ASCII text, which Python stores one byte
    a character; up to 4x low for other scripts), so bound the buffer generously.

    >>> result_bytes(Result(index=0, id=0, output="x" * 100))
    330
    """
    size = _ROW_OVERHEAD_BYTES
    output = result.output
    if isinstance(output, str):
        size += len(output)
    elif output is not None:
        size += sum(len(text) for text in output)
    if result.logprobs:
        size += _logprobs_bytes(result.logprobs)
    return size


def _logprobs_bytes(logprobs: list[Any]) -> int:
    size = 0
    for entry in logprobs:
        if isinstance(entry, list):  # one list per sample when n > 1
            size += _logprobs_bytes(entry)
        else:  # {"token", "logprob", "top_logprobs": [...]}
            size += _LOGPROB_BYTES + _ALTERNATIVE_BYTES * len(entry.get("top_logprobs") or ())
    return size


class ReorderBuffer:
    """Holds results until every earlier row is done, then releases them in order.

    It counts the bytes it holds (`held_bytes`, an estimate: `result_bytes`) and
    the most it held; it does not bound them itself: the pipeline does, by not
    reading further input while too much waits here (see `pipeline`).

    >>> buf = ReorderBuffer(start=0)
    >>> buf.push(Result(index=1, id=1)); buf.pop_ready()
    []
    >>> buf.held_bytes
    230
    >>> buf.push(Result(index=0, id=0)); [r.index for r in buf.pop_ready()]
    [0, 1]
    >>> buf.held_bytes, buf.peak_bytes, buf.peak_rows
    (0, 460, 2)
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._waiting: dict[int, tuple[Result, int]] = {}
        self.held_bytes = 0
        self.peak_bytes = 0
        self.peak_rows = 0

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
        size = result_bytes(result)
        self._waiting[result.index] = (result, size)
        self.held_bytes += size
        if self.held_bytes > self.peak_bytes:
            self.peak_bytes = self.held_bytes
        if len(self._waiting) > self.peak_rows:
            self.peak_rows = len(self._waiting)

    def pop_ready(self) -> list[Result]:
        """Release the longest run of consecutive results from `next_index` on."""
        ready: list[Result] = []
        waiting = self._waiting
        released = 0
        while self._next in waiting:
            result, size = waiting.pop(self._next)
            ready.append(result)
            released += size
            self._next += 1
        self.held_bytes -= released
        return ready
