"""Parquet input: rows in order by row group, columns as fields, bad rows in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batching.config import InputConfig
from batching.errors import InputError
from batching.readers import open_source
from batching.records import InvalidRow, Request
from tests.reading_helpers import error_of, jsonl, read_all


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int = 1000) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_come_in_order_with_an_exact_total(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "in.parquet",
        {"id": list(range(100, 125)), "prompt": [f"p{i}" for i in range(25)]},
        row_group_size=10,
    )

    with open_source(InputConfig(path=str(path), chunk_size=4)) as source:
        assert source.total_rows == 25
        chunks = list(source.chunks())
        assert (source.rows_read, source.bytes_read) == (25, source.total_bytes)

    rows = [r for c in chunks for r in c]
    assert all(len(c) <= 4 for c in chunks)
    assert [(r.index, r.line, r.id) for r in rows] == [(i, i + 1, 100 + i) for i in range(25)]
    assert [r.prompt for r in rows] == [f"p{i}" for i in range(25)]  # type: ignore[union-attr]


def test_parquet_chat_messages_kept_fields_and_sampling(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "in.pq",
        {
            "messages": [[{"role": "user", "content": "Hi"}]],
            "topic": ["greeting"],
            "max_tokens": [8],
            "unused": [b"\x00" * 1000],
        },
    )

    [row] = read_all(open_source(InputConfig(path=str(path), keep_fields=("topic", "lang"))))

    assert isinstance(row, Request)
    assert row.messages == ({"role": "user", "content": "Hi"},)
    assert row.kept == {"topic": "greeting", "lang": None}
    assert row.sampling.max_tokens == 8


def test_parquet_response_format_column_is_read(tmp_path: Path) -> None:
    # It was not among the columns decoded, so the constraint was dropped unseen.
    # As a struct column, each row also gets the keys of the others' schemas, as
    # nulls, which a grammar refuses: they are dropped.
    first_schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    second_schema = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}

    def response_format(schema: dict[str, object]) -> dict[str, object]:
        return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    path = write_parquet(
        tmp_path / "in.parquet",
        {
            "prompt": ["Hi", "Yo", "Hey"],
            "response_format": [
                response_format(first_schema),
                None,
                response_format(second_schema),
            ],
        },
    )

    first, second, third = read_all(open_source(InputConfig(path=str(path))))

    assert isinstance(first, Request) and isinstance(second, Request)
    assert isinstance(third, Request)
    assert first.sampling.json_schema is not None and third.sampling.json_schema is not None
    assert orjson.loads(first.sampling.json_schema) == first_schema
    assert second.sampling.json_schema is None
    assert orjson.loads(third.sampling.json_schema) == second_schema


def test_parquet_null_id_means_the_row_index(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "in.parquet", {"id": ["a", None], "prompt": ["x", "y"]})

    assert [r.id for r in read_all(open_source(InputConfig(path=str(path))))] == ["a", 1]


def test_parquet_errors_name_the_row_and_repeats_are_caught(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 1], "prompt": ["ok", "", "again"]})

    rows = read_all(open_source(InputConfig(path=str(path))))

    assert error_of(rows[1]).startswith(f"{path} row 2: field 'prompt'")
    assert "first seen at row 1" in error_of(rows[2])


@pytest.mark.parametrize(
    ("ids", "bad_row", "first"),
    [
        pytest.param(
            [1, None], 2, "first seen at row 1; this row has no 'id'", id="explicit-first"
        ),
        pytest.param(
            [None, None, 1], 3, "first seen at row 2 as that row's default", id="default-first"
        ),
    ],
)
def test_parquet_row_number_colliding_with_an_explicit_id_is_an_error(
    tmp_path: Path, ids: list[int | None], bad_row: int, first: str
) -> None:
    path = write_parquet(tmp_path / "in.parquet", {"id": ids, "prompt": ["p"] * len(ids)})

    rows = read_all(open_source(InputConfig(path=str(path))))

    assert [isinstance(r, InvalidRow) for r in rows] == [r.line == bad_row for r in rows]
    message = error_of(rows[bad_row - 1])
    assert message.startswith(f"{path} row {bad_row}: field 'id': duplicate id, integer 1")
    assert first in message and message.endswith("give every row an id, or none")


@pytest.mark.parametrize(
    "ids", [["1", None, "0"], [None, None], [0, 1, 2], [None, "x", None]], ids=str
)
def test_parquet_ids_that_repeat_no_row_number_are_valid(tmp_path: Path, ids: list[object]) -> None:
    path = write_parquet(tmp_path / "in.parquet", {"id": ids, "prompt": ["p"] * len(ids)})

    rows = read_all(open_source(InputConfig(path=str(path))))

    assert all(isinstance(r, Request) for r in rows)


def test_parquet_without_prompt_or_messages_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "in.parquet", {"text": ["x"], "id": [1]})

    with pytest.raises(InputError, match=r"no 'prompt' or 'messages' column \(columns: id, text\)"):
        open_source(InputConfig(path=str(path)))


def test_file_that_is_not_parquet_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    path.write_bytes(jsonl({"prompt": "a"}))

    with pytest.raises(InputError, match=r"in\.parquet: not a readable Parquet file"):
        open_source(InputConfig(path=str(path)))


def test_parquet_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)

    source = open_source(InputConfig(path=str(path)))

    assert (source.total_rows, read_all(source)) == (0, [])


def test_response_format_as_json_text_is_read(tmp_path: Path) -> None:
    # The way to keep a null keyword in Parquet: a string column of JSON text.
    schema = {"type": "object", "properties": {"a": {"default": None}}}
    text = orjson.dumps({"type": "json_schema", "json_schema": {"schema": schema}}).decode()
    path = write_parquet(tmp_path / "in.parquet", {"prompt": ["Hi"], "response_format": [text]})

    [row] = read_all(open_source(InputConfig(path=str(path))))

    assert isinstance(row, Request) and row.sampling.json_schema is not None
    assert orjson.loads(row.sampling.json_schema) == schema
