"""A queue worker: requests from a Redis stream through the engine, results back.

Producers `XADD` requests to a stream; any number of workers (one per GPU) read it
through one consumer group, so each entry goes to one worker, and scaling out is
starting another worker. Each result is written to the results stream (and, under
`--result-keys`, as `result:<id>`), and only then is its entry acknowledged: a
worker that dies loses nothing, its entries stay pending until a live worker
claims them (`--claim-idle-ms`). An entry delivered more than `--max-deliveries`
times (it killed every worker that took it) goes to the dead-letter stream.

The engine side is `live_engine.LiveEngine`, as for `aio.BatchQueue` and the Ray
replica, not `run_rows` over a Redis-backed RowSupply/ResultSink: LiveEngine is
`run_rows` already (the same loop, grouping, retries and poison-row isolation, a
partial batch sent after `--max-wait-ms`), and its `on_result` sees each result
as it finishes. A ResultSink would get results through the pipeline's reorder
buffer, in input order: one long generation would hold back, unacknowledged,
every entry read after it, though a queue has no order to keep. The reorder
buffer still runs inside (it feeds the report, which counts rows in order, and
pauses reading when a slow row holds `reorder_buffer_bytes` behind it), but
results reach Redis as they finish.

Three threads: this one reads entries (XREADGROUP COUNT, so a batch is one round
trip) and claims dead workers' entries, the engine thread runs them, and a writer
thread writes the results that have finished since its last write in one call
(see `stream`: acknowledge and write, atomically, once per entry).

>>> worker = QueueWorker(stream, FakeEngine, config, WorkerSettings(drain=True))  # doctest: +SKIP
>>> report = worker.run()  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batching.config import RunConfig
from batching.engine import EngineFactory
from batching.errors import UsageError
from batching.live_engine import LiveEngine, health_figures
from batching.protocols import ProgressSink
from batching.records import Result
from batching.redis_queue.entries import Entry, entry_place, entry_row, result_fields
from batching.redis_queue.figures import QueueFigures, WorkerReport
from batching.redis_queue.stream import QueueCounts, RedisQueueError, RedisStream
from batching.report import ReportCollector
from batching.retry import RetryPolicy

__all__ = ["QueueWorker", "WorkerSettings"]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the worker treats the queue (the engine and batching are the `RunConfig`'s).

    `result_ttl_s`: also write each result as `SET <prefix><id>` expiring after so
    many seconds (None: only the results stream). `max_held`: entries taken and not
    yet acknowledged at most (None: twice the batch size), so a worker never
    hoards entries another could run. `read_block_ms`: the longest a read waits
    for a new entry, which bounds how long a stop request waits.

    >>> WorkerSettings(max_deliveries=0)
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --max-deliveries: expected an integer >= 1, found 0
    """

    drain: bool = False
    claim_idle_ms: int = 60_000
    max_deliveries: int = 3
    result_ttl_s: int | None = None
    max_held: int | None = None
    read_block_ms: int = 250

    def __post_init__(self) -> None:
        for name, value, least in (
            ("--max-deliveries", self.max_deliveries, 1),
            ("--claim-idle-ms", self.claim_idle_ms, 0),
            ("--result-ttl", self.result_ttl_s, 1),
            ("max_held", self.max_held, 1),
            ("read_block_ms", self.read_block_ms, 1),
        ):
            if value is not None and value < least:
                raise UsageError(f"{name}: expected an integer >= {least}, found {value}")


class QueueWorker:
    """Runs a stream's requests until stopped (`request_stop`), or until the queue is
    empty with `settings.drain`; `run()` returns the report.

    `retry` is the engine rows' (`run_rows`'s); Redis calls have their own.
    Raises what starting the engine raises, `EngineFailedError` if the engine keeps
    dying, `RedisQueueError` if Redis stays unreachable: the entries held then
    stay pending, for another worker to claim.
    """

    def __init__(
        self,
        stream: RedisStream,
        engine_factory: EngineFactory,
        config: RunConfig,
        settings: WorkerSettings,
        *,
        progress: ProgressSink | None = None,
        report: ReportCollector | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._config = config
        self._settings = settings
        self._progress = progress
        self._clock = clock
        self._collector = report or ReportCollector()
        self._collector.start()  # health() may be asked before the first entry
        self._max_held = settings.max_held or 2 * config.input.chunk_size
        self._engine = LiveEngine(
            engine_factory,
            config,
            on_result=self._finished,
            on_failure=self._engine_failed,
            report=self._collector,
            retry=retry,
            place=self._place,
            max_wait_s=config.max_wait_ms / 1000.0,
            eager_start=True,  # a wrong model fails before an entry is taken
        )
        # Finished results for the writer. The engine thread appends and wakes the
        # writer only when it sleeps: a queue.Queue put + get per result, a thread
        # hand-off a row, cost about 3 us a row of CPU (42.7 -> 39.5 us a row of
        # the worker's, on 100,000 rows with the fake engine).
        self._results: collections.deque[Result] = collections.deque()
        self._results_ready = threading.Event()
        self._results_end = False
        self._lock = threading.Condition()  # the figures below, and waiting for room
        self._entry_ids: dict[int, str] = {}  # row index -> entry id, until written
        self._held_ids: set[str] = set()
        self._taken = 0
        self._produced = 0  # results the engine gave
        self._written = 0  # results written, or skipped as duplicates
        self._figures: dict[str, int] = dict.fromkeys(
            ("entries_read", "claimed", "dead_lettered", "results_written", "duplicates_skipped"),
            0,
        )
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._started = False

    # -- control ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Take no more entries; `run()` finishes and acknowledges those it holds, then
        returns. Safe from a signal handler or another thread."""
        self._stop.set()

    def run(self) -> WorkerReport:
        """Serve the stream until stopped or drained; the report."""
        self._started = True
        self._engine.start().result()
        writer = threading.Thread(target=self._write_loop, name="bizra-batch-writer", daemon=True)
        writer.start()
        try:
            self._take_loop()
        finally:
            self._engine.close()
            self._engine.join()
            self._results_end = True
            self._results_ready.set()
            writer.join()
        if self._failure is not None:
            raise self._failure
        return self.report()

    def report(self) -> WorkerReport:
        """The report as of now (the run's figures and the queue's)."""
        counts = self._counts()
        with self._lock:
            figures = dict(self._figures)
        queue_figures = QueueFigures(
            server=self._stream.where,
            stream=self._stream.names.stream,
            redis_retries=self._stream.reconnects,
            entries_waiting=None if counts is None else counts.waiting,
            entries_pending=None if counts is None else counts.pending,
            **figures,
        )
        return WorkerReport(self._collector.finish(), queue_figures)

    def health(self) -> dict[str, Any]:
        """`BatchQueue.health()`'s figures, then the queue's (`QueueFigures`), as of now.

        queue_depth: entries taken and waiting to go to the engine; in_flight: rows
        in the engine; total_requests: results written (or skipped as duplicates).
        """
        run = self._collector.finish()
        handed_over = self._engine.handed_over
        with self._lock:
            health = health_figures(
                run,
                put=self._taken,
                handed_over=handed_over,
                left_engine=self._produced,
                finished=self._written,
                running=self._started and not self._stop.is_set() and self._failure is None,
            )
        queue_figures = self.report().queue.to_dict()
        health.update((k, v) for k, v in queue_figures.items() if k not in ("server", "stream"))
        return health

    # -- taking entries (this thread) -----------------------------------------------

    def _take_loop(self) -> None:
        settings = self._settings
        chunk_size = self._config.input.chunk_size
        # Often enough that a dead worker's entries wait little past --claim-idle-ms.
        claim_every_s = min(max(settings.claim_idle_ms / 2000.0, 0.05), 5.0)
        next_claim = self._clock()
        # Read a whole batch at a time: reading whatever room the last write freed
        # (often a part of a batch) made twice the round trips and fed the engine
        # part-batches it then waited to fill.
        want = min(chunk_size, self._max_held)
        while not self._stop.is_set():
            room = self._room()
            if room < want:
                with self._lock:
                    self._lock.wait_for(
                        lambda: self._room() >= want or self._stop.is_set(),
                        timeout=settings.read_block_ms / 1000.0,
                    )
                continue
            if self._clock() >= next_claim:
                next_claim = self._clock() + claim_every_s
                # A long batch (minutes at a large batch size) must not look like a
                # dead worker's: ours are renewed at twice the rate they would expire.
                with self._lock:
                    held = list(self._held_ids)
                self._stream.touch(held)
                if self._take_claimed(room):
                    continue
            # Entries read as a stop request comes are run all the same: taken is held.
            # Draining, a read never blocks: a blocked read at the end of the queue
            # cost a whole read_block_ms (250 ms, 5% of 100,000 rows) before the
            # worker could see it was done.
            block_ms = None if settings.drain else settings.read_block_ms
            entries = self._stream.read(min(room, chunk_size), block_ms)
            if entries:
                self._bump("entries_read", len(entries))
                self._feed(entries)
            elif settings.drain:
                if self._drained():
                    return
                self._await_news()

    def _room(self) -> int:
        return self._max_held - (self._taken - self._written)

    def _take_claimed(self, room: int) -> bool:
        settings = self._settings
        claimed = self._stream.claim(settings.claim_idle_ms, room)
        with self._lock:
            # Our own entries, idle while they wait for the engine, are ours already.
            fresh = [e for e in claimed if e.entry_id not in self._held_ids]
        too_often = [e for e in fresh if e.deliveries > settings.max_deliveries]
        if too_often:
            moved = self._stream.dead_letter(
                [(e, _dead_letter_error(e, settings.max_deliveries)) for e in too_often]
            )
            self._bump("dead_lettered", moved)
        runnable = [e for e in fresh if e.deliveries <= settings.max_deliveries]
        if runnable:
            self._bump("claimed", len(runnable))
            self._feed(runnable)
        return bool(claimed)

    def _feed(self, entries: list[Entry]) -> None:
        fields = self._config.input
        with self._lock:
            first = self._taken
            for offset, entry in enumerate(entries):
                self._entry_ids[first + offset] = entry.entry_id
                self._held_ids.add(entry.entry_id)
            self._taken += len(entries)
        rows = [entry_row(e, index=first + k, fields=fields) for k, e in enumerate(entries)]
        self._engine.put(rows)  # only this thread puts: indices arrive in order

    def _await_news(self) -> None:
        """Draining, with nothing new to read: wait until the results of the entries
        held here are written, or holding none (another worker's are pending), for
        `read_block_ms`, so an empty read is not repeated at once."""
        timeout = self._settings.read_block_ms / 1000.0
        with self._lock:
            if self._taken != self._written:
                self._lock.wait_for(
                    lambda: self._taken == self._written or self._stop.is_set(), timeout=timeout
                )
                return
        self._stop.wait(timeout)

    def _drained(self) -> bool:
        """Nothing held here, nothing new, nothing pending in the group."""
        with self._lock:
            if self._taken != self._written:
                return False
        counts = self._stream.counts()
        return counts.pending == 0 and not counts.waiting

    def _bump(self, figure: str, by: int) -> None:
        with self._lock:
            self._figures[figure] += by

    def _counts(self) -> QueueCounts | None:
        try:
            return self._stream.counts()
        except RedisQueueError:
            return None

    # -- the engine thread -----------------------------------------------------------

    def _finished(self, result: Result) -> None:
        self._produced += 1  # only this thread writes it: no lock on every row
        self._results.append(result)
        if not self._results_ready.is_set():
            self._results_ready.set()

    def _engine_failed(self, exc: BaseException) -> None:
        self._fail(exc)

    def _place(self, index: int, line: int) -> str:
        return entry_place(self._entry_ids.get(index, "?"))

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
            self._lock.notify_all()
        self._stop.set()

    # -- writing results (the writer thread) -----------------------------------------

    def _write_loop(self) -> None:
        pending = self._results
        while True:
            self._results_ready.wait()
            # Cleared before taking: a result appended from here on sets it again.
            self._results_ready.clear()
            ending = self._results_end
            results = [pending.popleft() for _ in range(len(pending))]
            if results and self._failure is None:
                try:
                    self._write(results)
                except BaseException as exc:  # left pending: another worker claims them
                    self._fail(exc)
            if ending and not pending:
                return

    def _write(self, results: list[Result]) -> None:
        with self._lock:
            entry_ids = [self._entry_ids[r.index] for r in results]
        rows = []
        for result, entry_id in zip(results, entry_ids, strict=True):
            fields = result_fields(result, entry_id)
            rows.append((entry_id, fields["id"], fields["data"]))
        written = self._stream.write_results(rows, ttl_s=self._settings.result_ttl_s)
        with self._lock:
            for result, entry_id in zip(results, entry_ids, strict=True):
                del self._entry_ids[result.index]
                self._held_ids.discard(entry_id)
            self._written += len(results)
            self._figures["results_written"] += sum(written)
            self._figures["duplicates_skipped"] += len(written) - sum(written)
            done = self._written
            self._lock.notify_all()
        if self._progress is not None:
            self._progress.update(done, self._collector.output_tokens, None)


def _dead_letter_error(entry: Entry, max_deliveries: int) -> str:
    """Why an entry was dead-lettered.

    >>> print(_dead_letter_error(Entry("1-0", {}, deliveries=4), 3))
    delivered 4 times (--max-deliveries 3) and never answered: every worker that took it
    stopped before writing its result
    """
    return (
        f"delivered {entry.deliveries} times (--max-deliveries {max_deliveries}) and never "
        "answered: every worker that took it stopped before writing its result"
    )
