"""The shapes the pipeline needs of what feeds it and what it feeds.

Kept apart from `pipeline` so the pieces that wrap a supply or a sink (resume,
the errors file) do not import the pipeline they plug into.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from batching.records import Result, Row

__all__ = ["ProgressSink", "ResultSink", "RowSupply"]


class ProgressSink(Protocol):
    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None: ...


class ResultSink(Protocol):
    def write(self, results: Sequence[Result]) -> None: ...

    def flush(self, durable: bool = False) -> None: ...


class RowSupply(Protocol):
    """What the pipeline needs of a reader: chunks of rows, and how far it has got."""

    def chunks(self) -> Iterator[list[Row]]: ...

    def estimated_total_rows(self) -> int | None: ...
