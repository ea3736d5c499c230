"""Adapters for running the pipeline without files: rows from a list, results into
a list, and an engine on loan.

Shipped beside `batching.testing.FakeEngine` (as httpx ships `MockTransport`) so
that `bench`, the tests and users' own code plug rows and results into
`pipeline.run_rows` the same way, instead of each writing its own.

>>> from batching import FakeEngine, InputConfig, Request, RunConfig, run_rows
>>> rows = [Request(index=i, id=i, line=i + 1, prompt=p) for i, p in enumerate(["ab", "cd"])]
>>> sink = ListSink()
>>> report = run_rows(ListSupply(rows), sink, FakeEngine, RunConfig(InputConfig(path="-")))
>>> [result.output for result in sink.results]
['ba', 'dc']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batching.engine import (
    CountsSequences,
    Engine,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.records import Result, Row

__all__ = ["KeptOpen", "ListSink", "ListSupply"]


@dataclass
class ListSupply:
    """Rows held in memory, as the pipeline's `RowSupply`: chunks of `chunk_size`.

    `chunks_read` counts the chunks handed over so far.

    >>> [len(chunk) for chunk in ListSupply(["r"] * 5, chunk_size=2).chunks()]
    [2, 2, 1]
    """

    rows: Sequence[Row]
    chunk_size: int = 1024
    chunks_read: int = 0

    def chunks(self) -> Iterator[list[Row]]:
        step = max(1, self.chunk_size)
        for start in range(0, len(self.rows), step):
            self.chunks_read += 1
            yield list(self.rows[start : start + step])

    def estimated_total_rows(self) -> int | None:
        return len(self.rows)


@dataclass
class ListSink:
    """Results kept in memory, in the order the pipeline writes them (input order),
    as its `ResultSink`; `durable_flushes` counts the flushes asked to be durable."""

    results: list[Result] = field(default_factory=list)
    durable_flushes: int = 0

    def write(self, results: Sequence[Result]) -> None:
        self.results.extend(results)

    def flush(self, durable: bool = False) -> None:
        self.durable_flushes += durable


class KeptOpen:
    """An engine lent to a run that must leave it running: `close` does nothing.

    For a long-lived engine shared by several runs (a Ray replica's batches, the
    bench's measurements, a test session's engine); its owner closes it.

    >>> from batching.testing import FakeEngine
    >>> engine = FakeEngine()
    >>> lent = KeptOpen(engine)  # run_rows(supply, sink, lambda: lent, config)
    >>> lent.close()
    >>> engine.closed
    False
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self._engine.max_num_seqs

    @property
    def last_step_sequences(self) -> int | None:
        if isinstance(self._engine, CountsSequences):
            return self._engine.last_step_sequences
        return None

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        return self._engine.encode(prompts)

    def add(self, request: EngineRequest) -> None:
        self._engine.add(request)

    def step(self) -> list[EngineOutput]:
        return self._engine.step()

    def abort(self, keys: Iterable[int]) -> None:
        self._engine.abort(keys)

    def has_unfinished(self) -> bool:
        return self._engine.has_unfinished()

    def close(self) -> None:
        pass
