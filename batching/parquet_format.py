"""What a Parquet output holds and where its files lie, for writing it and reading it back.

Its columns and their types (`ParquetLayout`), the footer metadata that says which
values are JSON text, and the `<out>.parts/` directory of sealed parts that an
unfinished output lives in.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from collections.abc import Sequence
from typing import Any

import orjson

from batching.errors import OutputError
from batching.output_format import FIXED_COLUMNS, OPTIONAL_COLUMNS, dumps, not_ours, read_error
from batching.records import Result
from batching.tasks import TASK_COLUMNS

__all__ = [
    "JSON_COLUMNS_KEY",
    "PARQUET_ROW_GROUP_ROWS",
    "PARTS_SUFFIX",
    "JsonIdRuns",
    "ParquetLayout",
    "parquet_rows",
    "parquet_sources",
    "part_path",
    "read_schema",
    "whole_parts",
]

# Row groups of this many rows are written even between flushes, so a run that
# never flushes still holds at most this many results in memory.
PARQUET_ROW_GROUP_ROWS = 65_536

# A Parquet file output is built in `<out>` + this, one sealed part per durable flush.
PARTS_SUFFIX = ".parts"

# The columns the writer owns; the rest are kept input fields.
_OWN_COLUMNS = frozenset((*FIXED_COLUMNS, *OPTIONAL_COLUMNS))

_PART_NAME = re.compile(r"part-(\d{6,})\.parquet")

# Footer metadata. The kept columns stored as JSON text look like any string
# column, and a resumed run must keep storing them so. Ids are JSON text only for
# the non-string ids of a string id column, and which rows those are is kept too:
# a string id "7" must read back as "7" and an integer id 7 as 7, or a resume
# would take the output for another input's.
JSON_COLUMNS_KEY = b"bizra_batch.json_columns"
# The columns a pooling task wrote (an embedding, probs and label, a score): so a
# resumed run tells them from kept input fields of the same name.
TASK_COLUMNS_KEY = b"bizra_batch.task_columns"
_ALL_TASK_COLUMNS = tuple(dict.fromkeys(c for columns in TASK_COLUMNS.values() for c in columns))
_JSON_ID_ROWS_KEY = b"bizra_batch.json_id_rows"
_UNLISTED = b"unlisted"
# Past this many runs of such rows (~300 KB of footer), a file only says that some
# ids are JSON text, and reading decodes every id that parses as a number or boolean.
_MAX_JSON_ID_RUNS = 16_384


class ParquetLayout:
    """The columns of a Parquet output, fixed by its first row group.

    Column types: `id` int64 when every id in the first row group is an integer,
    else string (strings as they are, other ids as JSON text); `error` a struct of
    `type` and `message`. A kept field takes the Arrow type of its values in the
    first row group when they are all one kind (int and float make float64);
    mixed kinds, objects, lists, or a field that is null throughout the first row
    group are stored as JSON text, which any later value fits. A later value that
    does not fit its column's type (a string in an int64 column) raises
    `OutputError`: write JSONL for inputs whose fields change type. The kept columns
    are those of the first row group; the reader gives every row the same ones.
    A resumed output keeps the layout of the rows it continues.

    Samples: `output` and `finish_reason` are lists of strings when any row of the
    first row group has n > 1 samples (a later single sample is then a list of
    one), else strings (a later row with several samples raises `OutputError`).
    `logprobs` follows `error`, as JSON text, when the first row group has any.

    A pooling task's columns follow, those its first row group has: `embedding` a
    fixed-size list of float32 when every vector there has one length (so a file of
    vectors loads as one matrix; else a list of float32), `probs` a list of
    float32, `label` a string, `score` a float64, `scores` a list of float64.
    """

    def __init__(self, pa: Any, schema: Any = None) -> None:
        self._pa = pa
        self.schema = schema
        self._kept_names: list[str] = []
        self._json_columns: set[str] = set()
        self._task_columns: list[str] = []
        if schema is not None:
            metadata = schema.metadata or {}
            self._task_columns = list(orjson.loads(metadata.get(TASK_COLUMNS_KEY, b"[]")))
            self._kept_names = [
                name
                for name in schema.names
                if name not in _OWN_COLUMNS and name not in self._task_columns
            ]
            json_columns = metadata.get(JSON_COLUMNS_KEY, b"[]")
            self._json_columns = set(orjson.loads(json_columns))

    def start(self, first: Sequence[Result]) -> None:
        pa = self._pa
        ints = bool(first) and all(_int64(result.id) for result in first)
        text = (
            pa.list_(pa.string()) if any(isinstance(r.output, list) for r in first) else pa.string()
        )
        fields = [
            pa.field("id", pa.int64() if ints else pa.string()),
            pa.field("output", text),
            pa.field("finish_reason", text),
            pa.field("prompt_tokens", pa.int64()),
            pa.field("completion_tokens", pa.int64()),
            pa.field("error", pa.struct([("type", pa.string()), ("message", pa.string())])),
        ]
        if any(result.logprobs is not None for result in first):
            fields.append(pa.field("logprobs", pa.string()))
            self._json_columns.add("logprobs")
        given: set[str] = set()
        for result in first:
            given.update(result.values or ())
        self._task_columns = [name for name in _ALL_TASK_COLUMNS if name in given]
        fields += [self._task_field(name, first) for name in self._task_columns]
        names: dict[str, None] = {}
        for result in first:
            names.update(dict.fromkeys(result.kept))
        # Result.to_dict lets a fixed field win over a kept one of the same name.
        self._kept_names = [
            name for name in names if name not in _OWN_COLUMNS and name not in given
        ]
        for name in self._kept_names:
            arrow_type = self._infer_type([result.kept.get(name) for result in first])
            if arrow_type is None:
                self._json_columns.add(name)
                arrow_type = pa.string()
            fields.append(pa.field(name, arrow_type))
        json_columns = [f.name for f in fields if f.name in self._json_columns]
        metadata = {JSON_COLUMNS_KEY: orjson.dumps(json_columns)}
        if self._task_columns:
            metadata[TASK_COLUMNS_KEY] = orjson.dumps(self._task_columns)
        self.schema = pa.schema(fields, metadata=metadata)

    def _task_field(self, name: str, first: Sequence[Result]) -> Any:
        pa = self._pa
        if name == "label":
            return pa.field(name, pa.string())
        if name == "score":
            return pa.field(name, pa.float64())
        if name == "scores":
            return pa.field(name, pa.list_(pa.float64()))
        lengths = {len(r.values[name]) for r in first if r.values and name in r.values}
        if name == "embedding" and len(lengths) == 1:
            # One matrix on load (numpy's `column.to_numpy()` of the flat values).
            return pa.field(name, pa.list_(pa.float32(), lengths.pop()))
        return pa.field(name, pa.list_(pa.float32()))

    def _infer_type(self, values: list[Any]) -> Any:
        """The Arrow type of one-kind values, or None for "store as JSON text"."""
        present = [value for value in values if value is not None]
        kinds = {type(value) for value in present}
        if not kinds or kinds & {dict, list} or (len(kinds) > 1 and kinds != {int, float}):
            return None
        try:
            return self._pa.array(present).type
        except (self._pa.ArrowException, TypeError, ValueError, OverflowError):
            return None

    def table(self, results: Sequence[Result], name: str) -> tuple[Any, list[int]]:
        """`results` as a table, and the positions in it of the ids stored as JSON text."""
        pa = self._pa
        schema = self.schema
        ids = [result.id for result in results]
        json_ids: list[int] = []
        if schema.field("id").type != pa.string():
            bad = next((r for r in results if not _int64(r.id)), None)
            if bad is not None:
                kind = "a 64-bit integer" if type(bad.id) is int else "an integer"
                raise OutputError(
                    f"{name}: id {bad.id!r} of row {bad.index + 1} is not {kind}, but "
                    "the Parquet id column was made int64 from the first rows; write JSONL "
                    "instead, or give every row an id of one type"
                )
        elif not all(type(i) is str for i in ids):
            json_ids = [n for n, i in enumerate(ids) if not isinstance(i, str)]
            ids = [i if isinstance(i, str) else dumps(i).decode() for i in ids]
        many = pa.types.is_list(schema.field("output").type)
        columns: list[Any] = [
            ids,
            [_as_kind(result.output, many, result, name) for result in results],
            [_as_kind(result.finish_reason, many, result, name) for result in results],
            [result.prompt_tokens for result in results],
            [result.completion_tokens for result in results],
            [None if result.error is None else result.error.to_dict() for result in results],
        ]
        if "logprobs" in schema.names:
            columns.append(
                [None if r.logprobs is None else dumps(r.logprobs).decode() for r in results]
            )
        else:
            lost = next((r for r in results if r.logprobs is not None), None)
            if lost is not None:
                raise OutputError(
                    f"{name}: row {lost.index + 1} has logprobs but the first rows had none, "
                    "so the Parquet file has no logprobs column; write JSONL instead"
                )
        for task_column in self._task_columns:
            columns.append(
                [None if r.values is None else r.values.get(task_column) for r in results]
            )
        missing = next(
            (
                (r, column)
                for r in results
                for column in r.values or ()
                if column not in self._task_columns
            ),
            None,
        )
        if missing is not None:
            raise OutputError(
                f"{name}: row {missing[0].index + 1} has a {missing[1]!r} value but the first "
                "rows had none, so the Parquet file has no such column; write JSONL instead"
            )
        for kept in self._kept_names:
            values = [result.kept.get(kept) for result in results]
            if kept in self._json_columns:
                values = [None if value is None else dumps(value).decode() for value in values]
            columns.append(values)
        arrays = []
        for field, values in zip(schema, columns, strict=True):
            try:
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise OutputError(
                    f"{name}: column {field.name!r} was made {field.type} from the first "
                    f"rows, but a later value does not fit ({exc}); write JSONL instead"
                ) from None
        return pa.Table.from_arrays(arrays, schema=schema), json_ids


def _as_kind(value: Any, many: bool, result: Result, name: str) -> Any:
    """An output or finish_reason value as its column stores it (see `ParquetLayout`)."""
    if value is None or isinstance(value, list) == many:
        return value
    if many:
        return [value]  # one sample in a column of lists: a list of one
    raise OutputError(
        f"{name}: row {result.index + 1} has {len(value)} samples (n > 1) but the first rows "
        "had one each, so the Parquet output column holds one text; pass --n to give every "
        "row several, or write JSONL"
    )


def part_path(parts_dir: str, number: int) -> str:
    """Where part `number` (from 0) of a parts directory lies once sealed.

    >>> part_path("out.parquet.parts", 3)
    'out.parquet.parts/part-000003.parquet'
    """
    return os.path.join(parts_dir, f"part-{number:06d}.parquet")


def whole_parts(parts_dir: str) -> list[str]:
    """The sealed parts in `parts_dir`, in order; temporary files are not among them."""
    try:
        names = os.listdir(parts_dir)
    except OSError as exc:
        raise read_error(parts_dir, exc) from None
    numbered = sorted(
        (int(match[1]), name) for name in names if (match := _PART_NAME.fullmatch(name))
    )
    for expected, (number, _) in enumerate(numbered):
        if number != expected:
            raise not_ours(parts_dir, f"part {expected} of {len(numbered)} is missing")
    return [os.path.join(parts_dir, name) for _, name in numbered]


def parquet_sources(path: str) -> list[str] | None:
    """The files that hold a Parquet output's rows, in order; None if there is none."""
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; name a file")
    if os.path.exists(path):
        return [path]  # finished, and then the whole output (see parquet_output)
    if os.path.isdir(path + PARTS_SUFFIX):
        return whole_parts(path + PARTS_SUFFIX)
    return None


def parquet_rows(source: str) -> int:
    """The rows in one Parquet output file, from its footer, after checking it is ours."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(source) as file:
            _check_columns(source, file.schema_arrow)
            rows: int = file.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise not_ours(source, f"not a readable Parquet file ({exc})") from None
    return rows


def read_schema(source: str) -> Any:
    """The Arrow schema of one Parquet output file, after checking it is ours."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(source)
    except (pa.ArrowException, OSError) as exc:
        raise not_ours(source, f"not a readable Parquet file ({exc})") from None
    _check_columns(source, schema)
    return schema


def _check_columns(source: str, schema: Any) -> None:
    if schema.names[: len(FIXED_COLUMNS)] != list(FIXED_COLUMNS):
        raise not_ours(source, "not the columns it writes")


class JsonIdRuns:
    """Which rows of one Parquet file hold their id as JSON text, as [start, stop) runs.

    Past `_MAX_JSON_ID_RUNS` runs the list is dropped (`unlisted`), so memory and
    footer stay bounded whatever the ids.
    """

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.unlisted = False

    @classmethod
    def read(cls, file: Any) -> JsonIdRuns:
        value = (file.metadata.metadata or {}).get(_JSON_ID_ROWS_KEY)
        runs = cls()
        if value == _UNLISTED:
            runs.unlisted = True
        elif value is not None:
            runs.runs = orjson.loads(value)
        return runs

    def add(self, row: int, stop: int | None = None) -> None:
        """Add rows `row` to `stop` (default: just `row`), after any added before."""
        stop = row + 1 if stop is None else stop
        if self.unlisted:
            return
        if self.runs and self.runs[-1][1] == row:
            self.runs[-1][1] = stop  # adjacent runs merge, so the list does not depend
        elif len(self.runs) < _MAX_JSON_ID_RUNS:  # on where parts or batches split
            self.runs.append([row, stop])
        else:
            self.runs, self.unlisted = [], True

    def extend(self, other: JsonIdRuns, offset: int) -> None:
        """Add the runs of a file whose rows follow on from row `offset` of this one."""
        if other.unlisted:
            self.runs, self.unlisted = [], True
        for start, stop in other.runs:
            self.add(start + offset, stop + offset)

    def metadata(self) -> dict[bytes, bytes]:
        if self.unlisted:
            return {_JSON_ID_ROWS_KEY: _UNLISTED}
        return {_JSON_ID_ROWS_KEY: orjson.dumps(self.runs)} if self.runs else {}

    def decode(self, ids: list[Any], offset: int) -> list[Any]:
        """`ids` of the file's rows from `offset` on, as they were before encoding."""
        if self.unlisted:
            return [_decode_id(value) for value in ids]
        end = offset + len(ids)
        first = bisect.bisect_right(self.runs, offset, key=lambda run: run[1])
        for start, stop in itertools.islice(self.runs, first, None):
            if start >= end:
                break
            for row in range(max(start, offset), min(stop, end)):
                ids[row - offset] = _decode_id(ids[row - offset])
        return ids


def _decode_id(value: Any) -> Any:
    """An id as it was before a string id column stored it as JSON text."""
    if type(value) is not str:
        return value
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    # Only ints, floats and booleans were ever encoded; '"a"' was the string '"a"'.
    return decoded if type(decoded) in (int, float, bool) else value


def _int64(value: object) -> bool:
    """Whether an id fits an int64 column (bool is not an int here; JSON's 2**64 - 1 is
    an int to orjson, and goes to a string column as JSON text instead).

    >>> _int64(7), _int64(2**63), _int64(True)
    (True, False, False)
    """
    return type(value) is int and -(2**63) <= value < 2**63
