"""Helpers shared by the output tests: results to write, reading outputs, crashing runs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from batching.config import OutputConfig
from batching.records import ERROR_ENGINE, Result, RowError
from batching.writers import open_writer, scan_output

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


def resume_to_the_whole(path: Path, results: list[Result], on_disk: int) -> None:
    """Check that the output at `path` offers its first `on_disk` rows to resume, then
    resume with the rest and check that the output is all of `results`, in order."""
    existing = scan_output(resumable(path))
    assert existing is not None and existing.rows == on_disk
    with open_writer(resumable(path, resume=True)) as writer:
        writer.write(results[on_disk:])
    assert parquet_rows(path) == [r.to_dict() for r in results]
