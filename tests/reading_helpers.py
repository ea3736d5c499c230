"""Helpers shared by the input tests: reading every row, making JSONL, error text."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from batching.readers import RowSource
from batching.records import InvalidRow, Row

# open(data, **config) -> RowSource: the `open_jsonl` fixture (conftest.py).
Open = Callable[..., RowSource]


def read_all(source: RowSource) -> list[Row]:
    with source:
        return [row for chunk in source.chunks() for row in chunk]


def jsonl(*rows: object) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def error_of(row: Row) -> str:
    assert isinstance(row, InvalidRow), row
    return row.error.message
