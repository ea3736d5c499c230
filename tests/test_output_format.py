"""Output format: which format a path gets, the columns every row starts with, JSON text."""

from __future__ import annotations

import base64
import datetime as dt
import errno
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest

from batching.errors import OutputError
from batching.location import Location, OutputFormat
from batching.output_format import (
    FIXED_COLUMNS,
    OPTIONAL_COLUMNS,
    dumps,
    dumps_line,
    not_ours,
    output_format,
    read_error,
)
from batching.records import ERROR_ENGINE, Result, RowError


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, "jsonl"),
        ("-", "jsonl"),
        ("out.jsonl", "jsonl"),
        ("out.json", "jsonl"),
        ("out.ndjson", "jsonl"),
        ("OUT.JSONL", "jsonl"),
        ("out.parquet", "parquet"),
        ("out.pq", "parquet"),
        ("file:///data/out.pq", "parquet"),
        ("s3://bucket/out.parquet?region=eu-west-1", "parquet"),
        (Location.of("runs/out.jsonl"), "jsonl"),
    ],
)
def test_the_extension_names_the_format(where: str | Location | None, expected: str) -> None:
    assert output_format(where) == expected


@pytest.mark.parametrize(
    ("where", "override"),
    [
        ("out.txt", "parquet"),
        ("out", "jsonl"),
        (None, "parquet"),
        ("-", "openai"),
        ("out.jsonl", "openai"),
        ("out.jsonl", "parquet"),
        ("out.parquet", "parquet"),
        # OpenAI batch lines are JSON Lines, and compress as such.
        ("out.jsonl.zst", "openai"),
    ],
)
def test_the_option_wins_over_the_extension(where: str | None, override: OutputFormat) -> None:
    assert output_format(where, override) == override


@pytest.mark.parametrize("override", ["jsonl", "openai"])
def test_json_lines_into_a_parquet_name_are_refused(override: OutputFormat) -> None:
    with pytest.raises(OutputError) as refused:
        output_format("file:///data/out.parquet", override)

    # The message names the path as it is opened, not the URI.
    assert str(refused.value) == (
        f"/data/out.parquet: --output-format {override} writes JSON Lines, not Parquet; "
        f"name the file .jsonl (or drop --output-format {override})"
    )


@pytest.mark.parametrize(
    ("where", "extension"),
    [
        ("out.csv", ".csv"),
        ("out", "(none)"),
        ("out.txt.gz", ".txt"),
        ("file:///data/out.txt", ".txt"),
    ],
)
def test_an_unknown_extension_is_refused_with_the_ways_on(where: str, extension: str) -> None:
    with pytest.raises(OutputError) as refused:
        output_format(where)

    path = Location.of(where).path
    assert str(refused.value) == (
        f"{path}: unknown output format for extension {extension}; name the file .jsonl, "
        ".jsonl.gz, .jsonl.zst or .parquet, or pass --output-format jsonl, parquet or openai"
    )


# -- columns ----------------------------------------------------------------------------


def test_the_fixed_columns_are_the_documented_ones_in_order() -> None:
    assert FIXED_COLUMNS == (
        "id",
        "output",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "error",
    )
    assert OPTIONAL_COLUMNS == ("logprobs",)


@pytest.mark.parametrize(
    "result",
    [
        Result(index=0, id="a", output="x", finish_reason="stop", kept={"topic": "t"}),
        Result(index=1, id=1, error=RowError(ERROR_ENGINE, "boom"), kept={"topic": None}),
        Result(index=2, id=2, output=["x", "y"], logprobs=[[], []], kept={"a": 1, "b": 2}),
        # A kept field named like a fixed column does not move or repeat it.
        Result(index=3, id=3, output="x", kept={"output": "from input", "z": 0}),
    ],
)
def test_every_row_starts_with_the_fixed_columns_then_optional_then_kept(result: Result) -> None:
    names = list(result.to_dict())
    optional = [name for name in OPTIONAL_COLUMNS if name in names]
    kept = [name for name in result.kept if name not in FIXED_COLUMNS]

    assert names == [*FIXED_COLUMNS, *optional, *kept]


# -- JSON text --------------------------------------------------------------------------


def test_decimals_keep_every_digit() -> None:
    value = Decimal("12345678901234567890.000000000001")

    assert dumps({"price": value}) == b'{"price":"12345678901234567890.000000000001"}'


@pytest.mark.parametrize("blob", [b"\x00\xff\x10", bytearray(b"\x00\xff\x10")])
def test_bytes_are_base64_text(blob: bytes | bytearray) -> None:
    assert orjson.loads(dumps({"blob": blob})) == {
        "blob": base64.b64encode(b"\x00\xff\x10").decode()
    }


def test_a_memoryview_is_base64_text_of_its_bytes() -> None:
    assert dumps(memoryview(b"\x01\x02")) == b'"AQI="'


def test_dates_and_times_are_iso_text() -> None:
    value = {"at": dt.datetime(2024, 5, 1, 12, 30), "day": dt.date(2024, 5, 1)}

    assert dumps(value) == b'{"at":"2024-05-01T12:30:00","day":"2024-05-01"}'


def test_a_value_json_does_not_know_is_its_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd one"

    value = uuid.UUID(int=1)

    assert dumps([Odd(), value]) == b'["odd one","00000000-0000-0000-0000-000000000001"]'


@pytest.mark.parametrize(
    "value",
    [{"id": 7, "output": "x\ny"}, [Decimal("1.10"), b"\x00"], None, "text with \n newline"],
)
def test_a_line_is_the_json_text_and_one_newline(value: Any) -> None:
    line = dumps_line(value)

    assert line == dumps(value) + b"\n"
    assert line.count(b"\n") == 1  # a newline inside a value stays escaped


# -- messages ---------------------------------------------------------------------------


def test_a_file_we_did_not_write_is_refused_with_what_to_do() -> None:
    error = not_ours("out.parquet.parts", "part 1 of 2 is missing")

    assert isinstance(error, OutputError)
    assert str(error) == (
        "out.parquet.parts: part 1 of 2 is missing, so not an output of bizra-batch; "
        "use --overwrite"
    )


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            IsADirectoryError(errno.EISDIR, "Is a directory"),
            "out.jsonl: is a directory; name a file",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "out.jsonl: cannot read the existing output (Permission denied)",
        ),
        (OSError("odd"), "out.jsonl: cannot read the existing output (odd)"),
    ],
)
def test_an_existing_output_that_cannot_be_read_says_why(exc: OSError, message: str) -> None:
    error = read_error("out.jsonl", exc)

    assert isinstance(error, OutputError)
    assert str(error) == message
