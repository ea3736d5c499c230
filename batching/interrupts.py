"""Stop requests (SIGINT, SIGTERM) that never cut a batch of results in half.

A signal is turned into an exception in the main thread, so a run blocked on a
slow stdin or inside a long engine step still stops at once. Inside `protected()`
(the pipeline handing finished rows to the writer) it is held until the block
ends: rows the run has finished are either all written and counted, or neither.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "install", "protected"]


class Interrupted(BaseException):
    """The run was asked to stop by a signal; `exit_code` is 128 + its number.

    A BaseException, like KeyboardInterrupt, so the pipeline's error handling
    (which catches Exception) never mistakes a stop request for an engine fault.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


_depth = 0
_pending: int | None = None


@contextmanager
def protected() -> Iterator[None]:
    """Hold signals that arrive inside this block until it ends.

    >>> with protected():
    ...     pass  # write and count a batch of results
    """
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise Interrupted(signum)


def install() -> Callable[[], None]:
    """Route SIGINT and SIGTERM through `protected()`; returns a function that undoes it.

    >>> restore = install()
    >>> restore()
    """
    previous = {
        signum: signal.signal(signum, _handle) for signum in (signal.SIGINT, signal.SIGTERM)
    }

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
