"""One engine kept running in a background thread, fed rows whenever they come.

The engine loop is the pipeline's (`pipeline.run_rows`) over `LiveChunks`, so rows
put here get everything a file's rows get: grouping by length, retries, isolation
of a row that fails its batch, engine restarts. The loop tops the engine up from
whatever has been put, so rows put by several callers share its steps, and it
never drains while more rows are waiting. Each row's result goes to `on_result`
(in the engine thread) as soon as it is known.

Two callers: `aio.BatchQueue` (rows from `submit()`) and the Ray replica
(`batching.ray.replica`: the rows of several Ray Data batches at once, on one engine).

>>> engine = LiveEngine(FakeEngine, config, on_result=print, on_failure=print)  # doctest: +SKIP
>>> engine.start().result(); engine.put(rows); engine.close(); engine.join()  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from batching.config import RunConfig
from batching.engine import Engine, EngineFactory
from batching.pipeline import run_rows
from batching.prefetch import Arrival, LiveChunks
from batching.readers import RowPlace
from batching.records import Result, Row
from batching.report import Report, ReportCollector
from batching.retry import RetryPolicy

__all__ = ["LiveEngine", "health_figures"]


def health_figures(
    run: Report, *, put: int, handed_over: int, left_engine: int, finished: int, running: bool
) -> dict[str, Any]:
    """A health check's figures for rows fed to a `LiveEngine`, as of now.

    total_batches: engine steps so far; avg_batch_size: requests running per step;
    avg_batch_duration_ms: time per step; total_requests: requests finished (ok or
    failed); queue_depth: requests put and waiting to go to the engine; in_flight:
    requests in the engine; running: whether requests are still accepted.

    >>> health_figures(Report(), put=5, handed_over=3, left_engine=1, finished=1,
    ...                running=True)["queue_depth"]
    2
    """
    return {
        "total_batches": run.batches,
        "total_requests": finished,
        "avg_batch_size": run.avg_batch_size,
        "avg_batch_duration_ms": run.avg_batch_duration_ms,
        "queue_depth": put - handed_over,
        "in_flight": handed_over - left_engine,
        "running": running,
    }


class LiveEngine:
    """`run_rows` in a daemon thread, over rows `put` from any thread.

    Rows must be put with consecutive indices from 0, each index once: the
    pipeline's reorder buffer waits for every index in turn. A caller that has its
    own numbering renumbers on the way in (see `batching.ray.replica`).

    A chunk goes to the engine when it holds `chunk_size` rows or its first row
    has waited `max_wait_s` (0: whatever has been put is taken at once).
    `eager_start` starts the engine in `start()`, so a wrong model fails there;
    otherwise it starts with the first row that needs it, as in a file's run.
    `on_failure` is called once, in the engine thread, if the loop stops on an
    error (the engine failed for good, or never started); nothing runs after it.
    `encode_ahead` is `run_rows`'s (False: what each step runs does not depend on
    thread timing).
    """

    def __init__(
        self,
        engine_factory: EngineFactory,
        config: RunConfig,
        *,
        on_result: Callable[[Result], None],
        on_failure: Callable[[BaseException], None],
        retry: RetryPolicy | None = None,
        report: ReportCollector | None = None,
        place: RowPlace | None = None,
        max_wait_s: float = 0.0,
        eager_start: bool = False,
        encode_ahead: bool = True,
    ) -> None:
        self._factory = engine_factory
        self._config = config
        self._on_result = on_result
        self._on_failure = on_failure
        self._retry = retry
        self._report = report
        self._place = place
        self._eager_start = eager_start
        self._encode_ahead = encode_ahead
        self._arrivals: queue.Queue[Arrival] = queue.Queue()
        self._chunks = _CountingChunks(
            self._arrivals, chunk_size=config.input.chunk_size, max_wait_s=max_wait_s
        )
        self._thread: threading.Thread | None = None

    @property
    def handed_over(self) -> int:
        """Rows the engine loop has taken so far (the rest are waiting to be taken)."""
        return self._chunks.handed_over

    def start(self) -> concurrent.futures.Future[None]:
        """Start the engine thread; the future is done once the engine is up (or
        at once without `eager_start`), or holds the error starting it raised."""
        if self._thread is not None:
            raise RuntimeError("the engine was started already")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="bizra-batch-engine", daemon=True
        )
        self._thread.start()
        return started

    def put(self, rows: Sequence[Row]) -> None:
        """Hand rows to the engine loop; callers on several threads must serialize
        their calls with the numbering of the rows (indices must arrive in order)."""
        self._arrivals.put((self._chunks.clock(), list(rows)))

    def close(self) -> None:
        """No more rows: the loop finishes those it has, closes the engine and stops."""
        self._arrivals.put((0.0, LiveChunks.END))

    def join(self, timeout: float | None = None) -> None:
        """Wait for the engine thread to end (at once when called from it: an
        owner's `__del__` may run there, when the garbage collector does)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _serve(self, started: concurrent.futures.Future[None]) -> None:
        engines: _FirstThen | None = None
        if self._eager_start:
            try:
                engines = _FirstThen(self._factory(), self._factory)
            except BaseException as exc:
                started.set_exception(exc)
                self._on_failure(exc)
                return
        started.set_result(None)
        try:
            run_rows(
                _Supply(self._chunks),
                _NoSink(),
                engines or self._factory,
                self._config,
                retry=self._retry,
                report=self._report,
                on_result=self._on_result,
                encode_ahead=self._encode_ahead,
                place=self._place,
            )
        except BaseException as exc:
            self._on_failure(exc)
        finally:
            if engines is not None:
                engines.close_unused()


class _CountingChunks(LiveChunks):
    """LiveChunks that count the rows handed to the engine loop."""

    def __init__(self, arrivals: queue.Queue[Arrival], *, chunk_size: int, max_wait_s: float):
        super().__init__(arrivals, chunk_size=chunk_size, max_wait_s=max_wait_s)
        self.handed_over = 0

    def clock(self) -> float:
        return self._clock()

    def poll(self, wait: bool) -> list[Row] | None:
        rows = super().poll(wait)
        if rows:
            self.handed_over += len(rows)
        return rows


class _Supply:
    def __init__(self, chunks: LiveChunks) -> None:
        self._chunks = chunks

    def chunks(self) -> LiveChunks:
        return self._chunks

    def estimated_total_rows(self) -> int | None:
        return None


class _NoSink:
    """Results go to their callers through `on_result`; nothing is written."""

    def write(self, results: Sequence[Result]) -> None:
        pass

    def flush(self, durable: bool = False) -> None:
        pass


class _FirstThen:
    """The engine `start()` made, then new ones from `factory` for restarts."""

    def __init__(self, first: Engine, factory: EngineFactory) -> None:
        self._first: Engine | None = first
        self._factory = factory

    def __call__(self) -> Engine:
        if self._first is not None:
            engine, self._first = self._first, None
            return engine
        return self._factory()

    def close_unused(self) -> None:
        """Close the first engine if no row ever needed it (the pipeline starts
        its engine on the first rows, and closes only engines it started)."""
        if self._first is not None:
            engine, self._first = self._first, None
            engine.close()
