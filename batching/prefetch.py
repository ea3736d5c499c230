"""Read ahead: the next chunks are read and parsed in a thread while the engine runs.

Used for files, not pipes: a thread blocked reading a pipe cannot be stopped.
Reading and validating a chunk takes milliseconds; done between engine steps, that
is time the engine sits idle. A thread keeps up to `depth` chunks ready, so memory
stays bounded. The parsing is Python and holds the GIL, but the engine spends its
step in kernels that release it (torch on CPU, CUDA on GPU), which is when the
reader thread runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import cast

from batching.protocols import RowSupply
from batching.records import Row

__all__ = ["PrefetchedSupply"]

_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchedSupply:
    """`inner`'s chunks, read `depth` chunks ahead in a background thread.

    An error the reader raises (an unreadable input, a resume mismatch) is raised
    again, in order, where the consumer would have met it.

    >>> for chunk in PrefetchedSupply(supply).chunks():  # doctest: +SKIP
    ...     run(chunk)
    """

    def __init__(self, inner: RowSupply, depth: int = 2) -> None:
        self.inner = inner
        self.depth = depth

    def estimated_total_rows(self) -> int | None:
        return self.inner.estimated_total_rows()

    def chunks(self) -> Iterator[list[Row]]:
        ready: queue.Queue[object] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: object) -> bool:
            # Polls `stop` so a consumer that quits early never leaves the thread
            # blocked on a full queue.
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for chunk in self.inner.chunks():
                    if not put(chunk):
                        return
                put(_END)
            except BaseException as error:  # handed over to the consumer's thread
                put(_Raised(error))

        thread = threading.Thread(target=read, name="bizra-batch-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield cast("list[Row]", item)
        finally:
            stop.set()
            # A file read finishes in moments; waiting means the reader never
            # touches the source after its owner has closed it.
            thread.join(timeout=10)
