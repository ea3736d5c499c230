"""Reading back what an earlier run left at an output path, so `--resume` can continue it.

`scan_output` counts and checks the complete rows; `ExistingOutput` streams their
ids (to match them against the input) and the rows that failed (to rewrite an
errors file).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from batching.compression import MAGIC, CorruptStream, DecompressedReader, decompressed_pieces
from batching.config import OutputConfig, OutputFormat
from batching.errors import OutputError
from batching.location import Codec
from batching.openai_batch import check_line, id_token, result_from_line
from batching.output_format import (
    FIXED_COLUMNS,
    OPTIONAL_COLUMNS,
    not_ours,
    read_error,
)
from batching.parquet_format import (
    JSON_COLUMNS_KEY,
    PARQUET_ROW_GROUP_ROWS,
    JsonIdRuns,
    parquet_rows,
    parquet_sources,
)
from batching.records import Result, RowError

__all__ = ["ExistingOutput", "scan_output"]

_OWN_COLUMNS = frozenset((*FIXED_COLUMNS, *OPTIONAL_COLUMNS))


@dataclass(frozen=True, slots=True)
class ExistingOutput:
    """What an earlier run left at an output path: `rows` complete rows.

    `torn_bytes` is the size of a torn last JSONL line (after the last newline),
    which resume cuts off; always 0 for Parquet, whose parts are sealed whole.
    A compressed output (`codec`) keeps its first `whole_bytes`: the whole gzip
    members (zstd frames) that end in a whole row; `torn_bytes` is what follows.
    `ids()` streams the rows' ids as the JSONL or Parquet reader gives them back
    (the non-string ids of a Parquet string id column decoded from their JSON
    text), at most `rows` of them, also after `open_writer` has started to
    continue the output.

    >>> import itertools
    >>> with open("out.jsonl", "wb") as out:
    ...     _ = out.write(b'{"id": "q-0", "output": "a"}\\n{"id": "q-1", "output": "b"}\\n{"id"')
    >>> existing = scan_output(OutputConfig(path="out.jsonl"))
    >>> existing.rows, existing.torn_bytes, list(itertools.islice(existing.ids(), 2))
    (2, 5, ['q-0', 'q-1'])
    """

    path: str
    format: OutputFormat
    rows: int
    torn_bytes: int = 0
    # The run token in an OpenAI output's line ids, for the resumed run to reuse.
    id_token: str | None = None
    codec: Codec | None = None
    whole_bytes: int | None = None

    def ids(self) -> Iterator[Any]:
        """A fresh iterator over the ids of the complete rows, in order."""
        if self.format == "parquet":
            return _parquet_ids(self.path, self.rows)
        if self.format == "openai":
            return (row["custom_id"] for row in self._lines())
        return (row["id"] for row in self._lines())

    def failed_rows(self, batch_rows: int = 1024) -> Iterator[list[Result]]:
        """The complete rows that hold an error, as results, in lists of `batch_rows`.

        For rewriting an errors file from the output. From Parquet, a row has every
        kept column (None where it had no value) and a kept value reads back as its
        column stores it (an int in a float64 column as a float).
        """
        if self.format == "parquet":
            return _parquet_failed(self.path, self.rows, batch_rows)
        return _jsonl_failed(self.path, self._lines(), batch_rows, self.format == "openai")

    def _lines(self) -> Iterator[dict[str, Any]]:
        """The complete rows of a JSONL output, decoded."""
        return _jsonl_lines(self.path, self.rows, self.format == "openai", self._text)

    def _text(self, file: BinaryIO) -> BinaryIO:
        """`file`'s text: decompressed, and only its whole members, if it is compressed."""
        if self.codec is None or self.whole_bytes is None:
            return file
        left = self.whole_bytes

        def read(size: int) -> bytes:
            # Never past the whole members: a resumed run appends to the file as
            # these rows are read, and its member being written is not whole yet.
            nonlocal left
            data = file.read(min(size, left))
            left -= len(data)
            return data

        return io.BufferedReader(DecompressedReader(read, self.codec))


def scan_output(cfg: OutputConfig) -> ExistingOutput | None:
    """What an earlier run left at `cfg.path`; None when nothing is there, or for stdout.

    Reads the whole output once (streamed) to count and check its rows; raises
    `OutputError` for a file that is not an output of bizra-batch.

    >>> with open("out.jsonl", "wb") as out:
    ...     _ = out.write(b'{"id": 0, "output": "a"}\\n')
    >>> scan_output(OutputConfig(path="out.jsonl")).rows
    1
    """
    if cfg.location.is_stdio:
        return None
    path, fmt = cfg.location.path, cfg.written_format
    if fmt == "parquet":
        sources = parquet_sources(path)
        if sources is None:
            return None
        return ExistingOutput(path, "parquet", sum(map(parquet_rows, sources)))
    if cfg.location.compressed is not None:
        return _scan_compressed(path, fmt == "openai", cfg.location.compressed)
    return _scan_jsonl(path, fmt == "openai")


def _open_existing(path: str) -> BinaryIO | None:
    """The output file to scan, or None where there is none yet."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(path, exc) from None


def _scan_jsonl(path: str, openai: bool) -> ExistingOutput | None:
    file = _open_existing(path)
    if file is None:
        return None
    rows = torn = 0
    token: str | None = None
    with file:
        for line in file:
            if not line.endswith(b"\n"):
                torn = len(line)
                break
            rows += 1
            row = _line_row(line, path, rows, openai)
            if openai and rows == 1:
                token = id_token(row)
    return ExistingOutput(path, "openai" if openai else "jsonl", rows, torn, token)


def _scan_compressed(path: str, openai: bool, codec: Codec) -> ExistingOutput | None:
    """A compressed output's rows up to the end of its last whole member that ends a
    row; a member torn by a crash (cut short, or not decoding) is left off."""
    file = _open_existing(path)
    if file is None:
        return None
    rows = whole_rows = whole_bytes = 0
    token: str | None = None
    tail = b""  # the start of a row not yet ended
    with file:
        magic = MAGIC[codec]
        head = file.read(len(magic))
        # A crash can leave the first member as short as one byte.
        if head != magic[: len(head)]:
            raise not_ours(path, f"not {codec}-compressed")
        file.seek(0)
        try:
            for piece, end in decompressed_pieces(file.read, codec):
                *lines, tail = (tail + piece).split(b"\n")
                for line in lines:
                    rows += 1
                    row = _line_row(line, path, rows, openai)
                    if openai and rows == 1:
                        token = id_token(row)
                if end is not None and not tail:
                    whole_rows, whole_bytes = rows, end
        except CorruptStream:
            pass  # the member a crash tore: the file is cut back to the one before
        size = os.fstat(file.fileno()).st_size
    fmt: OutputFormat = "openai" if openai else "jsonl"
    return ExistingOutput(path, fmt, whole_rows, size - whole_bytes, token, codec, whole_bytes)


def _jsonl_lines(
    path: str, rows: int, openai: bool, text: Callable[[BinaryIO], BinaryIO]
) -> Iterator[dict[str, Any]]:
    """The first `rows` lines of a JSONL output, decoded; `text` reads the file."""
    if rows <= 0:
        return
    with open(path, "rb") as file:
        for number, line in enumerate(text(file), 1):
            yield _line_row(line, path, number, openai)
            if number == rows:
                return


def _jsonl_failed(
    path: str, lines: Iterator[dict[str, Any]], batch_rows: int, openai: bool
) -> Iterator[list[Result]]:
    batch: list[Result] = []
    from_row = result_from_line if openai else _result_from_row
    for index, row in enumerate(lines):
        if row.get("error") is not None:
            batch.append(from_row(index, row, f"{path}:{index + 1}"))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _line_row(line: bytes, path: str, number: int, openai: bool) -> dict[str, Any]:
    where = f"{path}:{number}"
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise not_ours(where, "not valid JSON") from None
    if openai:
        return check_line(row, where)
    if type(row) is not dict or "id" not in row:
        raise not_ours(where, 'not an object with an "id"')
    if "custom_id" in row and "response" in row:
        raise OutputError(
            f"{where}: an OpenAI batch output line; resume it with --output-format openai"
        )
    return row


def _result_from_row(index: int, row: dict[str, Any], where: str) -> Result:
    """The result an output row was written from (kept fields are the extra keys)."""
    error = row.get("error")
    row_error = None
    if error is not None:
        if type(error) is not dict or not all(
            type(error.get(key)) is str for key in ("type", "message")
        ):
            raise not_ours(where, 'an "error" that is not {"type": ..., "message": ...}')
        row_error = RowError(error["type"], error["message"])
    return Result(
        index=index,
        id=row["id"],
        output=row.get("output"),
        finish_reason=row.get("finish_reason"),
        prompt_tokens=row.get("prompt_tokens"),
        completion_tokens=row.get("completion_tokens"),
        error=row_error,
        kept={key: value for key, value in row.items() if key not in _OWN_COLUMNS},
        logprobs=row.get("logprobs"),
    )


def _parquet_batches(
    path: str, rows: int, columns: list[str] | None
) -> Iterator[tuple[Any, list[Any], frozenset[str]]]:
    """The first `rows` rows of a Parquet output, in record batches.

    Each with the batch's ids as they were written, and the names of its columns
    that hold JSON text.
    """
    import pyarrow.parquet as pq

    left = rows
    for source in parquet_sources(path) or []:
        if left <= 0:
            return
        with pq.ParquetFile(source) as file:
            runs = JsonIdRuns.read(file)
            json_columns = (file.schema_arrow.metadata or {}).get(JSON_COLUMNS_KEY, b"[]")
            json_names = frozenset(orjson.loads(json_columns))
            offset = 0
            for batch in file.iter_batches(batch_size=PARQUET_ROW_GROUP_ROWS, columns=columns):
                batch = batch.slice(0, left)
                yield batch, runs.decode(batch.column("id").to_pylist(), offset), json_names
                offset += batch.num_rows
                left -= batch.num_rows
                if left <= 0:
                    return


def _parquet_ids(path: str, rows: int) -> Iterator[Any]:
    for _, ids, _ in _parquet_batches(path, rows, ["id"]):
        yield from ids


def _parquet_failed(path: str, rows: int, batch_rows: int) -> Iterator[list[Result]]:
    import pyarrow.compute as pc

    failed: list[Result] = []
    index = 0
    for batch, ids, json_names in _parquet_batches(path, rows, None):
        # Take by the typed index array: an empty Python list is typed null, which
        # take() rejects, so a batch without a failed row raised.
        indices = pc.indices_nonzero(pc.is_valid(batch.column("error")))
        positions = indices.to_pylist()
        for position, row in zip(positions, batch.take(indices).to_pylist(), strict=True):
            row["id"] = ids[position]
            for name in json_names:
                if row.get(name) is not None:
                    row[name] = orjson.loads(row[name])
            failed.append(_result_from_row(index + position, row, path))
            if len(failed) >= batch_rows:
                yield failed
                failed = []
        index += batch.num_rows
    if failed:
        yield failed
