"""Reading an earlier output back: its rows, their ids as written, and the rows that failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batching import parquet_format
from batching.config import OutputConfig
from batching.errors import OutputError
from batching.records import Result, RowError
from batching.writers import open_writer, scan_output
from tests.output_helpers import crash_after, failed, parquet_rows, resumable


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


def test_parquet_ids_past_the_listed_runs_decode_whatever_looks_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquet_format, "_MAX_JSON_ID_RUNS", 2)
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
