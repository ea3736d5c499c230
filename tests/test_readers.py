"""Reading inputs: every row once, in order, with bad rows kept in place as errors."""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.config import InputConfig
from batching.errors import InputError, UsageError
from batching.readers import (
    DEFAULT_MAX_LINE_BYTES,
    STDIN_NAME,
    RowSource,
    input_format,
    open_source,
    row_place,
)
from batching.records import InvalidRow, Request, Row, Sampling

Open = Callable[..., RowSource]


@pytest.fixture(params=["file", "stdin"])
def open_jsonl(request: pytest.FixtureRequest, tmp_path: Path) -> Open:
    """open(data, **config) for JSONL bytes, as a file or as stdin: same rows either way."""

    def open_(
        data: bytes, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, **config: Any
    ) -> RowSource:
        if request.param == "stdin":
            cfg = InputConfig(path="-", **config)
            return open_source(cfg, stdin=io.BytesIO(data), max_line_bytes=max_line_bytes)
        path = tmp_path / "prompts.jsonl"
        path.write_bytes(data)
        return open_source(InputConfig(path=str(path), **config), max_line_bytes=max_line_bytes)

    return open_


def read_all(source: RowSource) -> list[Row]:
    with source:
        return [row for chunk in source.chunks() for row in chunk]


def jsonl(*rows: object) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def error_of(row: Row) -> str:
    assert isinstance(row, InvalidRow), row
    return row.error.message


def test_rows_come_in_file_order_with_index_line_and_id(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(jsonl({"id": "a", "prompt": "one"}, {"prompt": "two"})))

    assert [(r.index, r.line, r.id) for r in rows] == [(0, 1, "a"), (1, 2, 1)]
    assert [r.prompt for r in rows if isinstance(r, Request)] == ["one", "two"]


def test_blank_lines_are_skipped_but_line_numbers_still_count_them(open_jsonl: Open) -> None:
    data = b'\n  \n{"prompt": "a"}\n\t\n\n{"prompt": "b"}\n\n'

    rows = read_all(open_jsonl(data))

    assert [(r.index, r.line) for r in rows] == [(0, 3), (1, 6)]


def test_bom_and_crlf_line_endings_are_tolerated(open_jsonl: Open) -> None:
    data = b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n'

    rows = read_all(open_jsonl(data))

    assert [r.prompt for r in rows if isinstance(r, Request)] == ["a", "b"]


def test_last_line_without_newline_is_a_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "a"}\n{"prompt": "b"}'))

    assert len(rows) == 2


def test_empty_input_has_no_rows(open_jsonl: Open) -> None:
    assert read_all(open_jsonl(b"")) == []


def test_bad_json_line_becomes_an_error_row_in_its_place(open_jsonl: Open) -> None:
    data = b'{"prompt": "a"}\n{"prompt": "b",\n{"prompt": "c"}\n'

    rows = read_all(open_jsonl(data))

    assert [type(r) for r in rows] == [Request, InvalidRow, Request]
    bad = rows[1]
    assert (bad.index, bad.line, bad.id) == (1, 2, 1)
    assert ":2: not valid JSON" in error_of(bad)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_a_line_cut_short_points_past_its_end(open_jsonl: Open, ending: bytes) -> None:
    # Parsed with its newline, orjson placed the error at "line 2, column 1".
    rows = read_all(open_jsonl(b'{"id":"badjson","prompt":"hello"' + ending))
    assert "(unexpected end of data at column 33)" in error_of(rows[0])


def test_line_that_is_not_utf8_becomes_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "caf\xe9"}\n{"prompt": "ok"}\n'))

    assert ":1: not valid UTF-8 at byte 16" in error_of(rows[0])
    assert isinstance(rows[1], Request)


def test_line_that_is_not_an_object_becomes_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'"just a string"\n[1, 2]\n'))

    assert ":1: expected a JSON object per line" in error_of(rows[0])
    assert ":2: expected a JSON object per line" in error_of(rows[1])


def test_error_rows_carry_the_kept_fields_as_none(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b"not json\n", keep_fields=("topic",)))

    assert rows[0].kept == {"topic": None}


def test_error_messages_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"prompt": ""}\n')

    rows = read_all(open_source(InputConfig(path=str(path))))

    assert error_of(rows[1]).startswith(f"{path}:3: field 'prompt'")


def test_stdin_messages_name_stdin() -> None:
    rows = read_all(open_source(InputConfig(path="-"), stdin=io.BytesIO(b"{}\n")))

    assert error_of(rows[0]).startswith(f"{STDIN_NAME}:1: ")


@pytest.mark.parametrize("kind", ["jsonl", "stdin", "parquet", "gz"])
def test_row_place_names_a_row_as_the_source_does(tmp_path: Path, kind: str) -> None:
    # The pipeline names rows the engine refuses with row_place: it must match.
    rows = [{"prompt": "a"}, {"prompt": ""}]
    stdin = None
    if kind == "stdin":
        cfg, stdin = InputConfig(path="-"), io.BytesIO(jsonl(*rows))
    elif kind == "parquet":
        cfg = InputConfig(path=str(tmp_path / "in.parquet"))
        pq.write_table(pa.Table.from_pylist(rows), cfg.path)
    elif kind == "gz":
        cfg = InputConfig(path=str(tmp_path / "in.jsonl.gz"))
        Path(cfg.path).write_bytes(gzip.compress(jsonl(*rows)))
    else:
        cfg = InputConfig(path=str(tmp_path / "in.jsonl"))
        Path(cfg.path).write_bytes(jsonl(*rows))

    [_, bad] = read_all(open_source(cfg, stdin=stdin))

    assert error_of(bad).startswith(row_place(cfg)(2) + ": field 'prompt'")


def test_row_place_of_a_label_that_is_no_file_name() -> None:
    assert row_place(InputConfig(path="<submit>"))(4) == "<submit>:4"


def test_misspelt_fields_are_warned_about_once_and_the_rows_still_run(
    open_jsonl: Open, caplog: pytest.LogCaptureFixture
) -> None:
    data = jsonl(
        {"id": "x", "prompt": "c", "max_token": 1, "temprature": 5},
        {"id": "y", "prompt": "d", "max_token": 2, "topic": "kept elsewhere"},
        {"id": "z", "prompt": "e", "temprature": 0},
    )
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        source = open_jsonl(data)
        rows = read_all(source)

    assert all(isinstance(row, Request) and row.sampling == Sampling() for row in rows)
    assert [record.getMessage() for record in caplog.records] == [
        f"{source.name}:1: unknown field 'max_token' is ignored; did you mean 'max_tokens'?",
        f"{source.name}:1: unknown field 'temprature' is ignored; did you mean 'temperature'?",
    ]


def test_a_misspelt_parquet_column_is_warned_about_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "max_token": 3, "topic": "t"}] * 3), path)
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        rows = read_all(open_source(InputConfig(path=str(path))))
    assert len(rows) == 3
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: unknown field 'max_token' is ignored; did you mean 'max_tokens'?"
    ]


@pytest.mark.parametrize("length", [65, 3 * 1024 * 1024])
def test_over_long_line_becomes_an_error_row_and_the_next_line_is_read(
    open_jsonl: Open, length: int
) -> None:
    long_line = b'{"prompt": "' + b"x" * length + b'"}\n'
    data = b'{"prompt": "a"}\n' + long_line + b'{"prompt": "b"}\n'

    rows = read_all(open_jsonl(data, max_line_bytes=64))

    assert [type(r) for r in rows] == [Request, InvalidRow, Request]
    assert ":2: line is longer than the limit of 64 bytes" in error_of(rows[1])
    assert "--max-line-bytes" in error_of(rows[1])  # how to raise the limit
    assert (rows[2].line, rows[2].prompt) == (3, "b")  # type: ignore[union-attr]


def test_line_at_exactly_the_limit_is_read(open_jsonl: Open) -> None:
    line = b'{"prompt": "' + b"x" * 20 + b'"}'

    rows = read_all(open_jsonl(line + b"\n" + line, max_line_bytes=len(line)))

    assert [type(r) for r in rows] == [Request, Request]


def test_over_long_last_line_without_newline_is_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "a"}\n{"prompt": "xxxxxxxxx"}', max_line_bytes=16))

    assert [type(r) for r in rows] == [Request, InvalidRow]


def test_repeated_id_is_an_error_that_points_at_the_first(open_jsonl: Open) -> None:
    data = jsonl(
        {"id": "a", "prompt": "1"},
        {"id": "b", "prompt": "2"},
        {"id": "a", "prompt": "3", "topic": "t"},
    )

    rows = read_all(open_jsonl(data, keep_fields=("topic",)))

    assert [type(r) for r in rows] == [Request, Request, InvalidRow]
    message = error_of(rows[2])
    assert ":3: field 'id': duplicate id" in message
    assert "first seen at line 1" in message
    assert (rows[2].id, rows[2].kept) == ("a", {"topic": "t"})


def test_ids_of_different_types_are_different_ids(open_jsonl: Open) -> None:
    data = jsonl(*({"id": i, "prompt": "p"} for i in [1, "1", True, 1.0]))

    rows = read_all(open_jsonl(data))

    assert all(isinstance(r, Request) for r in rows)


def test_row_without_id_whose_row_number_an_earlier_row_used_is_an_error(
    open_jsonl: Open,
) -> None:
    # Row 1 has no id, so its id is its index 1, which row 0 gave explicitly.
    data = jsonl({"id": 1, "prompt": "a"}, {"prompt": "b", "topic": "t"})

    rows = read_all(open_jsonl(data, keep_fields=("topic",)))

    assert [type(r) for r in rows] == [Request, InvalidRow]
    assert error_of(rows[1]).endswith(
        ":2: field 'id': duplicate id, integer 1 was first seen at line 1; this row has no "
        "'id', so its id is its 0-based row number, 1; give every row an id, or none"
    )
    assert (rows[1].id, rows[1].kept) == (1, {"topic": "t"})


def test_explicit_id_that_an_earlier_row_had_as_its_row_number_is_an_error(
    open_jsonl: Open,
) -> None:
    data = jsonl({"prompt": "a"}, {"prompt": "b"}, {"id": 1, "prompt": "c"})

    rows = read_all(open_jsonl(data))

    assert [type(r) for r in rows] == [Request, Request, InvalidRow]
    assert error_of(rows[2]).endswith(
        ":3: field 'id': duplicate id, integer 1 was first seen at line 2 as that row's "
        "default id (it has no 'id', so its id is its 0-based row number); give every "
        "row an id, or none"
    )
    assert rows[2].id == 1


def test_null_id_is_no_id_and_collides_as_one(open_jsonl: Open) -> None:
    data = jsonl({"id": None, "prompt": "a"}, {"id": 0, "prompt": "b"})

    rows = read_all(open_jsonl(data))

    assert "integer 0 was first seen at line 1 as that row's default id" in error_of(rows[1])


@pytest.mark.parametrize(
    "bad_line",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"id": [1], "prompt": "a"}', id="id-not-an-id"),
        pytest.param(b'["a", "list"]', id="not-an-object"),
        pytest.param(b'{"prompt": "' + b"x" * 60 + b'"}', id="over-long"),
    ],
)
def test_error_row_keeps_its_row_number_as_id_and_collides(
    open_jsonl: Open, bad_line: bytes
) -> None:
    data = bad_line + b"\n" + jsonl({"id": 0, "prompt": "b"})

    rows = read_all(open_jsonl(data, max_line_bytes=50))

    assert [type(r) for r in rows] == [InvalidRow, InvalidRow]
    assert [r.id for r in rows] == [0, 0]
    assert ":2: field 'id': duplicate id, integer 0 was first seen at line 1 as" in (
        error_of(rows[1])
    )


def test_row_number_collisions_name_the_right_lines_past_blank_lines(open_jsonl: Open) -> None:
    # Rows 0-3 (lines 2, 3, 6, 8) have no id; blank lines make index and line differ.
    data = (
        b"\n"
        + jsonl({"prompt": "a"}, {"prompt": "b"})
        + b"\n\n"
        + jsonl({"prompt": "c"})
        + b"\n"
        + jsonl({"prompt": "d"})
        + b"\n"
        + jsonl(*({"id": i, "prompt": "e"} for i in [4, 3, 2, 1, 0]))
    )

    rows = read_all(open_jsonl(data))

    assert [r.line for r in rows] == [2, 3, 6, 8, 10, 11, 12, 13, 14]
    firsts = [error_of(r).split("first seen at ")[1][:7] for r in rows[5:]]
    assert firsts == ["line 8 ", "line 6 ", "line 3 ", "line 2 "]


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([0, 1, 2], id="all-ids-equal-to-row-numbers"),
        pytest.param([2, 1, 0], id="all-ids-reversed"),
        pytest.param([None, None, None], id="no-ids"),
        pytest.param(["1", None, None], id="string-1-is-not-row-number-1"),
        pytest.param([None, "1", "0"], id="string-0-after-row-number-0"),
        pytest.param([True, None, 1.0], id="true-and-1.0-are-not-row-number-1"),
        pytest.param([None, 9, None, 7, -1, None, "x"], id="ids-no-row-number-reaches"),
        pytest.param([3, None, None], id="id-past-the-last-row"),
    ],
)
def test_ids_that_do_not_repeat_a_row_number_are_all_valid(
    open_jsonl: Open, ids: list[object]
) -> None:
    data = jsonl(*({"prompt": "p"} if i is None else {"id": i, "prompt": "p"} for i in ids))

    rows = read_all(open_jsonl(data))

    assert all(isinstance(r, Request) for r in rows), [r for r in rows if isinstance(r, InvalidRow)]


def test_custom_id_field_is_the_one_checked_for_repeats(open_jsonl: Open) -> None:
    data = jsonl({"key": 5, "id": 1, "prompt": "a"}, {"key": 5, "id": 2, "prompt": "b"})

    rows = read_all(open_jsonl(data, id_field="key"))

    assert "field 'key': duplicate id" in error_of(rows[1])


@pytest.mark.parametrize(
    ("chunk_size", "sizes"), [(1, [1] * 7), (3, [3, 3, 1]), (7, [7]), (1000, [7])]
)
def test_chunks_hold_at_most_chunk_size_rows(
    open_jsonl: Open, chunk_size: int, sizes: list[int]
) -> None:
    data = jsonl(*({"prompt": str(i)} for i in range(7)))

    with open_jsonl(data, chunk_size=chunk_size) as source:
        chunks = list(source.chunks())

    assert [len(c) for c in chunks] == sizes
    assert [r.index for c in chunks for r in c] == list(range(7))


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(UsageError, match="chunk size"):
        open_source(InputConfig(path="-", chunk_size=0), stdin=io.BytesIO())


def test_file_progress_reaches_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(*({"prompt": str(i)} for i in range(10))))

    with open_source(InputConfig(path=str(path), chunk_size=4)) as source:
        assert (source.total_rows, source.total_bytes) == (None, path.stat().st_size)
        seen = [(source.rows_read, source.bytes_read) for _ in source.chunks()]

    assert [rows for rows, _ in seen] == [4, 8, 10]
    assert seen[-1][1] == path.stat().st_size


def test_stdin_progress_counts_bytes_without_a_total() -> None:
    data = jsonl({"prompt": "a"}, {"prompt": "b"})

    source = open_source(InputConfig(path="-"), stdin=io.BytesIO(data))
    read_all(source)

    assert (source.total_bytes, source.bytes_read, source.rows_read) == (None, len(data), 2)


def test_gzip_file_is_read_and_progress_counts_compressed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(*({"prompt": str(i)} for i in range(1000)))))

    source = open_source(InputConfig(path=str(path)))
    rows = read_all(source)

    assert [r.prompt for r in rows] == [str(i) for i in range(1000)]  # type: ignore[union-attr]
    assert source.total_bytes == source.bytes_read == path.stat().st_size


def test_gzip_content_is_recognised_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(gzip.compress(jsonl({"prompt": "a"})))

    assert [r.prompt for r in read_all(open_source(InputConfig(path=str(path))))] == ["a"]  # type: ignore[union-attr]


def test_gz_name_without_gzip_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(jsonl({"prompt": "a"}))

    with pytest.raises(InputError, match=r"in\.jsonl\.gz: named \.gz but not gzip"):
        open_source(InputConfig(path=str(path)))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_raises_input_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    packed = gzip.compress(jsonl(*({"prompt": f"row {i}"} for i in range(5000))))
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed = packed[:20] + bytes(b ^ 0xFF for b in packed[20:60]) + packed[60:]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(packed)

    with pytest.raises(InputError, match=r"in\.jsonl\.gz: cannot read.*gzip -t"):
        read_all(open_source(InputConfig(path=str(path))))


def test_gzip_on_stdin_says_to_decompress_it() -> None:
    stdin = io.BytesIO(gzip.compress(jsonl({"prompt": "a"})))

    with pytest.raises(InputError, match="gzip-compressed; pipe it through `gunzip -c`"):
        read_all(open_source(InputConfig(path="-"), stdin=stdin))


def test_utf16_input_says_to_convert_it(open_jsonl: Open) -> None:
    with pytest.raises(InputError, match="UTF-16; convert it to UTF-8"):
        read_all(open_jsonl('{"prompt": "a"}\n'.encode("utf-16")))


def test_missing_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"

    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        open_source(InputConfig(path=str(path)))


def test_directory_raises_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()

    with pytest.raises(InputError, match="is a directory"):
        open_source(InputConfig(path=str(folder)))


def test_unknown_extension_suggests_input_format(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(jsonl({"prompt": "a"}))

    with pytest.raises(InputError, match=r"prompts\.txt: unknown input format.*--input-format"):
        open_source(InputConfig(path=str(path)))


def test_format_option_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(jsonl({"prompt": "a"}))

    rows = read_all(open_source(InputConfig(path=str(path), format="jsonl")))

    assert rows[0].prompt == "a"  # type: ignore[union-attr]


def test_a_pipe_without_an_extension_is_read_as_jsonl(tmp_path: Path) -> None:
    # `run <(tail -f q.jsonl)` names /dev/fd/63: a pipe, like stdin, is JSON Lines.
    fifo = tmp_path / "queue"
    os.mkfifo(fifo)

    assert input_format(str(fifo)) == "jsonl"


@pytest.mark.parametrize("name", ["p.json", "p.ndjson", "P.JSONL"])
def test_json_and_ndjson_extensions_are_jsonl(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(jsonl({"prompt": "a"}))

    assert len(read_all(open_source(InputConfig(path=str(path))))) == 1


def test_parquet_from_stdin_is_refused() -> None:
    with pytest.raises(InputError, match="Parquet cannot be streamed from stdin"):
        open_source(InputConfig(path="-", format="parquet"), stdin=io.BytesIO())


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


def test_response_format_as_json_text_is_read(tmp_path: Path) -> None:
    # The way to keep a null keyword in Parquet: a string column of JSON text.
    schema = {"type": "object", "properties": {"a": {"default": None}}}
    text = orjson.dumps({"type": "json_schema", "json_schema": {"schema": schema}}).decode()
    path = write_parquet(tmp_path / "in.parquet", {"prompt": ["Hi"], "response_format": [text]})

    [row] = read_all(open_source(InputConfig(path=str(path))))

    assert isinstance(row, Request) and row.sampling.json_schema is not None
    assert orjson.loads(row.sampling.json_schema) == schema


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


prompts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(prompts, st.booleans(), st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"])),
        max_size=40,
    ),
    chunk_size=st.integers(1, 8),
)
def test_jsonl_round_trip_keeps_every_prompt_id_and_the_order(
    open_jsonl: Open, rows: list[tuple[str, bool, bytes]], chunk_size: int
) -> None:
    data = b"".join(
        orjson.dumps({"prompt": prompt, **({"id": f"id-{n}"} if with_id else {})}) + ending
        for n, (prompt, with_id, ending) in enumerate(rows)
    )

    read = read_all(open_jsonl(data, chunk_size=chunk_size))

    assert [r.prompt for r in read] == [p for p, _, _ in rows]  # type: ignore[union-attr]
    assert [r.id for r in read] == [f"id-{n}" if w else n for n, (_, w, _) in enumerate(rows)]
    assert [r.index for r in read] == list(range(len(rows)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-1, 6), st.sampled_from(["0", "1", True, 1.0])),
            st.sampled_from([b"\n", b"\n\n"]),
        ),
        max_size=12,
    )
)
def test_each_id_explicit_or_row_number_is_refused_when_an_earlier_row_had_it(
    open_jsonl: Open, rows: list[tuple[object, bytes]]
) -> None:
    data = b"".join(
        orjson.dumps({"prompt": "p"} if i is None else {"id": i, "prompt": "p"}) + ending
        for i, ending in rows
    )
    first_line: dict[tuple[str, object], int] = {}
    expected: list[int | None] = []  # per row: the line that had its id first, if any
    line = 1
    for index, (raw, ending) in enumerate(rows):
        row_id = index if raw is None else raw
        key = (type(row_id).__name__, row_id)
        expected.append(first_line.get(key))
        first_line.setdefault(key, line)
        line += len(ending)

    read = read_all(open_jsonl(data))

    assert [r.id for r in read] == [index if i is None else i for index, (i, _) in enumerate(rows)]
    for row, first in zip(read, expected, strict=True):
        if first is None:
            assert isinstance(row, Request)
        else:
            assert f" was first seen at line {first}" in error_of(row)


def test_over_long_first_line_with_a_bom_is_one_error_row(open_jsonl: Open) -> None:
    data = b'\xef\xbb\xbf{"prompt": "' + b"x" * 100 + b'"}\n{"prompt": "b"}\n'

    rows = read_all(open_jsonl(data, max_line_bytes=50))

    assert [(type(r), r.line) for r in rows] == [(InvalidRow, 1), (Request, 2)]


def test_rows_can_be_read_only_once(open_jsonl: Open) -> None:
    with open_jsonl(jsonl({"prompt": "a"})) as source:
        list(source.chunks())
        with pytest.raises(RuntimeError, match="read already"):
            source.chunks()
