"""The input as a Ray Data datasource, read by our own reader inside a Ray task.

Rows are parsed by `readers.open_source`, the reader of the single-process path, so
every row gets the same index, line number, id, and error record for a bad line:
the Ray path cannot disagree with the single-process one about the input. The rows
travel as pickled `Request` / `InvalidRow` values (cloudpickle: a row's kept
fields may be a read-only mapping, which plain pickle refuses), one Arrow block per chunk, keyed
by their 0-based `index`.

One read task reads the whole input, front to back. Row numbers and the duplicate-id
check depend on every earlier row, so splitting the file between tasks would need a
second pass over it; and our reader parses ~300k rows/s, far more than the engines
of any cluster consume, so a single task is never what limits a run. It streams:
Ray Data takes each block as it is yielded, so memory stays bounded by the chunk.

>>> ds = ray.data.read_datasource(RowsDatasource(InputConfig("in.jsonl")))  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pyarrow as pa
from ray import cloudpickle
from ray.data import DataContext, Datasource, ReadTask
from ray.data.block import BlockMetadata

from batching.config import InputConfig
from batching.readers import open_source
from batching.records import Row

__all__ = [
    "INDEX_COLUMN",
    "ROW_COLUMN",
    "RowsDatasource",
    "decode_rows",
    "encode_rows",
    "pickled",
]

INDEX_COLUMN = "index"
ROW_COLUMN = "row"


def pickled(value: object) -> bytes:
    """`value` pickled by cloudpickle; plain `pickle.loads` reads it back."""
    data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-untyped-call]
    return data


def encode_rows(rows: list[Row]) -> pa.Table:
    """A block of rows: their index, and the row itself pickled.

    >>> encode_rows([]).num_rows
    0
    """
    return pa.table(
        {
            INDEX_COLUMN: pa.array([row.index for row in rows], pa.int64()),
            ROW_COLUMN: pa.array(
                [pickled(row) for row in rows],
                pa.binary(),
            ),
        }
    )


def decode_rows(block: pa.Table) -> list[Row]:
    """The rows `encode_rows` made the block of, in its order."""
    return [pickle.loads(raw) for raw in block.column(ROW_COLUMN).to_pylist()]


class RowsDatasource(Datasource):
    """Every input row from `start` on (a resumed run skips the rows done already)."""

    def __init__(self, cfg: InputConfig, *, max_line_bytes: int, start: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.cfg = cfg
        self.max_line_bytes = max_line_bytes
        self.start = start

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        cfg, max_line_bytes, start = self.cfg, self.max_line_bytes, self.start

        def read() -> Iterator[pa.Table]:
            with open_source(cfg, max_line_bytes=max_line_bytes) as source:
                for chunk in source.chunks():
                    rows = [row for row in chunk if row.index >= start]
                    if rows:
                        yield encode_rows(rows)

        metadata = BlockMetadata(
            num_rows=None, size_bytes=None, input_files=(cfg.path,), exec_stats=None
        )
        return [ReadTask(read, metadata, per_task_row_limit=per_task_row_limit)]
