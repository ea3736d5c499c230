"""Writing results: one row per result, in order, readable back as what was written."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.config import OutputConfig
from batching.errors import OutputError
from batching.records import ERROR_ENGINE, Result, RowError
from batching.writers import open_writer

REPO = Path(__file__).resolve().parents[1]


def ok(index: int, **kept: Any) -> Result:
    return Result(
        index=index,
        id=index,
        output=f"out {index}",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=5,
        kept=kept,
    )


def failed(index: int, **kept: Any) -> Result:
    return Result(index=index, id=index, error=RowError(ERROR_ENGINE, "boom"), kept=kept)


def jsonl_rows(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def parquet_rows(path: Path | io.BytesIO) -> list[dict[str, Any]]:
    source = pa.BufferReader(path.getvalue()) if isinstance(path, io.BytesIO) else path
    return list(pq.read_table(source).to_pylist())


@pytest.mark.parametrize("path", [None, "-"])
def test_jsonl_to_stdout_writes_one_line_per_result_in_order(path: str | None) -> None:
    stdout = io.BytesIO()
    results = [ok(0, topic="a"), failed(1, topic=None), ok(2, topic="c")]

    with open_writer(OutputConfig(path=path), stdout=stdout) as writer:
        writer.write(results[:2])
        writer.write([])
        writer.write(results[2:])

    assert jsonl_rows(stdout.getvalue()) == [r.to_dict() for r in results]
    assert stdout.getvalue().endswith(b"}\n")
    assert not stdout.closed  # stdout belongs to the process, not the writer


def test_jsonl_file_holds_every_written_row_after_each_flush(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    with open_writer(OutputConfig(path=str(path))) as writer:
        writer.write([ok(0), ok(1)])
        writer.flush(durable=True)
        assert [r["id"] for r in jsonl_rows(path.read_bytes())] == [0, 1]
        writer.write([ok(2)])
        assert writer.rows_written == 3

    assert [r["output"] for r in jsonl_rows(path.read_bytes())] == ["out 0", "out 1", "out 2"]


def test_jsonl_error_row_has_null_outputs_and_an_error_object() -> None:
    stdout = io.BytesIO()

    with open_writer(OutputConfig(), stdout=stdout) as writer:
        writer.write([failed(4, topic="t")])

    assert jsonl_rows(stdout.getvalue()) == [
        {
            "id": 4,
            "output": None,
            "finish_reason": None,
            "prompt_tokens": None,
            "completion_tokens": None,
            "error": {"type": ERROR_ENGINE, "message": "boom"},
            "topic": "t",
        }
    ]


def test_jsonl_writes_kept_values_that_only_parquet_input_has() -> None:
    stdout = io.BytesIO()
    kept = {"price": Decimal("1.10"), "blob": b"\x00\xff", "at": dt.datetime(2024, 5, 1, 12)}

    with open_writer(OutputConfig(), stdout=stdout) as writer:
        writer.write([ok(0, **kept)])

    [row] = jsonl_rows(stdout.getvalue())
    assert (row["price"], row["blob"], row["at"]) == ("1.10", "AP8=", "2024-05-01T12:00:00")


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("precious\n")

    with pytest.raises(OutputError, match=r"out\.jsonl: already exists; pass --overwrite"):
        open_writer(OutputConfig(path=str(path)))
    assert path.read_text() == "precious\n"

    with open_writer(OutputConfig(path=str(path), overwrite=True)) as writer:
        writer.write([ok(0)])
    assert len(jsonl_rows(path.read_bytes())) == 1


def test_output_in_a_missing_directory_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "out.jsonl"

    with pytest.raises(OutputError, match=r"out\.jsonl: directory .*nowhere does not exist"):
        open_writer(OutputConfig(path=str(path)))


def test_unknown_extension_suggests_output_format(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"out\.csv: unknown output format.*--output-format"):
        open_writer(OutputConfig(path=str(tmp_path / "out.csv")))


def test_format_option_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"

    with open_writer(OutputConfig(path=str(path), format="parquet")) as writer:
        writer.write([ok(0)])

    assert parquet_rows(path)[0]["output"] == "out 0"


def test_new_file_gets_the_users_umask(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    old = os.umask(0o027)
    try:
        open_writer(OutputConfig(path=str(path))).close()
    finally:
        os.umask(old)

    assert path.stat().st_mode & 0o777 == 0o640


def test_parquet_columns_and_types(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    results = [
        ok(0, topic="a", n=1, score=1, flag=True, meta={"k": [1]}, note=None, mixed=1),
        failed(1, topic="b", n=2, score=0.5, flag=False, meta=None, note=None, mixed="x"),
    ]

    with open_writer(OutputConfig(path=str(path))) as writer:
        writer.write(results)

    schema = pq.read_schema(path)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "int64"),
        ("output", "string"),
        ("finish_reason", "string"),
        ("prompt_tokens", "int64"),
        ("completion_tokens", "int64"),
        ("error", "struct<type: string, message: string>"),
        ("topic", "string"),
        ("n", "int64"),
        ("score", "double"),
        ("flag", "bool"),
        ("meta", "string"),
        ("note", "string"),
        ("mixed", "string"),
    ]
    rows = parquet_rows(path)
    assert rows[1]["error"] == {"type": ERROR_ENGINE, "message": "boom"}
    assert rows[0]["error"] is None
    # Objects, and fields of mixed or unknown type, are JSON text.
    assert (rows[0]["meta"], rows[0]["mixed"], rows[1]["mixed"]) == ('{"k":[1]}', "1", '"x"')


def test_parquet_ids_are_strings_when_not_all_integers() -> None:
    out = io.BytesIO()
    results = [Result(index=0, id="a"), Result(index=1, id=2), Result(index=2, id=True)]

    with open_writer(OutputConfig(format="parquet"), stdout=out) as writer:
        writer.write(results)

    assert [r["id"] for r in parquet_rows(out)] == ["a", "2", "true"]


def test_parquet_row_group_per_flush_and_readable_after_close(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"

    with open_writer(OutputConfig(path=str(path))) as writer:
        writer.write([ok(0), ok(1)])
        writer.flush()
        writer.write([ok(2)])
        writer.flush(durable=True)
        writer.flush()  # nothing new: no empty row group
        writer.write([ok(3)])

    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert [r["id"] for r in parquet_rows(path)] == [0, 1, 2, 3]


def test_parquet_holds_at_most_a_row_group_between_flushes(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"

    with open_writer(OutputConfig(path=str(path)), row_group_rows=4) as writer:
        writer.write([ok(i) for i in range(6)])
        assert writer.rows_written == 6
        writer.write([ok(6)])
        assert writer.rows_written == 6  # held until the group fills or a flush
        writer.write([ok(i) for i in range(7, 10)])
        assert writer.rows_written == 10

    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    assert [r["id"] for r in parquet_rows(path)] == list(range(10))


def test_parquet_with_no_rows_is_a_valid_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"

    open_writer(OutputConfig(path=str(path))).close()

    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.column_names[:2] == ["id", "output"]


def test_parquet_value_that_no_longer_fits_its_column_is_an_output_error() -> None:
    out = io.BytesIO()
    writer = open_writer(OutputConfig(format="parquet"), stdout=out)
    writer.write([ok(0, n=1)])
    writer.flush()
    writer.write([ok(1, n="many")])

    with pytest.raises(OutputError, match=r"column 'n' was made int64.*write JSONL"):
        writer.flush()
    writer.close()

    assert [r["n"] for r in parquet_rows(out)] == [1]  # the rows before it stay readable


def test_parquet_later_string_id_in_an_integer_id_column_is_an_output_error() -> None:
    writer = open_writer(OutputConfig(format="parquet"), stdout=io.BytesIO())
    writer.write([ok(0)])
    writer.flush()
    writer.write([Result(index=1, id="b")])

    with pytest.raises(OutputError, match="id 'b' of row 2 is not an integer"):
        writer.flush()


def test_durable_flush_to_a_pipe_is_fine() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as pipe:
        writer = open_writer(OutputConfig(), stdout=pipe)
        writer.write([ok(0)])
        writer.flush(durable=True)
        writer.close()
        pipe.close()
        assert jsonl_rows(reader.read())[0]["id"] == 0


def test_closed_pipe_raises_broken_pipe_and_close_stays_quiet() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as pipe:
        writer = open_writer(OutputConfig(), stdout=pipe)
        with pytest.raises(BrokenPipeError):
            writer.write([ok(i) for i in range(10_000)])
        writer.close()  # no second BrokenPipeError from a leftover buffer


def test_real_stdout_into_a_closed_pipe_leaves_no_buffered_mess() -> None:
    script = textwrap.dedent(
        """
        from batching.config import OutputConfig
        from batching.records import Result
        from batching.writers import open_writer
        with open_writer(OutputConfig()) as writer:
            for start in range(0, 10_000_000, 1000):
                writer.write([Result(index=i, id=i, output="x" * 50)
                              for i in range(start, start + 1000)])
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()
    child.stdout.close()
    stderr = child.stderr.read().decode()
    child.wait(timeout=60)

    assert orjson.loads(first)["id"] == 0
    assert "BrokenPipeError" in stderr  # propagated for the pipeline to handle
    assert "Exception ignored" not in stderr


kept_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8"), max_size=10),
    st.lists(st.integers(-5, 5), max_size=3),
)
texts = st.text(st.characters(codec="utf-8"), max_size=20)
results_strategy = st.lists(
    st.tuples(st.one_of(st.none(), texts), st.booleans(), kept_values), max_size=30
)
Raw = list[tuple[Any, bool, Any]]


def build_results(raw: Raw) -> list[Result]:
    return [
        Result(
            index=i,
            id=f"row-{i}",
            output=None if error else output,
            finish_reason=None if error else "length",
            prompt_tokens=None if error else i,
            completion_tokens=None if error else 2 * i,
            error=RowError(ERROR_ENGINE, f"failed {i}") if error else None,
            kept={"extra": extra},
        )
        for i, (output, error, extra) in enumerate(raw)
    ]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=results_strategy, batch=st.integers(1, 7))
def test_jsonl_round_trip_gives_back_every_result_in_order(raw: Raw, batch: int) -> None:
    results = build_results(raw)
    stdout = io.BytesIO()

    with open_writer(OutputConfig(), stdout=stdout) as writer:
        for start in range(0, len(results), batch):
            writer.write(results[start : start + batch])

    assert jsonl_rows(stdout.getvalue()) == [r.to_dict() for r in results]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=results_strategy, batch=st.integers(1, 7))
def test_parquet_round_trip_gives_back_every_result_in_order(raw: Raw, batch: int) -> None:
    # One kind of kept value per file: a field that changes type is JSONL's job.
    kinds = {type(extra) for _, _, extra in raw} - {type(None)}
    if len(kinds) > 1 or list in kinds:
        raw = [(output, error, None) for output, error, _ in raw]
    results = build_results(raw)
    out = io.BytesIO()

    with open_writer(OutputConfig(format="parquet"), stdout=out) as writer:
        for start in range(0, len(results), batch):
            writer.write(results[start : start + batch])
        writer.flush()

    assert parquet_rows(out) == [r.to_dict() for r in results]
