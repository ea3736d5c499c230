"""One replica: a Ray Data actor that holds one engine and runs batches of rows on it.

Each batch goes through `pipeline.run_rows`, the engine loop of the single-process
path, so tokenizing, grouping, retries, poison-row isolation and engine restarts
behave the same here. The engine outlives the batch: `run_rows` closes the engine
it was given when it ends, so it is given a handle whose `close` keeps the engine
for the next batch, and only a restart inside a batch replaces it.

If the actor process dies (killed, node lost), Ray restarts it and runs its
unfinished batch again, there or on another replica; a batch's results reach the
driver only when the whole batch succeeded, so no row is lost or written twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from batching.config import RunConfig
from batching.engine import Engine, EngineFactory, KeptOpen
from batching.pipeline import run_rows
from batching.ray_source import INDEX_COLUMN, decode_rows, pickled
from batching.records import InvalidRow, Result, Row
from batching.report import Report, ReportCollector
from batching.retry import RetryPolicy

__all__ = ["RESULT_COLUMN", "STATS_COLUMN", "BatchStats", "EngineReplica"]

RESULT_COLUMN = "result"
STATS_COLUMN = "stats"


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one replica did for one batch, for the driver's report."""

    replica: str
    report: Report
    # Rows the replica ran: the report's rows also count invalid ones, which never
    # reach an engine (they only pass through to keep their place in the output).
    rows_run: int = 0


class EngineReplica:
    """The callable class `map_batches` runs in each actor of the pool.

    >>> ds.map_batches(EngineReplica, fn_constructor_args=(FakeEngine, config),
    ...                compute=ray.data.ActorPoolStrategy(size=2))  # doctest: +SKIP
    """

    def __init__(
        self, engine_factory: EngineFactory, config: RunConfig, retry: RetryPolicy | None = None
    ) -> None:
        self._engines = _KeptEngine(engine_factory)
        self._config = config
        self._retry = retry
        self._name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = sorted(decode_rows(batch), key=lambda row: row.index)
        collector = ReportCollector()
        results: list[Result] = []
        sink = _ListSink(results)
        for run in _consecutive(rows):
            self._engines.new_batch()
            run_rows(
                _ListSupply(run, self._config.input.chunk_size),
                sink,
                self._engines,
                self._config,
                retry=self._retry,
                report=collector,
                start_index=run[0].index,
            )
        ran = sum(not isinstance(row, InvalidRow) for row in rows)
        stats = BatchStats(self._name, collector.finish(), rows_run=ran)
        # The stats ride on the first row, so the driver reads them once per batch.
        blobs: list[bytes | None] = [None] * len(results)
        if blobs:
            blobs[0] = pickled(stats)
        return pa.table(
            {
                INDEX_COLUMN: pa.array([r.index for r in results], pa.int64()),
                RESULT_COLUMN: pa.array(
                    [pickled(r) for r in results],
                    pa.binary(),
                ),
                STATS_COLUMN: pa.array(blobs, pa.binary()),
            }
        )

    def __del__(self) -> None:
        self._engines.shutdown()


def _consecutive(rows: list[Row]) -> Iterator[list[Row]]:
    """Runs of rows with consecutive indices: the reorder buffer waits for every index."""
    run: list[Row] = []
    for row in rows:
        if run and row.index != run[-1].index + 1:
            yield run
            run = []
        run.append(row)
    if run:
        yield run


class _KeptEngine:
    """An `EngineFactory` that hands out one long-lived engine across batches.

    A second call within one batch is `run_rows` restarting a dead engine: only
    then is the engine replaced.
    """

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._engine: Engine | None = None
        self._handed_out = False

    def new_batch(self) -> None:
        self._handed_out = False

    def __call__(self) -> Engine:
        if self._engine is not None and self._handed_out:
            # It died: closing what is left of it must not stop the restart.
            with contextlib.suppress(Exception):
                self.shutdown()
        if self._engine is None:
            self._engine = self._factory()
        self._handed_out = True
        return KeptOpen(self._engine)

    def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


class _ListSupply:
    def __init__(self, rows: list[Row], chunk_size: int) -> None:
        self._rows = rows
        self._chunk_size = max(1, chunk_size)

    def chunks(self) -> Iterator[list[Row]]:
        for start in range(0, len(self._rows), self._chunk_size):
            yield self._rows[start : start + self._chunk_size]

    def estimated_total_rows(self) -> int | None:
        return len(self._rows)


class _ListSink:
    def __init__(self, results: list[Result]) -> None:
        self._results = results

    def write(self, results: Sequence[Result]) -> None:
        self._results.extend(results)

    def flush(self, durable: bool = False) -> None:
        pass
