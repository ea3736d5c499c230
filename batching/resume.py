"""Picking up an interrupted run, and keeping two runs off one output.

A resumed run re-reads the input from the start: the rows the earlier run already
wrote are checked against the output (same ids, same order) and skipped, so the
engine only sees the rest, and the output ends exactly as an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from batching.errors import OutputError, UsageError
from batching.protocols import RowSupply
from batching.records import Row

__all__ = ["OutputLock", "ResumedSupply"]


class OutputLock:
    """An exclusive, non-blocking lock on `<output>.lock` while a run writes `output`.

    A second run on the same output fails at once instead of interleaving rows. The
    lock is the kernel's (flock): it goes with the process, so a run killed with
    kill -9 leaves nothing that blocks the next one.

    >>> with OutputLock("results.jsonl"):
    ...     with OutputLock("results.jsonl"):  # what a second run on the output meets
    ...         pass
    Traceback (most recent call last):
    batching.errors.OutputError: results.jsonl: another bizra-batch run (pid ...) is writing
    it; wait for it to finish or choose another --output
    """

    def __init__(self, output_path: str) -> None:
        self.output_path = output_path
        self.path = f"{output_path}.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(
                f"{self.path}: cannot create the lock file ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"{self.output_path}: another bizra-batch run (pid {holder}) is writing it; "
                "wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        # Unlink before unlocking, so a run that starts now makes a fresh lock file.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class ResumedSupply:
    """Rows of `inner` from row `done` on, after checking rows before it against `ids`.

    `ids` yields the ids the output already holds, in order. A mismatch means the
    output belongs to another input: nothing is run and the user is told.

    >>> import io
    >>> from batching.config import InputConfig
    >>> from batching.readers import open_source
    >>> rows = open_source(InputConfig(path="-"), stdin=io.BytesIO(b'{"prompt": "a"}\\n' * 3))
    >>> supply = ResumedSupply(rows, done=2, ids=iter([0, 1]), output="out.jsonl")
    >>> [row.index for chunk in supply.chunks() for row in chunk]
    [2]
    """

    def __init__(
        self,
        inner: RowSupply,
        *,
        done: int,
        ids: Iterator[Any],
        output: str,
        same_id: Callable[[Any, Any], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.done = done
        self.ids = ids
        self.output = output
        # (written id, input id) -> whether they match; OpenAI lines hold ids as text.
        self.same_id = same_id or _same_id

    def chunks(self) -> Iterator[list[Row]]:
        checked = 0
        for chunk in self.inner.chunks():
            if checked < self.done:
                for row in chunk:
                    if row.index >= self.done:
                        break
                    self._check(row, next(self.ids, _MISSING))
                    checked += 1
                chunk = [row for row in chunk if row.index >= self.done]
            if chunk:
                yield chunk
        if checked < self.done:
            raise UsageError(
                f"{self.output}: holds {self.done} rows but the input has only {checked}; "
                "it is the output of another input: pass --overwrite to start again"
            )

    def _check(self, row: Row, written_id: Any) -> None:
        if written_id is _MISSING or not self.same_id(written_id, row.id):
            raise UsageError(
                f"{self.output}: row {row.index + 1} has id {written_id!r} but input row "
                f"{row.index + 1} has id {row.id!r}; the output belongs to another input: "
                "pass --overwrite to start again"
            )

    def estimated_total_rows(self) -> int | None:
        return self.inner.estimated_total_rows()


_MISSING = object()


def _same_id(written: Any, given: Any) -> bool:
    # JSON has one number type: an id 3 read back may be 3 or 3.0, never "3".
    return bool(written == given and isinstance(written, str) == isinstance(given, str))
