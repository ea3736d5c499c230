"""Results as Arrow columns and back: every field as it was, however Ray cuts the blocks."""

from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching.records import Result, RowError

pytest.importorskip("ray")

from batching.ray_results import SCHEMA, ResultDecoder, encode_results

KINDS: list[Result] = [
    Result(0, "a", "out", "stop", 3, 2, None, {}, 0.25, None, False),
    Result(1, 7, ["x", "y"], ["stop", None], 3, 4, None, {}, 0.5, [[{"t": 1}], []], True),
    Result(2, None, None, None, None, None, RowError("invalid_input", "f.jsonl:3: no"), {}),
    Result(3, 2**70, "big id", "length", 1, 1),
    Result(4, 1.5, "float id", "stop", 1, 1, kept=MappingProxyType({"topic": "a", "n": 2})),
    Result(5, True, "bool id", "stop", 1, 1, kept={"when": b"\x00bytes"}),
    Result(6, {"nested": [1]}, "", "stop", 0, 0),
]


def same(got: Result, want: Result, index: int) -> None:
    assert got.index == index
    for name in Result.__slots__:
        if name == "index":
            continue
        value, expected = getattr(got, name), getattr(want, name)
        if name == "kept":
            value, expected = dict(value), dict(expected)
        assert value == expected, name
        assert type(value) is type(expected), name


def test_every_kind_of_field_comes_back_with_its_type() -> None:
    indices = [100 + i for i in range(len(KINDS))]

    table = encode_results(indices, KINDS, {"stats": 1})
    results, extras = ResultDecoder().decode(table)

    assert extras == [{"stats": 1}]
    for got, want, index in zip(results, KINDS, indices, strict=True):
        same(got, want, index)


def test_the_common_fields_travel_as_typed_columns_and_one_blob_a_batch() -> None:
    table = encode_results([0, 1], [KINDS[0], KINDS[0]], None)

    assert table.schema == SCHEMA
    assert table.column("output").type == pa.string()
    assert table.column("batch").null_count == 1  # only the first row carries the blob


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=20), max_size=4),
)
def test_batches_merged_and_split_into_blocks_decode_to_the_same_results(
    sizes: list[int], cuts: list[int]
) -> None:
    batches: list[list[Result]] = []
    for size in sizes:
        batches.append([KINDS[(len(batches) + i) % len(KINDS)] for i in range(size)])
    tables, start = [], 0
    for n, batch in enumerate(batches):
        tables.append(encode_results(range(start, start + len(batch)), batch, n))
        start += len(batch)
    merged = pa.concat_tables(tables)
    edges = sorted({0, merged.num_rows, *(c for c in cuts if c < merged.num_rows)})

    decoder = ResultDecoder()
    results: list[Result] = []
    extras: list[Any] = []
    for low, high in itertools.pairwise(edges):
        got, more = decoder.decode(merged.slice(low, high - low))
        results += got
        extras += more

    assert extras == list(range(len(batches)))
    flat = [result for batch in batches for result in batch]
    for index, (got, want) in enumerate(zip(results, flat, strict=True)):
        same(got, want, index)


def test_a_block_that_starts_without_its_batch_is_an_error() -> None:
    table = encode_results([0, 1], [KINDS[0], KINDS[0]], None)

    with pytest.raises(RuntimeError, match="results came without their batch"):
        ResultDecoder().decode(table.slice(1))
