"""Parquet format: the columns and types of an output, its parts, and ids kept as JSON text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batching.errors import OutputError
from batching.parquet_format import (
    JSON_COLUMNS_KEY,
    PARTS_SUFFIX,
    JsonIdRuns,
    ParquetLayout,
    parquet_rows,
    parquet_sources,
    part_path,
    read_schema,
    whole_parts,
)
from batching.records import ERROR_ENGINE, Result
from tests.output_helpers import failed, ok


def layout_for(first: list[Result]) -> ParquetLayout:
    layout = ParquetLayout(pa)
    layout.start(first)
    return layout


def columns(layout: ParquetLayout) -> list[tuple[str, str]]:
    return [(field.name, str(field.type)) for field in layout.schema]


def rows(layout: ParquetLayout, results: list[Result]) -> list[dict[str, Any]]:
    table, _ = layout.table(results, "out.parquet")
    return list(table.to_pylist())


def json_columns(layout: ParquetLayout) -> list[str]:
    return list(orjson.loads(layout.schema.metadata[JSON_COLUMNS_KEY]))


# -- columns and types ------------------------------------------------------------------


def test_columns_and_types_come_from_the_first_rows() -> None:
    results = [
        ok(0, topic="a", n=1, score=1, flag=True, meta={"k": [1]}, note=None, mixed=1),
        failed(1, topic="b", n=2, score=0.5, flag=False, meta=None, note=None, mixed="x"),
    ]

    layout = layout_for(results)

    assert columns(layout) == [
        ("id", "int64"),
        ("output", "string"),
        ("finish_reason", "string"),
        ("prompt_tokens", "int64"),
        ("completion_tokens", "int64"),
        ("error", "struct<type: string, message: string>"),
        ("topic", "string"),
        ("n", "int64"),
        ("score", "double"),  # int and float make float64
        ("flag", "bool"),
        ("meta", "string"),
        ("note", "string"),
        ("mixed", "string"),
    ]
    # Objects, fields null throughout, and fields of mixed kinds are JSON text.
    assert json_columns(layout) == ["meta", "note", "mixed"]
    first, second = rows(layout, results)
    assert (first["error"], second["error"]) == (None, {"type": ERROR_ENGINE, "message": "boom"})
    assert (first["meta"], first["mixed"], second["mixed"]) == ('{"k":[1]}', "1", '"x"')
    assert (first["score"], second["score"]) == (1.0, 0.5)


def test_a_json_text_column_takes_any_later_value() -> None:
    layout = layout_for([ok(0, note=None)])

    later = [ok(1, note=5), ok(2, note="five"), ok(3, note=[5]), ok(4, note=None)]

    assert [row["note"] for row in rows(layout, later)] == ["5", '"five"', "[5]", None]


def test_kept_columns_are_those_of_the_whole_first_row_group_in_order() -> None:
    layout = layout_for([ok(0, a=1), ok(1, b="x"), ok(2, a=2, c=True)])

    assert [name for name, _ in columns(layout)][6:] == ["a", "b", "c"]
    # A row without a kept field has null there; a field first seen later is dropped.
    assert rows(layout, [ok(3, b="y", d=1)])[0] == {
        **ok(3).to_dict(),
        "a": None,
        "b": "y",
        "c": None,
    }


def test_a_kept_field_named_like_a_fixed_column_is_not_a_second_column() -> None:
    layout = layout_for([ok(0, output="from the input", topic="t")])

    assert [name for name, _ in columns(layout)] == [
        "id",
        "output",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "error",
        "topic",
    ]
    assert rows(layout, [ok(0, output="from the input")])[0]["output"] == "out 0"


def test_a_later_value_that_does_not_fit_its_column_says_what_to_do() -> None:
    layout = layout_for([ok(0, n=1)])

    with pytest.raises(OutputError) as refused:
        layout.table([ok(1, n="many")], "out.parquet")

    message = str(refused.value)
    assert message.startswith(
        "out.parquet: column 'n' was made int64 from the first rows, but a later value does "
        "not fit ("
    )
    assert message.endswith("); write JSONL instead")


# -- ids --------------------------------------------------------------------------------


def test_integer_ids_make_an_integer_column() -> None:
    layout = layout_for([ok(0), ok(1)])

    assert columns(layout)[0] == ("id", "int64")
    assert rows(layout, [ok(5)])[0]["id"] == 5


@pytest.mark.parametrize(
    "ids",
    [
        ["a", 2, True],  # a bool is not an integer id
        [True, False],
        [1.5, 2],
        [],  # no rows: nothing says the ids are integers
    ],
)
def test_other_ids_make_a_string_column(ids: list[Any]) -> None:
    layout = layout_for([Result(index=i, id=id_) for i, id_ in enumerate(ids)])

    assert columns(layout)[0] == ("id", "string")


def test_ids_that_are_not_strings_are_json_text_and_their_rows_are_named() -> None:
    results = [
        Result(index=0, id="a"),
        Result(index=1, id=2),
        Result(index=2, id=True),
        Result(index=3, id="7"),
    ]
    layout = layout_for(results)

    table, json_ids = layout.table(results, "out.parquet")

    assert table.column("id").to_pylist() == ["a", "2", "true", "7"]
    assert json_ids == [1, 2]  # the string "7" is not the integer 7


def test_a_later_id_that_is_not_an_integer_in_an_integer_column_says_what_to_do() -> None:
    layout = layout_for([ok(0)])

    with pytest.raises(OutputError) as refused:
        layout.table([ok(1), Result(index=2, id="b")], "out.parquet")

    assert str(refused.value) == (
        "out.parquet: id 'b' of row 3 is not an integer, but the Parquet id column was made "
        "int64 from the first rows; write JSONL instead, or give every row an id of one type"
    )


def test_an_integer_id_past_int64_can_still_be_written() -> None:
    big = 2**64 - 1
    results = [Result(index=0, id=big, output="x"), Result(index=1, id=2, output="y")]
    layout = layout_for(results)

    table, _ = layout.table(results, "out.parquet")

    # A string column, the big id stored as its JSON text and listed as such.
    assert table.column("id").to_pylist() == [str(big), "2"]


# -- samples ----------------------------------------------------------------------------


def test_several_samples_in_the_first_rows_make_list_columns() -> None:
    first = [
        Result(index=0, id=0, output=["a", "b"], finish_reason=["stop", None]),
        Result(index=1, id=1, output="c", finish_reason="length"),
        failed(2),
    ]
    layout = layout_for(first)

    assert columns(layout)[1:3] == [
        ("output", "list<item: string>"),
        ("finish_reason", "list<item: string>"),
    ]
    assert [(row["output"], row["finish_reason"]) for row in rows(layout, first)] == [
        (["a", "b"], ["stop", None]),
        (["c"], ["length"]),  # a single sample is a list of one
        (None, None),  # a failed row has no samples
    ]


def test_one_sample_each_in_the_first_rows_make_string_columns() -> None:
    layout = layout_for([ok(0), failed(1)])

    assert columns(layout)[1:3] == [("output", "string"), ("finish_reason", "string")]


def test_a_later_row_with_several_samples_in_a_file_of_strings_says_what_to_do() -> None:
    layout = layout_for([ok(0)])
    later = Result(index=4, id=4, output=["a", "b", "c"], finish_reason=["stop"] * 3)

    with pytest.raises(OutputError) as refused:
        layout.table([ok(3), later], "out.parquet")

    assert str(refused.value) == (
        "out.parquet: row 5 has 3 samples (n > 1) but the first rows had one each, so the "
        "Parquet output column holds one text; pass --n to give every row several, or write "
        "JSONL"
    )


# -- logprobs ---------------------------------------------------------------------------


def test_logprobs_in_the_first_rows_are_a_json_text_column_after_error() -> None:
    logprobs = [{"token": "a", "logprob": -0.5, "top_logprobs": []}]
    first = [Result(index=0, id=0, output="a", logprobs=logprobs, kept={"topic": "t"}), failed(1)]
    layout = layout_for(first)

    assert [name for name, _ in columns(layout)][5:] == ["error", "logprobs", "topic"]
    assert json_columns(layout) == ["logprobs"]
    assert [row["logprobs"] for row in rows(layout, first)] == [
        '[{"token":"a","logprob":-0.5,"top_logprobs":[]}]',
        None,
    ]


def test_later_logprobs_without_a_column_say_what_to_do() -> None:
    layout = layout_for([ok(0)])

    with pytest.raises(OutputError) as refused:
        layout.table([Result(index=6, id=6, output="a", logprobs=[])], "out.parquet")

    assert "logprobs" not in layout.schema.names
    assert str(refused.value) == (
        "out.parquet: row 7 has logprobs but the first rows had none, so the Parquet file has "
        "no logprobs column; write JSONL instead"
    )


# -- a resumed output -------------------------------------------------------------------


def test_a_layout_from_a_written_schema_keeps_storing_rows_as_it_did() -> None:
    first = [Result(index=0, id="a", kept={"n": None, "topic": "t"})]
    written = layout_for(first)

    resumed = ParquetLayout(pa, written.schema)
    later = [Result(index=1, id=3, kept={"n": 5, "topic": "u"})]

    assert resumed.schema == written.schema
    # One run would make `n` int64 and `id` an integer from these rows alone.
    assert rows(resumed, later) == rows(written, later)
    assert [(row["id"], row["n"]) for row in rows(resumed, later)] == [("3", "5")]


# -- parts and sources ------------------------------------------------------------------


def write_output(path: Path, results: list[Result], **metadata: bytes) -> None:
    layout = layout_for(results)
    table, _ = layout.table(results, str(path))
    pq.write_table(table.replace_schema_metadata({**layout.schema.metadata, **metadata}), path)


def test_part_paths_sort_in_order_as_names() -> None:
    names = [part_path("out.parquet.parts", number) for number in (0, 9, 10, 999_999)]

    assert names == sorted(names)
    assert names[:2] == [
        "out.parquet.parts/part-000000.parquet",
        "out.parquet.parts/part-000009.parquet",
    ]


def test_whole_parts_are_the_sealed_parts_in_order(tmp_path: Path) -> None:
    parts = tmp_path / f"out.parquet{PARTS_SUFFIX}"
    parts.mkdir()
    for name in ["part-000001.parquet", "part-000000.parquet", "part-000002.parquet.tmp"]:
        (parts / name).write_bytes(b"")
    (parts / "assembled.parquet.tmp").write_bytes(b"")
    (parts / "notes.txt").write_bytes(b"")

    assert whole_parts(str(parts)) == [
        part_path(str(parts), 0),
        part_path(str(parts), 1),
    ]


def test_a_missing_part_is_refused(tmp_path: Path) -> None:
    parts = tmp_path / "out.parquet.parts"
    parts.mkdir()
    for number in (0, 2):
        Path(part_path(str(parts), number)).write_bytes(b"")

    with pytest.raises(OutputError) as refused:
        whole_parts(str(parts))

    assert str(refused.value) == (
        f"{parts}: part 1 of 2 is missing, so not an output of bizra-batch; use --overwrite"
    )


def test_a_parts_directory_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "out.parquet.parts"
    not_a_directory.write_bytes(b"")

    with pytest.raises(OutputError) as refused:
        whole_parts(str(not_a_directory))

    assert str(refused.value) == (
        f"{not_a_directory}: cannot read the existing output (Not a directory)"
    )


def test_sources_are_the_finished_file_else_the_parts_else_none(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    assert parquet_sources(str(path)) is None

    parts = Path(f"{path}{PARTS_SUFFIX}")
    parts.mkdir()
    Path(part_path(str(parts), 0)).write_bytes(b"")
    assert parquet_sources(str(path)) == [part_path(str(parts), 0)]

    path.write_bytes(b"")  # a finished file is the whole output
    assert parquet_sources(str(path)) == [str(path)]


def test_a_directory_at_the_output_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as refused:
        parquet_sources(str(tmp_path))

    assert str(refused.value) == f"{tmp_path}: is a directory; name a file"


def test_rows_and_schema_of_an_output_come_from_its_footer(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    write_output(path, [ok(0, topic="a"), ok(1, topic="b"), failed(2, topic=None)])

    assert parquet_rows(str(path)) == 3
    assert read_schema(str(path)).names[6:] == ["topic"]


def test_a_parquet_file_with_other_columns_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), path)

    for check in (parquet_rows, read_schema):
        with pytest.raises(OutputError) as refused:
            check(str(path))
        assert str(refused.value) == (
            f"{path}: not the columns it writes, so not an output of bizra-batch; use --overwrite"
        )


def test_a_file_that_is_not_parquet_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    path.write_bytes(b'{"id": 0}\n')

    for check in (parquet_rows, read_schema):
        with pytest.raises(OutputError) as refused:
            check(str(path))
        message = str(refused.value)
        assert message.startswith(f"{path}: not a readable Parquet file (")
        assert message.endswith("), so not an output of bizra-batch; use --overwrite")


# -- ids kept as JSON text --------------------------------------------------------------


def test_adjacent_rows_merge_into_one_run() -> None:
    runs = JsonIdRuns()
    for row in (1, 2, 3, 7):
        runs.add(row)
    runs.add(8, 10)

    assert runs.runs == [[1, 4], [7, 10]]


def test_runs_of_a_later_file_follow_on_from_its_offset() -> None:
    runs, later = JsonIdRuns(), JsonIdRuns()
    runs.add(3)
    later.add(0, 2)
    later.add(5)

    runs.extend(later, offset=4)

    assert runs.runs == [[3, 6], [9, 10]]


def test_only_the_listed_rows_are_decoded_back_to_what_they_were() -> None:
    runs = JsonIdRuns()
    runs.add(1, 3)
    runs.add(5)

    stored = ["7", "7", "true", "x", "7", "1.5"]
    assert runs.decode(list(stored), offset=0) == ["7", 7, True, "x", "7", 1.5]
    # A batch read from row 2 on decodes the rows of the file it holds.
    assert runs.decode(list(stored[2:]), offset=2) == [True, "x", "7", 1.5]


def test_runs_survive_the_footer(tmp_path: Path) -> None:
    runs = JsonIdRuns()
    runs.add(0)
    runs.add(2)
    path = tmp_path / "out.parquet"
    results = [Result(index=0, id=1), Result(index=1, id="1"), Result(index=2, id=2.5)]
    write_output(path, results, **{k.decode(): v for k, v in runs.metadata().items()})

    with pq.ParquetFile(path) as file:
        read = JsonIdRuns.read(file)
        ids = file.read().column("id").to_pylist()

    assert (read.runs, read.unlisted) == ([[0, 1], [2, 3]], False)
    assert read.decode(ids, offset=0) == [1, "1", 2.5]


def test_no_runs_leave_no_footer_entry() -> None:
    assert JsonIdRuns().metadata() == {}


def test_too_many_runs_are_dropped_for_a_bounded_footer() -> None:
    runs = JsonIdRuns()
    for row in range(0, 40_000, 2):  # every other row: no two runs merge
        runs.add(row)

    assert runs.unlisted and runs.runs == []
    assert runs.metadata() == {b"bizra_batch.json_id_rows": b"unlisted"}
    # Then every id that reads as a number or boolean is taken for JSON text.
    assert runs.decode(["7", '"a"', "abc", "null", "2.5", "false"], offset=0) == [
        7,
        '"a"',
        "abc",
        "null",
        2.5,
        False,
    ]


def test_an_unlisted_later_file_makes_the_whole_unlisted() -> None:
    runs, later = JsonIdRuns(), JsonIdRuns()
    runs.add(0)
    for row in range(0, 40_000, 2):
        later.add(row)

    runs.extend(later, offset=1)

    assert runs.unlisted and runs.runs == []
