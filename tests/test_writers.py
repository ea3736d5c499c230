"""Writing results: one row per result, in order, readable back as what was written."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import tempfile
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

from batching import writers
from batching.config import OutputConfig
from batching.errors import OutputError
from batching.records import ERROR_ENGINE, Result, RowError
from batching.writers import ExistingOutput, open_writer, scan_output

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


def read_rows(path: Path) -> list[dict[str, Any]]:
    return parquet_rows(path) if path.suffix == ".parquet" else jsonl_rows(path.read_bytes())


def parts_of(path: Path) -> list[str]:
    return sorted(os.listdir(f"{path}.parts"))


def row_group_sizes(path: Path) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


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


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_existing_output_is_refused_unless_resume_or_overwrite(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("precious\n")

    with pytest.raises(
        OutputError,
        match=rf"{name}: already exists; pass --resume to continue it or --overwrite to replace it",
    ):
        open_writer(OutputConfig(path=str(path)))
    assert path.read_text() == "precious\n"
    assert os.listdir(tmp_path) == [name]

    with open_writer(OutputConfig(path=str(path), overwrite=True)) as writer:
        writer.write([ok(0)])
    assert [r["id"] for r in read_rows(path)] == [0]


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="pass --resume or --overwrite, not both"):
        open_writer(OutputConfig(path=str(tmp_path / "out.jsonl"), resume=True, overwrite=True))


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


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_new_file_gets_the_users_umask(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
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


def test_parquet_to_stdout_has_a_row_group_per_flush_and_is_readable_after_close() -> None:
    out = io.BytesIO()

    with open_writer(OutputConfig(format="parquet"), stdout=out) as writer:
        writer.write([ok(0), ok(1)])
        writer.flush()
        writer.write([ok(2)])
        writer.flush(durable=True)
        writer.flush()  # nothing new: no empty row group
        writer.write([ok(3)])

    assert pq.ParquetFile(pa.BufferReader(out.getvalue())).metadata.num_row_groups == 3
    assert [r["id"] for r in parquet_rows(out)] == [0, 1, 2, 3]


def test_parquet_file_is_regrouped_whatever_the_flushes(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"

    with open_writer(OutputConfig(path=str(path)), row_group_rows=3) as writer:
        writer.write([ok(0), ok(1)])
        writer.flush()
        writer.write([ok(2)])
        writer.flush(durable=True)
        writer.flush(durable=True)  # nothing new: no empty part
        writer.write([ok(3)])
        writer.flush()  # into an open part, sealed at the next durable flush or close
        assert parts_of(path) == ["part-000000.parquet", "part-000001.parquet.tmp"]

    assert row_group_sizes(path) == [3, 1]
    assert [r["id"] for r in parquet_rows(path)] == [0, 1, 2, 3]
    assert os.listdir(tmp_path) == ["out.parquet"]  # the parts are gone


def test_parquet_holds_at_most_a_row_group_between_flushes(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"

    with open_writer(OutputConfig(path=str(path)), row_group_rows=4) as writer:
        writer.write([ok(i) for i in range(6)])
        assert writer.rows_written == 6
        writer.write([ok(6)])
        assert writer.rows_written == 6  # held until the group fills or a flush
        writer.write([ok(i) for i in range(7, 10)])
        assert writer.rows_written == 10

    assert row_group_sizes(path) == [4, 4, 2]
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


# -- resume ----------------------------------------------------------------------------


def resumable(path: Path, **options: Any) -> OutputConfig:
    return OutputConfig(path=str(path), **options)


def write_in_batches(
    cfg: OutputConfig, results: list[Result], sizes: list[int], *, row_group_rows: int = 4
) -> None:
    """One uninterrupted run that durably flushes after each batch of `sizes`."""
    with open_writer(cfg, row_group_rows=row_group_rows) as writer:
        start = 0
        for size in [*sizes, len(results)]:
            writer.write(results[start : start + size])
            writer.flush(durable=True)
            start += size


def crash_after(
    cfg: OutputConfig, results: list[Result], sizes: list[int], *, row_group_rows: int = 4
) -> None:
    """A run that durably flushes after each batch of `sizes`, then writes one more
    batch (flushed, but not durably) and dies without close()."""
    writer = open_writer(cfg, row_group_rows=row_group_rows)
    start = 0
    for size in sizes:
        writer.write(results[start : start + size])
        writer.flush(durable=True)
        start += size
    writer.write(results[start : start + 1])
    writer.flush()
    del writer  # no close(): nothing assembles, no footer on what is open


def results_for_resume(count: int) -> list[Result]:
    return [
        ok(i, topic=f"t{i}", n=i) if i % 3 else failed(i, topic=None, n=i) for i in range(count)
    ]


@pytest.mark.parametrize("torn", [b"", b'{"id":3,"outp', b"x" * 200_000])
def test_jsonl_resume_cuts_a_torn_line_and_is_byte_identical_to_one_run(
    tmp_path: Path, torn: bytes
) -> None:
    path, one_run = tmp_path / "out.jsonl", tmp_path / "one.jsonl"
    results = results_for_resume(7)
    with open_writer(resumable(path)) as writer:
        writer.write(results[:3])
    with path.open("ab") as file:
        file.write(torn)  # the start of a batch that a crash cut short

    existing = scan_output(resumable(path))
    assert existing == ExistingOutput(str(path), "jsonl", rows=3, torn_bytes=len(torn))
    with open_writer(resumable(path, resume=True)) as writer:
        assert path.read_bytes().endswith(b"}\n")  # the torn line is gone before any write
        writer.write(results[existing.rows :])
    write_in_batches(resumable(one_run), results, [])

    assert path.read_bytes() == one_run.read_bytes()
    assert list(existing.ids()) == [0, 1, 2]  # still only the rows it counted


def test_jsonl_resume_of_a_file_that_is_all_torn_starts_it_over(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":0,"out')

    existing = scan_output(resumable(path))
    assert existing is not None and (existing.rows, existing.torn_bytes) == (0, 12)
    assert list(existing.ids()) == []
    with open_writer(resumable(path, resume=True)) as writer:
        writer.write([ok(0)])

    assert jsonl_rows(path.read_bytes()) == [ok(0).to_dict()]


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_resume_with_no_earlier_output_starts_one(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert scan_output(resumable(path)) is None

    with open_writer(resumable(path, resume=True)) as writer:
        writer.write([ok(0), ok(1)])

    assert [r["id"] for r in read_rows(path)] == [0, 1]


@pytest.mark.parametrize("path", [None, "-"])
def test_stdout_has_no_existing_output(path: str | None) -> None:
    assert scan_output(OutputConfig(path=path, format="parquet")) is None
    assert scan_output(OutputConfig(path=path)) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b'{"id":0}\n[1, 2\n', "not valid JSON"), (b'{"id":0}\n{"output":"x"}\n', 'an "id"')],
)
def test_jsonl_that_is_not_an_output_is_refused_with_its_line(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)

    with pytest.raises(OutputError, match=rf"out\.jsonl:2: .*{problem}.*; use --overwrite"):
        scan_output(resumable(path))


def test_parquet_resume_after_a_crash_assembles_the_same_file_as_one_run(tmp_path: Path) -> None:
    path, one_run = tmp_path / "out.parquet", tmp_path / "one.parquet"
    results = results_for_resume(11)
    crash_after(resumable(path), results, [3, 2])

    assert not path.exists()
    assert parts_of(path) == [
        "part-000000.parquet",
        "part-000001.parquet",
        "part-000002.parquet.tmp",  # the open part, never sealed
    ]
    existing = scan_output(resumable(path))
    assert existing == ExistingOutput(str(path), "parquet", rows=5)
    assert list(existing.ids()) == [0, 1, 2, 3, 4]

    writer = open_writer(resumable(path, resume=True), row_group_rows=4)
    assert parts_of(path) == ["part-000000.parquet", "part-000001.parquet"]
    writer.write(results[5:8])
    writer.flush(durable=True)
    assert parts_of(path)[-1] == "part-000002.parquet"  # numbering goes on
    writer.write(results[8:])
    writer.close()
    write_in_batches(resumable(one_run), results, [3])

    assert parquet_rows(path) == [r.to_dict() for r in results]
    assert pq.read_schema(path) == pq.read_schema(one_run)
    assert path.read_bytes() == one_run.read_bytes()
    assert row_group_sizes(path) == [4, 4, 3]
    assert sorted(os.listdir(tmp_path)) == ["one.parquet", "out.parquet"]


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_resume_after_kill_9_gives_the_output_of_one_run(tmp_path: Path, name: str) -> None:
    path, one_run = tmp_path / name, tmp_path / f"one{Path(name).suffix}"
    script = textwrap.dedent(
        f"""
        import os, signal
        from batching.config import OutputConfig
        from batching.records import Result
        from batching.writers import open_writer
        writer = open_writer(OutputConfig(path={str(path)!r}), row_group_rows=4)
        for start in range(0, 9, 3):
            writer.write([Result(index=i, id=i, output=str(i)) for i in range(start, start + 3)])
            writer.flush(durable=True)
        writer.write([Result(index=9, id=9, output="9")])
        writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)}, check=False
    )
    assert child.returncode == -9
    results = [Result(index=i, id=i, output=str(i)) for i in range(12)]

    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows in (9, 10)  # JSONL wrote the 10th whole
    assert list(existing.ids()) == list(range(existing.rows))
    with open_writer(resumable(path, resume=True), row_group_rows=4) as writer:
        writer.write(results[existing.rows :])
    write_in_batches(resumable(one_run), results, [3], row_group_rows=4)

    assert path.read_bytes() == one_run.read_bytes()


def test_parquet_leftover_temporary_files_are_ignored_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    results = results_for_resume(6)
    crash_after(resumable(path), results, [2])
    parts = Path(f"{path}.parts")
    (parts / "part-000001.parquet.tmp").write_bytes(b"PAR1 half a part")
    (parts / "assembled.parquet.tmp").write_bytes(b"PAR1 half an assembly")

    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows == 2
    with open_writer(resumable(path, resume=True)) as writer:
        assert parts_of(path) == ["part-000000.parquet"]
        writer.write(results[2:])

    assert parquet_rows(path) == [r.to_dict() for r in results]


def test_parquet_resume_of_a_finished_file_continues_it(tmp_path: Path) -> None:
    path, one_run = tmp_path / "out.parquet", tmp_path / "one.parquet"
    results = results_for_resume(10)
    write_in_batches(resumable(path), results[:6], [], row_group_rows=4)
    existing = scan_output(resumable(path))
    assert existing == ExistingOutput(str(path), "parquet", rows=6)

    writer = open_writer(resumable(path, resume=True), row_group_rows=4)
    assert not path.exists()  # the finished file is now the first part
    assert parts_of(path) == ["part-000000.parquet"]
    assert list(existing.ids()) == list(range(6))  # found in its new place
    writer.write(results[6:])
    writer.close()
    write_in_batches(resumable(one_run), results, [6], row_group_rows=4)

    assert path.read_bytes() == one_run.read_bytes()
    assert list(existing.ids()) == list(range(6))  # at most the rows it counted


def test_parquet_parts_left_by_an_interrupted_close_give_way_to_the_finished_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.parquet"
    results = results_for_resume(6)
    write_in_batches(resumable(path), results[:5], [])
    # close() had replaced <out> and deleted part 0 when it died.
    os.mkdir(f"{path}.parts")
    (Path(f"{path}.parts") / "part-000001.parquet").write_bytes(path.read_bytes())

    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows == 5
    with open_writer(resumable(path, resume=True)) as writer:
        writer.write(results[5:])

    assert parquet_rows(path) == [r.to_dict() for r in results]


def test_parquet_parts_of_an_unfinished_run_count_as_an_existing_output(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    crash_after(resumable(path), results_for_resume(4), [2])

    with pytest.raises(OutputError, match="pass --resume to continue it or --overwrite"):
        open_writer(resumable(path))
    with open_writer(resumable(path, overwrite=True)) as writer:
        writer.write([ok(9)])

    assert [r["id"] for r in parquet_rows(path)] == [9]
    assert os.listdir(tmp_path) == ["out.parquet"]


def test_parquet_run_that_fails_keeps_its_parts_for_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    results = results_for_resume(6)

    with pytest.raises(KeyboardInterrupt), open_writer(resumable(path)) as writer:
        writer.write(results[:2])
        writer.flush(durable=True)
        writer.write(results[2:4])
        writer.flush()
        writer.write(results[4:5])  # pending: dropped, resume redoes it
        raise KeyboardInterrupt

    assert not path.exists()  # a half output never looks finished
    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows == 4
    with open_writer(resumable(path, resume=True)) as resumed:
        resumed.write(results[4:])
    assert parquet_rows(path) == [r.to_dict() for r in results]


def test_parquet_resume_keeps_the_column_types_of_the_rows_it_continues(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    first = [Result(index=0, id="a", kept={"n": None}), Result(index=1, id="b", kept={"n": None})]
    crash_after(resumable(path), first, [2])

    with open_writer(resumable(path, resume=True)) as writer:
        # One run would have made `n` JSON text and `id` a string from the first rows.
        writer.write(
            [Result(index=2, id=3, kept={"n": 5}), Result(index=3, id="d", kept={"n": [1]})]
        )

    schema = pq.read_schema(path)
    assert (str(schema.field("id").type), str(schema.field("n").type)) == ("string", "string")
    assert [(r["id"], r["n"]) for r in parquet_rows(path)] == [
        ("a", None),
        ("b", None),
        ("3", "5"),
        ("d", "[1]"),
    ]
    existing = scan_output(resumable(path))
    assert existing is not None and list(existing.ids()) == ["a", "b", 3, "d"]


@pytest.mark.parametrize(
    ("ids", "read_back"),
    [
        (["a", 2, True, 2.5, '"q"'], ["a", 2, True, 2.5, '"q"']),
        # Strings that look like numbers stay strings, next to the numbers too.
        (["7", "true", "x"], ["7", "true", "x"]),
        (["7", 8, "9", "10", 11, 12, "false", False], ["7", 8, "9", "10", 11, 12, "false", False]),
        ([1, 2, 3], [1, 2, 3]),
    ],
)
def test_parquet_ids_read_back_as_they_were_written(
    tmp_path: Path, ids: list[Any], read_back: list[Any]
) -> None:
    path = tmp_path / "out.parquet"
    results = [Result(index=i, id=row_id) for i, row_id in enumerate(ids)]
    crash_after(resumable(path), results, [2, len(ids) - 2])
    parts = scan_output(resumable(path))
    assert parts is not None and list(parts.ids()) == read_back

    open_writer(resumable(path, resume=True)).close()  # assembled into one file
    finished = scan_output(resumable(path))
    assert finished is not None and list(finished.ids()) == read_back


def test_parquet_that_is_not_an_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": [1]}), path)

    with pytest.raises(OutputError, match=r"out\.parquet: not the columns .*; use --overwrite"):
        scan_output(resumable(path))
    with pytest.raises(OutputError, match=r"out\.parquet: not the columns .*; use --overwrite"):
        open_writer(resumable(path, resume=True))
    assert pq.read_table(path).column_names == ["x"]  # left where it was


resume_cases = st.tuples(results_strategy, st.lists(st.integers(1, 5), max_size=5), st.binary())


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=resume_cases, suffix=st.sampled_from([".jsonl", ".parquet"]))
def test_crash_and_resume_gives_the_output_of_one_run(
    tmp_path: Path, case: tuple[Raw, list[int], bytes], suffix: str
) -> None:
    raw, sizes, torn = case
    kinds = {type(extra) for _, _, extra in raw} - {type(None)}
    if len(kinds) > 1 or list in kinds:  # see the Parquet round trip above
        raw = [(output, error, None) for output, error, _ in raw]
    results = build_results(raw)
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        path, one_run = Path(scratch) / f"out{suffix}", Path(scratch) / f"one{suffix}"
        crash_after(resumable(path), results, sizes)
        if suffix == ".jsonl":
            with path.open("ab") as file:
                file.write(torn.replace(b"\n", b" "))

        existing = scan_output(resumable(path))
        done = existing.rows if existing else 0
        assert list(existing.ids() if existing else []) == [r.id for r in results[:done]]
        with open_writer(resumable(path, resume=True), row_group_rows=4) as writer:
            writer.write(results[done:])
        write_in_batches(resumable(one_run), results, sizes[:1])

        assert path.read_bytes() == one_run.read_bytes()


def test_parquet_ids_past_the_listed_runs_decode_whatever_looks_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writers, "_MAX_JSON_ID_RUNS", 2)
    path = tmp_path / "out.parquet"
    ids = ["a", 1, "b", 2, "c", 3, "4"]
    with open_writer(resumable(path)) as writer:
        writer.write([Result(index=i, id=row_id) for i, row_id in enumerate(ids)])

    existing = scan_output(resumable(path))
    assert [r["id"] for r in parquet_rows(path)] == ["a", "1", "b", "2", "c", "3", "4"]
    assert existing is not None and list(existing.ids()) == ["a", 1, "b", 2, "c", 3, 4]


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_failed_rows_give_back_the_results_that_failed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    results = [
        Result(index=0, id="zero", output="fine", kept={"topic": "a", "meta": {"k": 1}}),
        failed(1, topic="b", meta={"k": [2]}),
        Result(index=2, id="2", error=RowError("invalid_input", "bad"), kept={"topic": "c"}),
        failed(3, topic=None, meta=None),
        failed(4, topic="e", meta=None),  # after the crash: not in the output
    ]
    crash_after(resumable(path), results, [2, 2])
    (path.parent / f"{path.name}.parts" / "part-000002.parquet.tmp").unlink(missing_ok=True)
    if name.endswith(".jsonl"):  # JSONL wrote the last row whole; drop it for the test
        path.write_bytes(path.read_bytes().rsplit(b"\n", 2)[0] + b"\n")

    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows == 4
    batches = list(existing.failed_rows(batch_rows=2))

    assert [len(batch) for batch in batches] == [2, 1]
    got = [result for batch in batches for result in batch]
    # From Parquet a row has every kept column; "c" had no "meta" and reads back None.
    expected = [r.to_dict() for r in results[1:4]]
    if name.endswith(".parquet"):
        expected[1]["meta"] = None
    assert [(r.index, r.to_dict()) for r in got] == list(zip([1, 2, 3], expected, strict=True))
