"""One replica: a Ray Data actor that keeps one engine fed across batches.

Ray Data hands the actor several batches at once (`__call__` is a coroutine, and
the actor runs up to `concurrent_batches` of them; see `batching.ray.runner`). All of them
go to one `LiveEngine`, the pipeline's engine loop (`pipeline.run_rows`) running
for the actor's whole life in a background thread. So the engine is topped up
from the next batch while the last rows of one are still decoding, and never
drains between batches; tokenizing, grouping, retries, poison-row isolation and
engine restarts behave as in the single-process path. (Running each batch to its
end before taking the next cost 1.58x the single-process run's processing time on
the tiny model, 4.2x on the fake engine: see `benchmarks/ray_overhead.py`.)

Rows are renumbered on the way in: the engine loop's reorder buffer waits for
every index in turn, and a replica sees only some of the input's batches. Each
result goes back to its batch under its own index; a batch returns once every row
of it has a result, as Arrow columns (`batching.ray.results`), with the engine figures of
the replica since the last batch it returned.

If the actor process dies (killed, node lost), Ray restarts it and runs its
unfinished batches again, there or on another replica; a batch's results reach
the driver only when the whole batch succeeded, so no row is lost or written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import cast

import pyarrow as pa

from batching.config import RunConfig
from batching.engine import EngineFactory
from batching.live_engine import LiveEngine
from batching.ray.results import encode_results
from batching.ray.source import decode_rows
from batching.records import InvalidRow, Result
from batching.report import ENGINE_WORK_FIGURES, Report, ReportCollector
from batching.retry import RetryPolicy

__all__ = ["BatchStats", "EngineReplica"]

# Seconds `__del__` waits for the engine loop to close the engine.
_CLOSE_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one replica did since the last batch it returned, for the driver's report.

    `report` holds the engine's figures for that span (steps, restarts, start-up);
    `busy_seconds` the time the replica held at least one batch, start-up excluded.
    `ready_at` (`time.time()`, on its first batch only) lets the driver count the
    time Ray took to start the replica's process and actor as start-up.
    Batches overlap on one engine, so these are shares of the replica's time, not
    of one batch's: summed over a replica's batches they give its totals.
    """

    replica: str
    report: Report
    # Rows of this batch the engine ran: invalid ones never reach an engine (they
    # only pass through to keep their place in the output).
    rows_run: int = 0
    output_tokens: int = 0
    busy_seconds: float = 0.0
    # Wall-clock time the replica was ready for batches: on its first batch only.
    ready_at: float | None = None


class EngineReplica:
    """The callable class `map_batches` runs in each actor of the pool.

    `encode_ahead=False` encodes each batch on the engine thread, between steps,
    so which rows share a step does not depend on thread timing (for tests).

    >>> ds.map_batches(EngineReplica, fn_constructor_args=(FakeEngine, config),
    ...                compute=ray.data.ActorPoolStrategy(
    ...                    size=2, max_concurrent_calls_per_actor=2))  # doctest: +SKIP
    """

    def __init__(
        self,
        engine_factory: EngineFactory,
        config: RunConfig,
        retry: RetryPolicy | None = None,
        *,
        encode_ahead: bool = True,
    ) -> None:
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()  # the numbering, the waiting rows, the busy clock
        self._next_index = 0
        self._waiting: dict[int, tuple[_Batch, int]] = {}
        self._failure: BaseException | None = None
        self._busy = _BusyClock()
        # The replica's engine figures never leave it whole: each batch takes the
        # part since the one before. No GPU sampling: the driver samples its own.
        self._report = ReportCollector(gpu_sampler=lambda: None)
        self._report.start()
        self._last_report = Report()
        self._ready_at: float | None = time.time()
        self._engine = LiveEngine(
            engine_factory,
            config,
            on_result=self._on_result,
            on_failure=self._on_failure,
            retry=retry,
            report=self._report,
            # Each batch is a chunk as read: take it at once, whole.
            max_wait_s=0.0,
            encode_ahead=encode_ahead,
        )
        self._engine.start()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = sorted(decode_rows(batch), key=lambda row: row.index)
        loop = asyncio.get_running_loop()
        ran = sum(not isinstance(row, InvalidRow) for row in rows)
        pending = _Batch([row.index for row in rows], ran, loop, loop.create_future())
        if not rows:
            return encode_results([], [], None)
        with self._lock:
            if self._failure is not None:
                raise self._failure
            self._busy.enter()
            first = self._next_index
            self._next_index += len(rows)
            for position in range(len(rows)):
                self._waiting[first + position] = (pending, position)
            # Under the lock: the engine loop must get the indices in order.
            self._engine.put(
                [dataclasses.replace(row, index=first + i) for i, row in enumerate(rows)]
            )
        stats = await pending.done
        # Every row has its result once the batch is done.
        return encode_results(pending.indices, cast("list[Result]", pending.results), stats)

    def _on_result(self, result: Result) -> None:
        # In the engine thread, the only one that writes a batch's results.
        with self._lock:
            batch, position = self._waiting.pop(result.index)
        batch.results[position] = result
        batch.left -= 1
        if batch.left == 0:
            stats = self._batch_stats(batch)
            _settle(batch, value=stats)

    def _batch_stats(self, batch: _Batch) -> BatchStats:
        """The batch's rows and tokens, and the replica's work since the last batch.

        In the engine thread, which alone writes the report collector: reading it
        from another thread could catch a dict mid-update.
        """
        report = self._report.finish()
        part = _since(report, self._last_report)
        self._last_report = report
        with self._lock:
            busy = self._busy.leave()
        results = batch.results
        ready_at, self._ready_at = self._ready_at, None
        return BatchStats(
            self._name,
            part,
            rows_run=batch.rows_run,
            output_tokens=sum(r.completion_tokens or 0 for r in results if r is not None),
            busy_seconds=max(0.0, busy - (part.engine_startup_seconds or 0.0)),
            ready_at=ready_at,
        )

    def _on_failure(self, exc: BaseException) -> None:
        # The engine failed for good: every batch waiting fails with its error
        # (ours, a BatchError the driver reports), and so does every later one.
        with self._lock:
            self._failure = exc
            batches = {id(batch): batch for batch, _ in self._waiting.values()}
            self._waiting.clear()
        for batch in batches.values():
            _settle(batch, error=exc)

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)  # None if __init__ failed early
        if engine is not None:
            engine.close()
            engine.join(_CLOSE_WAIT_S)


@dataclass(eq=False, slots=True)
class _Batch:
    """One `__call__`'s rows, by their own indices, and their results as they come."""

    indices: list[int]
    rows_run: int
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[BatchStats]
    results: list[Result | None] = field(default_factory=list)
    left: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.indices)
        self.left = len(self.indices)


def _settle(
    batch: _Batch, *, value: BatchStats | None = None, error: BaseException | None = None
) -> None:
    """Settle the batch's future from the engine thread."""

    def settle() -> None:
        if batch.done.done():  # cancelled: Ray Data gave up on the batch
            return
        if error is not None:
            batch.done.set_exception(error)
        else:
            batch.done.set_result(value)  # type: ignore[arg-type]

    # A loop closed meanwhile has no one left to tell.
    with contextlib.suppress(RuntimeError):
        batch.loop.call_soon_threadsafe(settle)


class _BusyClock:
    """Seconds during which the replica held at least one batch."""

    def __init__(self) -> None:
        self._held = 0
        self._since = 0.0
        self._total = 0.0
        self._reported = 0.0

    def enter(self) -> None:
        if self._held == 0:
            self._since = time.perf_counter()
        self._held += 1

    def leave(self) -> float:
        """A batch is done; the busy seconds since the last `leave`."""
        now = time.perf_counter()
        busy = self._total + (now - self._since)
        self._held -= 1
        self._total, self._since = busy, now
        part, self._reported = busy - self._reported, busy
        return part


def _since(now: Report, before: Report) -> Report:
    """The engine figures `now` adds to `before` (both from one collector)."""
    startup = (now.engine_startup_seconds or 0.0) - (before.engine_startup_seconds or 0.0)
    return Report(
        **{name: getattr(now, name) - getattr(before, name) for name in ENGINE_WORK_FIGURES},
        engine_startup_seconds=startup or None,
        oom_window=now.oom_window if now.oom_backoffs > before.oom_backoffs else None,
        sequence_seconds=(
            None
            if now.sequence_seconds is None
            else now.sequence_seconds - (before.sequence_seconds or 0.0)
        ),
        engine_capacity=now.engine_capacity,
    )
