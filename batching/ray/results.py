"""A replica's results as an Arrow table, and back: typed columns, one blob a batch.

The fields every row has travel as typed Arrow columns (int64, string, float64,
bool), so a batch of results crosses the object store as a few buffers instead of
one pickle per row. What has no fixed Arrow type goes in the batch's one pickled
blob, keyed by the row's position in the batch: kept input fields, logprobs, the
lists of an `n` > 1 row, an id that is neither an integer nor a string. The blob
also carries whatever the replica sends once a batch (its stats).

The schema is the same for every batch, so Ray Data may concatenate batches into
one block; and a block it splits still decodes, because `ResultDecoder` carries a
batch's blob on to the rows that follow it. The blob rides on the batch's first
row, which always comes before the rest.

>>> table = encode_results([7], [Result(index=0, id="a", output="hi", kept={"k": 1})], None)
>>> results, extras = ResultDecoder().decode(table)
>>> (results[0].index, results[0].id, results[0].output, dict(results[0].kept), extras)
(7, 'a', 'hi', {'k': 1}, [None])
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batching.ray.source import INDEX_COLUMN, KEY_FIELDS, id_columns, pickled
from batching.records import Result, RowError

__all__ = ["BATCH_COLUMN", "INDEX_COLUMN", "ResultDecoder", "encode_results"]

BATCH_COLUMN = "batch"
_INT64 = range(-(2**63), 2**63)

SCHEMA = pa.schema(
    [
        *KEY_FIELDS,
        ("output", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("latency_s", pa.float64()),
        ("chat", pa.bool_()),
        (BATCH_COLUMN, pa.binary()),
    ]
)


@dataclass(frozen=True, slots=True)
class _Blob:
    """What a batch sends once: its row count, its untyped values, and `extra`."""

    rows: int
    # Field name -> {position in the batch: value} for the values no column holds.
    loose: dict[str, dict[int, Any]]
    extra: Any


def encode_results(indices: Sequence[int], results: Sequence[Result], extra: Any) -> pa.Table:
    """The results of one batch as a table; `indices[i]` is `results[i]`'s row index.

    `extra` (any picklable value) comes back once, from `ResultDecoder.decode`;
    a batch of no rows has no row to carry it, and sends nothing.
    """
    if len(indices) != len(results):
        raise ValueError(f"{len(indices)} indices for {len(results)} results")
    if not results:
        return SCHEMA.empty_table()
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names[1:-1]}
    loose: dict[str, dict[int, Any]] = {}
    id_int, id_str = columns["id_int"], columns["id_str"]
    outputs, reasons = columns["output"], columns["finish_reason"]
    prompt_tokens, completion_tokens = columns["prompt_tokens"], columns["completion_tokens"]
    error_types, error_messages = columns["error_type"], columns["error_message"]
    latencies, chats = columns["latency_s"], columns["chat"]
    for position, result in enumerate(results):
        row_int, row_str, loose_id = id_columns(result.id)
        id_int.append(row_int)
        id_str.append(row_str)
        if loose_id:
            loose.setdefault("id", {})[position] = result.id
        outputs.append(_typed(result.output, str, "output", position, loose))
        reasons.append(_typed(result.finish_reason, str, "finish_reason", position, loose))
        prompt_tokens.append(_typed(result.prompt_tokens, int, "prompt_tokens", position, loose))
        completion_tokens.append(
            _typed(result.completion_tokens, int, "completion_tokens", position, loose)
        )
        error = result.error
        error_types.append(None if error is None else error.type)
        error_messages.append(None if error is None else error.message)
        latencies.append(_typed(result.latency_s, float, "latency_s", position, loose))
        chats.append(result.chat)
        if result.kept:
            loose.setdefault("kept", {})[position] = result.kept
        if result.logprobs is not None:
            loose.setdefault("logprobs", {})[position] = result.logprobs
    # cloudpickle: a row's kept fields may be a read-only mapping, which pickle refuses.
    blob = pickled(_Blob(len(results), loose, extra))
    arrays = [pa.array(indices, pa.int64())]
    arrays += [pa.array(columns[name], SCHEMA.field(name).type) for name in SCHEMA.names[1:-1]]
    arrays.append(pa.array([blob] + [None] * (len(results) - 1), pa.binary()))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _typed(
    value: Any, kind: type, field: str, position: int, loose: dict[str, dict[int, Any]]
) -> Any:
    """`value` for a column of `kind`; anything else goes to `loose` (the column gets null)."""
    if value is None or (type(value) is kind and (kind is not int or value in _INT64)):
        return value
    loose.setdefault(field, {})[position] = value
    return None


class ResultDecoder:
    """Turns the tables `encode_results` made back into results, block after block.

    One decoder reads a whole run's blocks in order: a batch that Ray Data split
    over two blocks continues in the second.
    """

    def __init__(self) -> None:
        self._blob: _Blob | None = None
        self._done = 0  # rows of the current batch decoded so far

    def decode(self, table: pa.Table) -> tuple[list[Result], list[Any]]:
        """The block's results, in its order, and the `extra` of each batch begun in it."""
        names = SCHEMA.names
        if table.schema.names != names:
            raise ValueError(f"not a table of results: columns {table.schema.names}")
        columns = [table.column(name).to_pylist() for name in names]
        blobs = columns[-1]
        results: list[Result] = []
        extras: list[Any] = []
        start = 0
        while start < table.num_rows:
            if blobs[start] is not None:
                if self._blob is not None and self._done < self._blob.rows:
                    raise RuntimeError("a batch of results was cut short")
                self._blob = pickle.loads(blobs[start])
                self._done = 0
                extras.append(self._blob.extra)
            blob = self._blob
            if blob is None or self._done >= blob.rows:
                raise RuntimeError("results came without their batch")
            end = min(table.num_rows, start + blob.rows - self._done)
            results += _results(columns, start, end, blob.loose, self._done)
            self._done += end - start
            start = end
        return results, extras


def _results(
    columns: list[list[Any]], start: int, end: int, loose: dict[str, dict[int, Any]], offset: int
) -> list[Result]:
    """Rows `start:end` of a block, the batch's rows from `offset` on."""
    # Every column but the last, the batch's blob, in SCHEMA's order.
    rows = zip(*(column[start:end] for column in columns[:-1]), strict=True)
    results = [
        Result(
            index,
            id_str if id_int is None else id_int,
            output,
            reason,
            prompt,
            completion,
            None if error_type is None else RowError(error_type, error_message),
            {},
            latency,
            None,
            chat,
        )
        for (
            index,
            id_int,
            id_str,
            output,
            reason,
            prompt,
            completion,
            error_type,
            error_message,
            latency,
            chat,
        ) in rows
    ]
    for field, values in loose.items():
        for position, value in values.items():
            if offset <= position < offset + len(results):
                setattr(results[position - offset], field, value)
    return results
