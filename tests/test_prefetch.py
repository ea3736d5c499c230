"""Read-ahead gives the same chunks, in order, and hands reader errors over."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from batching.errors import InputError
from batching.prefetch import PrefetchedSupply
from batching.records import Request, Row


class Chunks:
    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.count = count
        self.fail_after = fail_after
        self.read = 0

    def chunks(self) -> Iterator[list[Row]]:
        for i in range(self.count):
            if self.fail_after is not None and i == self.fail_after:
                raise InputError("in.jsonl: gzip stream is corrupt")
            self.read += 1
            yield [Request(index=i, id=i, line=i + 1, prompt=f"p{i}")]

    def estimated_total_rows(self) -> int | None:
        return self.count


def test_same_chunks_in_the_same_order() -> None:
    chunks = list(PrefetchedSupply(Chunks(50)).chunks())
    assert [chunk[0].index for chunk in chunks] == list(range(50))


def test_a_reader_error_reaches_the_consumer_after_the_chunks_before_it() -> None:
    seen: list[int] = []
    with pytest.raises(InputError, match="corrupt"):
        for chunk in PrefetchedSupply(Chunks(10, fail_after=4)).chunks():
            seen.append(chunk[0].index)
    assert seen == [0, 1, 2, 3]


def test_reads_at_most_depth_chunks_ahead_and_stops_when_the_consumer_does() -> None:
    source = Chunks(1000)
    iterator = PrefetchedSupply(source, depth=2).chunks()
    next(iterator)
    iterator.close()  # the consumer quits early: the reader thread must end too
    assert source.read <= 5
    assert not [t for t in threading.enumerate() if t.name == "bizra-batch-reader"]
