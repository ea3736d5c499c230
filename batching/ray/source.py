"""The input as a Ray Data datasource, read by our own reader inside a Ray task.

Rows are parsed by `readers.open_source`, the reader of the single-process path, so
every row gets the same index, line number, id, and error record for a bad line:
the Ray path cannot disagree with the single-process one about the input. The rows
travel as Arrow columns, keyed by their 0-based `index`: index, id, line and
prompt typed, and whatever else a row has (chat messages, its own sampling, kept
fields, an invalid row's error) pickled in the row's `row` cell, null for a plain
prompt row. Each row stands alone, since Ray Data merges and slices blocks into
batches as it likes; pickling every row whole cost ~75 µs a row, more than the
rest of the pipeline.

One read task reads the whole input, front to back. Row numbers and the duplicate-id
check depend on every earlier row, so splitting the file between tasks would need a
second pass over it; and our reader parses ~300k rows/s, far more than the engines
of any cluster consume, so a single task is never what limits a run. It streams,
though coarsely: Ray Data gathers what a task yields into blocks of up to its
target block size (128 MiB), so memory is bounded by that, not by the input
(`batching.ray.runner` cuts the blocks back into chunks for the replicas).

>>> ds = ray.data.read_datasource(RowsDatasource(InputConfig("in.jsonl")))  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray import cloudpickle
from ray.data import DataContext, Datasource, ReadTask
from ray.data.block import BlockMetadata

from batching.config import InputConfig
from batching.readers import open_source
from batching.records import NO_SAMPLING, InvalidRow, Request, Row

__all__ = [
    "INDEX_COLUMN",
    "KEY_FIELDS",
    "ROWS_SCHEMA",
    "ROW_COLUMN",
    "RowsDatasource",
    "decode_rows",
    "encode_rows",
    "id_columns",
    "pickled",
]

INDEX_COLUMN = "index"
ROW_COLUMN = "row"


def pickled(value: object) -> bytes:
    """`value` pickled by cloudpickle; plain `pickle.loads` reads it back."""
    data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-untyped-call]
    return data


_INT64 = range(-(2**63), 2**63)
# How rows and results alike are keyed: an id is an int column or a str column, or
# neither (pickled aside, see `id_columns`).
KEY_FIELDS = [(INDEX_COLUMN, pa.int64()), ("id_int", pa.int64()), ("id_str", pa.string())]
ROWS_SCHEMA = pa.schema(
    [
        *KEY_FIELDS,
        ("line", pa.int64()),
        ("prompt", pa.string()),
        (ROW_COLUMN, pa.binary()),
    ]
)


def id_columns(row_id: Any) -> tuple[int | None, str | None, bool]:
    """`row_id` in the id_int and id_str columns, and whether it must go aside instead
    (an id neither column holds: a bool, a float, an int past int64).

    >>> id_columns(7), id_columns("a"), id_columns(None), id_columns(2**64)
    ((7, None, False), (None, 'a', False), (None, None, False), (None, None, True))
    """
    if type(row_id) is int and row_id in _INT64:
        return row_id, None, False
    if type(row_id) is str:
        return None, row_id, False
    return None, None, row_id is not None


def encode_rows(rows: list[Row]) -> pa.Table:
    """A block of rows, as `decode_rows` reads them back.

    >>> [row] = decode_rows(encode_rows([Request(index=4, id="a", line=5, prompt="Hi")]))
    >>> (row.index, row.id, row.line, row.prompt)
    (4, 'a', 5, 'Hi')
    """
    ids_int: list[int | None] = []
    ids_str: list[str | None] = []
    prompts: list[str | None] = []
    extras: list[bytes | None] = []
    for row in rows:
        loose: dict[str, Any] = {}
        id_int, id_str, loose_id = id_columns(row.id)
        ids_int.append(id_int)
        ids_str.append(id_str)
        if loose_id:
            loose["id"] = row.id
        if isinstance(row, Request):
            prompts.append(row.prompt)
            if row.messages is not None:
                loose["messages"] = row.messages
            if row.sampling is not NO_SAMPLING and row.sampling != NO_SAMPLING:
                loose["sampling"] = row.sampling
            if row.adapter is not None:
                loose["adapter"] = row.adapter
        else:
            prompts.append(None)
            loose["error"] = row.error
        if row.kept:
            loose["kept"] = row.kept
        extras.append(pickled(loose) if loose else None)
    return pa.Table.from_arrays(
        [
            pa.array([row.index for row in rows], pa.int64()),
            pa.array(ids_int, pa.int64()),
            pa.array(ids_str, pa.string()),
            pa.array([row.line for row in rows], pa.int64()),
            pa.array(prompts, pa.string()),
            pa.array(extras, pa.binary()),
        ],
        schema=ROWS_SCHEMA,
    )


def decode_rows(block: pa.Table) -> list[Row]:
    """The rows `encode_rows` made the block of, in its order."""
    rows: list[Row] = []
    columns = [block.column(name).to_pylist() for name in ROWS_SCHEMA.names]
    for index, id_int, id_str, line, prompt, extra in zip(*columns, strict=True):
        row_id = id_str if id_int is None else id_int
        if extra is None:
            rows.append(Request(index, row_id, line, prompt))
            continue
        loose = pickle.loads(extra)
        row_id = loose.get("id", row_id)
        kept = loose.get("kept", {})
        if "error" in loose:
            rows.append(InvalidRow(index, row_id, line, loose["error"], kept))
        else:
            messages = loose.get("messages")
            sampling = loose.get("sampling", NO_SAMPLING)
            adapter = loose.get("adapter")
            rows.append(Request(index, row_id, line, prompt, messages, sampling, kept, adapter))
    return rows


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
