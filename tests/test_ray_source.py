"""Rows as Arrow columns and back: every kind of row as the reader made it."""

from __future__ import annotations

from types import MappingProxyType

import pyarrow as pa
import pytest

from batching.records import NO_SAMPLING, InvalidRow, Request, Row, RowError, Sampling

pytest.importorskip("ray")

from batching.ray_source import ROW_COLUMN, ROWS_SCHEMA, decode_rows, encode_rows

ROWS: list[Row] = [
    Request(0, 0, 1, "plain"),
    Request(1, "s1", 2, None, ({"role": "user", "content": "hi"},)),
    Request(2, None, 3, "own sampling", sampling=Sampling(max_tokens=4, stop=("x",))),
    Request(3, 2**64, 4, "big id", kept=MappingProxyType({"topic": "t", "n": 1.5})),
    Request(4, 1.0, 5, "float id"),
    Request(5, False, 6, "bool id"),
    InvalidRow(6, 6, 7, RowError("invalid_input", "in.jsonl:7: not valid JSON"), {"topic": None}),
]


def test_every_kind_of_row_comes_back_as_it_was() -> None:
    rows = decode_rows(encode_rows(ROWS))

    assert rows == ROWS
    assert [type(row.id) for row in rows] == [type(row.id) for row in ROWS]
    assert rows[0].sampling is NO_SAMPLING  # the pipeline's fast path tells it by identity


def test_a_plain_prompt_row_travels_in_typed_columns_alone() -> None:
    table = encode_rows(ROWS)

    assert table.schema == ROWS_SCHEMA
    assert table.column("prompt").type == pa.string()
    assert table.column(ROW_COLUMN).to_pylist()[0] is None
    assert table.column(ROW_COLUMN).null_count == 1


def test_any_slice_of_a_block_decodes_alone() -> None:
    """Ray Data cuts batches out of blocks wherever it likes."""
    table = encode_rows(ROWS)

    assert decode_rows(table.slice(3, 2)) == ROWS[3:5]
