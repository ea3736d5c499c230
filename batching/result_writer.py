"""The interface every output writer implements: results in, in input order.

A module of its own so the JSONL and Parquet writers can both subclass it without
importing `writers`, which imports them to open them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from batching.closing import ClosedOnExit
from batching.records import Result

__all__ = ["ResultWriter"]


class ResultWriter(ClosedOnExit):
    """Takes results in input order and writes them.

    `rows_written` counts the rows this writer has handed to the output so far (a
    resumed output's earlier rows are not among them); Parquet hands them over a
    row group at a time.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows_written = 0

    @abstractmethod
    def write(self, results: Sequence[Result]) -> None:
        """Write `results`, which continue the input order where the last call left off."""

    @abstractmethod
    def flush(self, durable: bool = False) -> None:
        """Hand everything written so far to the OS; `durable` also waits for the disk.

        After a durable flush, a crash loses none of the rows written before it.
        """

    @abstractmethod
    def close(self) -> None:
        """Finish the output; the process's stdout stays open.

        Parquet: write the footer (stdout), or assemble the parts into the file.
        """
