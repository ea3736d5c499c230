"""Stream input rows from JSONL, gzipped JSONL, Parquet or stdin, in chunks.

Every input row becomes exactly one `Request` or `InvalidRow`, in file order, with
memory bounded by the chunk size (Parquet: by the row group) whatever the file size.
A row that cannot be read (bad JSON, not UTF-8, over-long, duplicate id) becomes an
`InvalidRow` at its place; only a file that cannot be read at all (missing, not
Parquet, corrupt gzip) raises `InputError`.

>>> with open_source(InputConfig(path="prompts.jsonl")) as source:  # doctest: +SKIP
...     for chunk in source.chunks():
...         print(len(chunk), source.bytes_read / source.total_bytes)
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import sys
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import orjson

from batching.config import STDIO, InputConfig, InputFormat
from batching.errors import InputError, UsageError
from batching.records import SAMPLING_FIELDS, InvalidRow, Row
from batching.schema import describe, invalid_row, missing_kept, parse_row

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DEFAULT_MAX_LINE_BYTES", "STDIN_NAME", "RowSource", "input_format", "open_source"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
STDIN_NAME = "<stdin>"

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Large reads keep syscalls rare; 1 MiB is past the point where bigger buffers help.
_READ_BUFFER_BYTES = 1024 * 1024


def open_source(
    cfg: InputConfig,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    stdin: BinaryIO | None = None,
) -> RowSource:
    """Open the input `cfg` names; raises `InputError` at once if it cannot be read.

    `stdin` replaces `sys.stdin.buffer` when the path is "-" (tests inject a BytesIO).

    >>> source = open_source(InputConfig(path="-"), stdin=io.BytesIO(b'{"prompt": "Hi"}'))
    >>> [row.prompt for chunk in source.chunks() for row in chunk]
    ['Hi']
    """
    if cfg.chunk_size < 1:
        raise UsageError(f"chunk size must be at least 1, got {cfg.chunk_size}")
    if max_line_bytes < 1:
        raise UsageError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
    fmt = input_format(cfg.path, cfg.format)
    if cfg.path == STDIO:
        if fmt != "jsonl":
            raise InputError(
                "stdin: Parquet cannot be streamed from stdin; pass the file's path instead"
            )
        stream = sys.stdin.buffer if stdin is None else stdin
        return _JsonlSource(cfg, STDIN_NAME, stream, None, None, max_line_bytes)
    if fmt == "parquet":
        return _ParquetSource(cfg)
    return _open_jsonl_file(cfg, max_line_bytes)


def input_format(path: str, override: InputFormat | None = None) -> InputFormat:
    """The format to read `path` as: `override`, else from the extension.

    >>> input_format("prompts.jsonl.gz")
    'jsonl'
    """
    if override is not None:
        return override
    if path == STDIO:
        return "jsonl"
    name = path.lower().removesuffix(".gz")
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    suffix = os.path.splitext(name)[1] or "(none)"
    raise InputError(
        f"{path}: unknown input format for extension {suffix}; name the file .jsonl, "
        ".jsonl.gz or .parquet, or pass --input-format jsonl or --input-format parquet"
    )


class RowSource(ABC):
    """Rows of one input, read once, front to back, in chunks.

    `total_rows` is exact for Parquet and None for JSONL; `total_bytes` is the size
    on disk (compressed for .gz) and None for stdin; `bytes_read` counts the same
    bytes, so `bytes_read / total_bytes` is the fraction done.
    """

    def __init__(self, name: str, *, total_rows: int | None, total_bytes: int | None) -> None:
        self.name = name
        self.total_rows = total_rows
        self.total_bytes = total_bytes
        self.bytes_read = 0
        self.rows_read = 0
        self._started = False

    def chunks(self) -> Iterator[list[Row]]:
        """Every row in input order, in lists of at most `chunk_size` rows; once only.

        The source is a stream (stdin cannot be rewound), so a second call raises
        rather than starting over mid-file with row numbers that start over too.
        """
        if self._started:
            raise RuntimeError(f"{self.name}: the rows were read already; open it again")
        self._started = True
        return self._chunks()

    @abstractmethod
    def _chunks(self) -> Iterator[list[Row]]: ...

    @abstractmethod
    def close(self) -> None:
        """Release the file; a source that was given a stream leaves it open."""

    def __enter__(self) -> RowSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _IdRegistry:
    """Remembers each explicit id and where it was first seen, to refuse repeats.

    This is the one structure that grows with the input: measured at 122 MB per
    million short string ids and 106 MB per million integer ids (a dict slot, the
    key and the line number), so ~1.2 GB for 10M rows with ids. Keeping only a
    64-bit hash of each id would cut that by about half but could call a good row a
    duplicate, and an on-disk index is far more code; ids the reader makes up from
    the row number are unique by construction and are not stored at all.
    """

    def __init__(self, id_field: str, unit: str) -> None:
        self._id_field = id_field
        self._unit = unit
        self._first_seen: dict[object, int] = {}

    def check(self, obj: Any, row: Row, where: str) -> Row:
        if type(obj) is not dict:
            return row
        raw = obj.get(self._id_field)
        if raw is None:
            return row
        key = raw if type(raw) is str or type(raw) is int else _id_key(raw)
        if key is None:
            return row
        first = self._first_seen.setdefault(key, row.line)
        if first == row.line or isinstance(row, InvalidRow):
            return row
        message = (
            f"{where}: field {self._id_field!r}: duplicate id, {describe(raw)} was first "
            f"seen at {self._unit} {first}; ids must be unique"
        )
        return invalid_row(row.index, row.line, message, row_id=row.id, kept=row.kept)


def _id_key(raw: object) -> object:
    """A dict key under which equal ids, and only those, collide.

    Python holds True == 1 == 1.0, but they are three different ids in the output.
    """
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return ("bool", raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw == raw:
        return ("float", raw)
    return None


class _LineStream(Protocol):
    """What the JSONL reader needs of a stream: a file, GzipFile, stdin or BytesIO."""

    def readline(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _CountingReader(io.RawIOBase):
    """A file seen through a byte counter: how far into the file on disk we are."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        n = self._raw.readinto(buffer)
        if n:
            self.count += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_binary(path: str) -> io.FileIO:
    try:
        return io.FileIO(path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path (use - to read stdin)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; pass a .jsonl or .parquet file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied; check the file's permissions") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _size_if_regular(raw: io.FileIO) -> int | None:
    info = os.fstat(raw.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _open_jsonl_file(cfg: InputConfig, max_line_bytes: int) -> _JsonlSource:
    raw = _open_binary(cfg.path)
    try:
        total_bytes = _size_if_regular(raw)
        counter = _CountingReader(raw)
        buffered = io.BufferedReader(counter, _READ_BUFFER_BYTES)
        # The content decides, not the name: a gzipped file is read as such whatever
        # it is called, and peek() works on pipes such as <(zcat ...) as well.
        stream: _LineStream
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif cfg.path.lower().endswith(".gz"):
            raise InputError(f"{cfg.path}: named .gz but not gzip-compressed; rename it to .jsonl")
        else:
            stream = buffered
    except OSError as exc:
        raw.close()
        raise InputError(f"{cfg.path}: cannot read ({exc})") from None
    except BaseException:
        raw.close()
        raise
    return _JsonlSource(cfg, cfg.path, stream, counter, total_bytes, max_line_bytes)


class _JsonlSource(RowSource):
    def __init__(
        self,
        cfg: InputConfig,
        name: str,
        stream: _LineStream,
        counter: _CountingReader | None,
        total_bytes: int | None,
        max_line_bytes: int,
    ) -> None:
        super().__init__(name, total_rows=None, total_bytes=total_bytes)
        self._cfg = cfg
        self._stream = stream
        # None for stdin: then bytes_read counts the bytes of the lines read.
        self._counter = counter
        self._max_line_bytes = max_line_bytes
        self._ids = _IdRegistry(cfg.id_field, "line")
        self._line = 0  # of the last line read, for read errors

    def close(self) -> None:
        if self._counter is not None:
            self._stream.close()
            self._counter.close()

    def _chunks(self) -> Iterator[list[Row]]:
        try:
            yield from self._read_chunks()
        except (OSError, EOFError, zlib.error) as exc:
            # GzipFile raises all three for a damaged or truncated file.
            after = f" after line {self._line}" if self._line else ""
            hint = ""
            if isinstance(self._stream, gzip.GzipFile):
                hint = f"; test it with `gzip -t {self.name}`"
            raise InputError(f"{self.name}: cannot read{after} ({exc}){hint}") from None

    def _read_chunks(self) -> Iterator[list[Row]]:
        # The hot loop, a few µs a row: what it touches per row is a local.
        readline = self._stream.readline
        limit = self._max_line_bytes + 1
        loads = orjson.loads
        json_error = orjson.JSONDecodeError
        fields = self._cfg
        chunk_size = fields.chunk_size
        check_id = self._ids.check
        name = self.name
        consumed = 0
        line = 0
        index = 0
        chunk: list[Row] = []
        while raw := readline(limit):
            line += 1
            consumed += len(raw)
            over_long = len(raw) == limit and raw[-1:] != b"\n"
            if line == 1:
                raw = self._first_line(raw)
            where = f"{name}:{line}"
            row: Row
            if over_long:
                consumed += self._skip_to_newline()
                message = (
                    f"{where}: line is longer than the limit of {_size(self._max_line_bytes)}; "
                    "shorten the row"
                )
                row = invalid_row(index, line, message, kept=missing_kept(fields))
            else:
                try:
                    obj = loads(raw)
                except json_error as exc:
                    if not raw.strip():
                        continue
                    message = _undecodable(raw, exc, where)
                    row = invalid_row(index, line, message, kept=missing_kept(fields))
                else:
                    row = parse_row(obj, index=index, line=line, fields=fields, where=where)
                    row = check_id(obj, row, where)
            chunk.append(row)
            index += 1
            if len(chunk) >= chunk_size:
                self._line = line
                self._progress(index, consumed)
                yield chunk
                chunk = []
        self._line = line
        self._progress(index, consumed)
        if chunk:
            yield chunk

    def _progress(self, rows: int, consumed: int) -> None:
        self.rows_read = rows
        self.bytes_read = consumed if self._counter is None else self._counter.count

    def _first_line(self, raw: bytes) -> bytes:
        if raw.startswith(_UTF8_BOM):
            return raw[len(_UTF8_BOM) :]
        if raw.startswith(_UTF16_BOMS):
            raise InputError(
                f"{self.name}: the text is UTF-16; convert it to UTF-8, e.g. "
                "`iconv -f UTF-16 -t UTF-8`"
            )
        if raw.startswith(_GZIP_MAGIC):
            raise InputError(
                f"{self.name}: the input is gzip-compressed; pipe it through `gunzip -c` "
                "or pass the .jsonl.gz file's path"
            )
        return raw

    def _skip_to_newline(self) -> int:
        """Read past the rest of an over-long line a block at a time; bytes skipped."""
        skipped = 0
        while block := self._stream.readline(_READ_BUFFER_BYTES):
            skipped += len(block)
            if block[-1:] == b"\n":
                break
        return skipped


def _undecodable(raw: bytes, exc: orjson.JSONDecodeError, where: str) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{where}: not valid UTF-8 at byte {bad.start + 1}; save the file as UTF-8"
    return (
        f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line must hold "
        "one JSON object"
    )


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{n} bytes"


class _ParquetSource(RowSource):
    def __init__(self, cfg: InputConfig) -> None:
        # Imported here: pyarrow costs ~0.2 s at start-up and JSONL runs never need it.
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = cfg.path
        raw = _open_binary(path)  # for the same clear messages as JSONL
        total_bytes = _size_if_regular(raw)
        raw.close()
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{path}: not a readable Parquet file ({exc}); if it is JSON Lines, pass "
                "--input-format jsonl"
            ) from None
        super().__init__(path, total_rows=self._file.metadata.num_rows, total_bytes=total_bytes)
        names = set(self._file.schema_arrow.names)
        if cfg.prompt_field not in names and cfg.messages_field not in names:
            columns = ", ".join(sorted(names)) or "(none)"
            raise InputError(
                f"{path}: no {cfg.prompt_field!r} or {cfg.messages_field!r} column (columns: "
                f"{columns}); set --prompt-field or --messages-field"
            )
        wanted = (
            cfg.prompt_field,
            cfg.messages_field,
            cfg.id_field,
            *SAMPLING_FIELDS,
            *cfg.keep_fields,
        )
        # Only the columns a row can use are decoded; a wide table of features next
        # to the prompts costs nothing.
        self._columns = [name for name in dict.fromkeys(wanted) if name in names]
        self._cfg = cfg
        self._arrow_error: type[Exception] = pa.ArrowException

    def close(self) -> None:
        self._file.close()

    def _chunks(self) -> Iterator[list[Row]]:
        cfg = self._cfg
        ids = _IdRegistry(cfg.id_field, "row")
        total_rows = self.total_rows or 0
        index = 0
        batches = self._file.iter_batches(batch_size=cfg.chunk_size, columns=self._columns)
        while True:
            try:
                batch = next(batches, None)
            except (self._arrow_error, OSError) as exc:
                raise InputError(
                    f"{self.name}: cannot read past row {index} ({exc}); the file may be damaged"
                ) from None
            if batch is None:
                break
            chunk: list[Row] = []
            for obj in batch.to_pylist():
                line = index + 1
                where = f"{self.name} row {line}"
                row = parse_row(obj, index=index, line=line, fields=cfg, where=where)
                chunk.append(ids.check(obj, row, where))
                index += 1
            self.rows_read = index
            # Parquet decodes whole column chunks, so the byte position is an estimate
            # from the row count, which is exact.
            if self.total_bytes is not None and total_rows:
                self.bytes_read = self.total_bytes * index // total_rows
            yield chunk
