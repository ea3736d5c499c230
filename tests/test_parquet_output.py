"""Parquet output: what the writer puts on disk, its row groups, parts that survive a crash."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.config import OutputConfig
from batching.errors import OutputError
from batching.records import Result
from batching.writers import ExistingOutput, open_writer, scan_output
from tests.output_helpers import (
    Raw,
    build_results,
    crash_after,
    ok,
    parquet_rows,
    parts_of,
    results_for_resume,
    results_strategy,
    resumable,
    resume_to_the_whole,
    row_group_sizes,
    write_in_batches,
)


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

    resume_to_the_whole(path, results, on_disk=5)


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
    resume_to_the_whole(path, results, on_disk=4)


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


def test_only_a_local_parquet_output_keeps_unfinished_rows_beside_it() -> None:
    # What `run` names after an interrupt: the parts directory, or the output itself.
    from batching.config import OutputConfig
    from batching.parquet_output import unfinished_rows_dir

    assert unfinished_rows_dir(OutputConfig("/data/out.parquet")) == "/data/out.parquet.parts"
    assert unfinished_rows_dir(OutputConfig("file:///data/o.pq")) == "/data/o.pq.parts"
    assert unfinished_rows_dir(OutputConfig("s3://bucket/out.parquet")) is None
    assert unfinished_rows_dir(OutputConfig("out.jsonl")) is None
    assert unfinished_rows_dir(OutputConfig(None, format="parquet")) is None
