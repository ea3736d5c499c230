"""Read ahead, and rows that arrive at their own pace.

`PrefetchedSupply` (files): the next chunks are read and parsed in a thread while
the engine runs. Reading and validating a chunk takes milliseconds; done between
engine steps, that is time the engine sits idle. A thread keeps up to `depth`
chunks ready, so memory stays bounded. The parsing is Python and holds the GIL,
but the engine spends its step in kernels that release it (torch on CPU, CUDA on
GPU), which is when the reader thread runs.

`LiveSupply` (a pipe such as `tail -f queue.jsonl | bizra-batch run -`): the same
thread, but rows are handed over as they come instead of a full chunk at a time.
Its `LiveChunks` never makes the pipeline wait for input while the engine has
work, and hands over a partial chunk once its first row has waited `max_wait_s`,
so a row that arrives alone is answered in milliseconds, not at end of input.
`batching.aio` feeds the same `LiveChunks` from `submit()` calls.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Generic, TypeVar, cast

from batching.protocols import RowSupply
from batching.records import Row

__all__ = ["Arrival", "LiveChunks", "LiveSupply", "PrefetchedSupply", "ReadAhead"]

T = TypeVar("T")

_END = object()
# How often a producer blocked on a full queue checks whether the consumer quit.
_STOP_POLL_S = 0.1


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


# What travels from a producer to the consumer: when it was sent, and the rows, the
# end (_END) or the producer's error (_Raised).
Arrival = tuple[float, object]


class _ReaderThread:
    """`produce()` iterated in a daemon thread into a bounded queue of arrivals."""

    def __init__(
        self,
        produce: Callable[[], Iterable[object]],
        depth: int,
        clock: Callable[[], float],
        name: str = "bizra-batch-reader",
    ) -> None:
        self.arrivals: queue.Queue[Arrival] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._produce = produce
        self._clock = clock
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        # Polls `stop` so a consumer that quits early never leaves the thread
        # blocked on a full queue.
        while not self._stop.is_set():
            try:
                self.arrivals.put((self._clock(), item), timeout=_STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        items: Iterable[object] = ()
        try:
            items = self._produce()
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as error:  # handed over to the consumer's thread
            self._put(_Raised(error))
        finally:
            # A generator left early is closed here, in the thread that ran it, so
            # its own clean-up (another reader thread, a file) happens now.
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def close(self, join_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout=join_s)


class ReadAhead(Generic[T]):
    """What `produce()` yields, computed up to `depth` items ahead in a daemon thread.

    For work that finishes: `close` waits for the thread, which may be mid-item.
    An error the producer raises is raised again, in order, where the consumer
    would have met it. `ready()` says whether `next` would return at once, so a
    consumer with other work (stepping the engine) need not wait for this.

    >>> with ReadAhead(lambda: (x * x for x in range(4)), depth=2) as squares:
    ...     list(squares)
    [0, 1, 4, 9]
    """

    def __init__(
        self,
        produce: Callable[[], Iterable[T]],
        depth: int,
        *,
        name: str = "bizra-batch-reader",
    ) -> None:
        self._reader = _ReaderThread(produce, depth, time.monotonic, name)
        self._ended = False

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        _, item = self._reader.arrivals.get()
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._ended = True
            raise item.error
        return cast("T", item)

    def ready(self) -> bool:
        """Whether the next item (or the end, or an error) is here already."""
        return self._ended or not self._reader.arrivals.empty()

    def close(self) -> None:
        """Stop the producer, waiting for it (so it never touches its source after
        the consumer has closed it)."""
        self._ended = True
        self._reader.close(join_s=10)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PrefetchedSupply:
    """`inner`'s chunks, read `depth` chunks ahead in a background thread.

    For files, not pipes: closing waits for the thread, and a thread blocked
    reading a pipe cannot be stopped (`LiveSupply` is for pipes).
    An error the reader raises (an unreadable input, a resume mismatch) is raised
    again, in order, where the consumer would have met it.

    >>> import io
    >>> from batching.config import InputConfig
    >>> from batching.readers import open_source
    >>> data = io.BytesIO(b'{"prompt": "a"}\\n' * 3)
    >>> supply = open_source(InputConfig(path="-", chunk_size=2), stdin=data)
    >>> [len(chunk) for chunk in PrefetchedSupply(supply).chunks()]
    [2, 1]
    """

    def __init__(self, inner: RowSupply, depth: int = 2) -> None:
        self.inner = inner
        self.depth = depth

    def estimated_total_rows(self) -> int | None:
        return self.inner.estimated_total_rows()

    def chunks(self) -> Iterator[list[Row]]:
        with ReadAhead(self.inner.chunks, self.depth) as chunks:
            yield from chunks


class LiveChunks:
    """Chunks of rows that arrive at their own pace, cut by size or by waiting time.

    A chunk is handed over when it holds `chunk_size` rows, when its first row has
    waited `max_wait_s`, or at the end. Iterating blocks like any chunk iterator;
    `poll(wait=False)` never blocks, which lets the pipeline step the engine while
    the input is quiet.

    >>> from batching.records import Request
    >>> arrivals: queue.Queue[Arrival] = queue.Queue()
    >>> chunks = LiveChunks(arrivals, chunk_size=2, max_wait_s=60)
    >>> arrivals.put((time.monotonic(), [Request(index=0, id=0, line=1, prompt="a")]))
    >>> chunks.poll(wait=False)  # one row, waited less than max_wait_s: not due
    []
    >>> arrivals.put((time.monotonic(), [Request(index=1, id=1, line=2, prompt="b")]))
    >>> [row.prompt for row in chunks.poll(wait=False)]  # chunk_size rows: due
    ['a', 'b']
    """

    # What a producer sends, instead of rows, when there will be no more.
    END: ClassVar[object] = _END

    def __init__(
        self,
        arrivals: queue.Queue[Arrival],
        *,
        chunk_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
        if max_wait_s < 0:
            raise ValueError(f"max wait must not be negative, got {max_wait_s}")
        self._arrivals = arrivals
        self._chunk_size = chunk_size
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._on_close = on_close
        self._partial: list[Row] = []
        self._first_at = 0.0  # when the partial chunk's first row was sent
        self._ended = False
        self._error: BaseException | None = None

    def __iter__(self) -> LiveChunks:
        return self

    def __next__(self) -> list[Row]:
        rows = self.poll(wait=True)
        if rows is None:
            raise StopIteration
        return rows

    def poll(self, wait: bool) -> list[Row] | None:
        """The next chunk that is due; None at the end of input.

        Without `wait`, [] when none is due yet. With it, blocks until one is (a
        signal still interrupts the wait: the lock it blocks on is interruptible).
        An error from the producer is raised after the rows sent before it.
        """
        while True:
            due = self._due()
            if due is not None:
                return due
            if self._error is not None:
                error, self._error = self._error, None
                self._ended = True
                raise error
            if self._ended:
                return None
            timeout: float | None = None  # nothing waiting: block until a row comes
            if not wait:
                timeout = 0.0
            elif self._partial:
                timeout = max(0.0, self._first_at + self._max_wait_s - self._clock())
            try:
                if timeout == 0.0:
                    arrival = self._arrivals.get_nowait()
                else:
                    arrival = self._arrivals.get(timeout=timeout)
            except queue.Empty:
                if not wait:
                    return []
                continue  # the partial chunk's wait is over: `_due` hands it over
            self._take(arrival)
            # Take what else is here already, without waiting, up to a full chunk.
            while len(self._partial) < self._chunk_size and not self._ended:
                try:
                    self._take(self._arrivals.get_nowait())
                except queue.Empty:
                    break

    def _take(self, arrival: Arrival) -> None:
        sent_at, item = arrival
        if item is _END:
            self._ended = True
        elif isinstance(item, _Raised):
            self._error = item.error
            self._ended = True
        else:
            rows = cast("list[Row]", item)
            if rows and not self._partial:
                self._first_at = sent_at
            self._partial.extend(rows)

    def _due(self) -> list[Row] | None:
        partial = self._partial
        if not partial:
            return None
        if len(partial) >= self._chunk_size:
            # The rest arrived after the first row, so it has waited no longer.
            chunk, self._partial = partial[: self._chunk_size], partial[self._chunk_size :]
            return chunk
        if self._ended or self._clock() - self._first_at >= self._max_wait_s:
            self._partial = []
            return partial
        return None

    def close(self) -> None:
        """Stop the producer; rows not handed over yet are dropped.

        A thread blocked in `poll` waiting for rows is woken, and gets the end.
        """
        self._ended = True
        with contextlib.suppress(queue.Full):  # a full queue wakes it anyway
            self._arrivals.put_nowait((self._clock(), _END))
        if self._on_close is not None:
            self._on_close()


class LiveSupply:
    """`inner`'s rows as they arrive, read in a background thread: for pipes.

    `inner` should hand over rows as they come (a `JsonlSource` on `LiveLines`
    yields short chunks whenever the pipe is quiet); `chunks()` regroups them into
    chunks of up to `chunk_size` rows, each handed over at most `max_wait_s` after
    its first row arrived.

    >>> import io
    >>> from batching.config import InputConfig
    >>> from batching.readers import open_source
    >>> pipe = io.BytesIO(b'{"prompt": "a"}\\n' * 3)  # a real pipe delivers rows over time
    >>> supply = open_source(InputConfig(path="-"), stdin=pipe)
    >>> chunks = LiveSupply(supply, chunk_size=2, max_wait_s=60).chunks()
    >>> [len(chunk) for chunk in chunks]  # cut at chunk_size rows, or at the end
    [2, 1]
    """

    def __init__(
        self,
        inner: RowSupply,
        *,
        chunk_size: int,
        max_wait_s: float,
        depth: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.chunk_size = chunk_size
        self.max_wait_s = max_wait_s
        self.depth = depth
        self.clock = clock

    def estimated_total_rows(self) -> int | None:
        return self.inner.estimated_total_rows()

    def chunks(self) -> LiveChunks:
        reader = _ReaderThread(self.inner.chunks, self.depth, self.clock)
        return LiveChunks(
            reader.arrivals,
            chunk_size=self.chunk_size,
            max_wait_s=self.max_wait_s,
            clock=self.clock,
            # Not joined: the thread may be blocked reading a quiet pipe, and holds
            # no lock the interpreter needs at exit (see `LiveLines`).
            on_close=lambda: reader.close(join_s=0),
        )
