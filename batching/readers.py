"""Stream input rows from JSONL (plain, gzip or zstd), Parquet or stdin, in chunks.

JSONL whose first row is an OpenAI batch request line (`custom_id`, `url`, `body`)
is read as that format (`batching.openai_batch`); `--input-format openai` forces it.
Every input row becomes exactly one `Request` or `InvalidRow`, in file order, with
memory bounded by the chunk size (Parquet: by the row group) whatever the file size.
A row that cannot be read (bad JSON, not UTF-8, over-long, duplicate id) becomes an
`InvalidRow` at its place; only a file that cannot be read at all (missing, not
Parquet, corrupt gzip or zstd) raises `InputError`.

>>> with open("prompts.jsonl", "wb") as prompts:
...     _ = prompts.write(b'{"prompt": "Hi"}\\n' * 3)
>>> with open_source(InputConfig(path="prompts.jsonl", chunk_size=2)) as source:
...     for chunk in source.chunks():
...         print(len(chunk), source.rows_read, source.bytes_read <= source.total_bytes)
2 2 True
1 3 True
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Callable
from typing import BinaryIO

from batching.config import DEFAULT_MAX_LINE_BYTES, InputConfig, InputFormat
from batching.errors import InputError
from batching.files_source import FilesSource, place_in_file
from batching.jsonl_source import JsonlSource, LiveLines, open_jsonl_file
from batching.location import Location
from batching.parquet_source import ParquetSource
from batching.row_source import RowSource

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "STDIN_NAME",
    "RowPlace",
    "RowSource",
    "input_format",
    "is_local_pipe",
    "open_source",
    "row_place",
    "rows_place",
]

# How messages name a row: (its index across the input, its line in its file) ->
# "data/b.jsonl:3" or "data/c.parquet row 3".
RowPlace = Callable[[int, int], str]

STDIN_NAME = "<stdin>"


def open_source(
    cfg: InputConfig,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    stdin: BinaryIO | None = None,
) -> RowSource:
    """Open the input `cfg` names; raises `InputError` at once if it cannot be read.

    `stdin` replaces `sys.stdin.buffer` when the path is "-" (tests inject a BytesIO).

    Several files (more paths, a directory, a glob) are read one after another as
    one source, rows numbered across them (`FilesSource`).

    >>> source = open_source(InputConfig(path="-"), stdin=io.BytesIO(b'{"prompt": "Hi"}'))
    >>> [row.prompt for chunk in source.chunks() for row in chunk]
    ['Hi']
    """
    if cfg.several:
        return FilesSource(cfg, max_line_bytes=max_line_bytes)
    fmt = input_format(cfg.location, cfg.format)
    if cfg.location.is_stdio:
        if fmt == "parquet":
            raise InputError(
                "stdin: Parquet cannot be streamed from stdin; pass the file's path instead"
            )
        stream = _process_stdin() if stdin is None else stdin
        return JsonlSource(cfg, STDIN_NAME, stream, None, None, max_line_bytes)
    if fmt == "parquet":
        return ParquetSource(cfg)
    return open_jsonl_file(cfg, max_line_bytes)


def _process_stdin() -> BinaryIO | LiveLines:
    """The process's stdin, read from its descriptor as lines arrive where it has one."""
    try:
        fd = sys.stdin.buffer.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        # Replaced by a test runner or an embedding program: read what it gives.
        return sys.stdin.buffer
    return LiveLines(fd)


def input_format(where: Location | str, override: InputFormat | None = None) -> InputFormat:
    """The format to read `where` as: `override`, else what its extension says.

    >>> input_format("prompts.jsonl.gz")
    'jsonl'
    """
    if override is not None:
        return override
    location = Location.of(where)
    if location.format == "parquet" and location.compressed is not None:
        raise InputError(
            f"{location.name}: Parquet compresses its columns itself and cannot be read "
            f"{location.compressed}-compressed; decompress it first"
        )
    if location.format is not None:  # stdin too: JSON Lines
        return location.format
    if is_local_pipe(location):
        # A pipe (`run <(tail -f q.jsonl)` names /dev/fd/63) is JSON Lines, like stdin:
        # Parquet cannot be streamed anyway.
        return "jsonl"
    if location.is_local and os.path.isdir(location.path):
        raise InputError(f"{location.name}: is a directory; pass a .jsonl or .parquet file")
    if location.is_local and not os.path.lexists(location.path):
        # Before the extension: `run data/` with no data/ asked for a missing directory,
        # and was told its name had no extension.
        raise InputError(f"{location.name}: no such file or directory; check the path")
    raise InputError(
        f"{location.name}: unknown input format for extension {location.extension}; name the "
        "file .jsonl, .jsonl.gz, .jsonl.zst or .parquet, or pass --input-format jsonl, "
        "parquet or openai"
    )


def row_place(cfg: InputConfig) -> RowPlace:
    """How messages name a row of `cfg`'s input by (index, line) when its source is
    not at hand (`rows_place` is, where it is), as the sources do.

    For messages made after the reader is done with a row (the engine refusing
    it), so they start the way the schema's messages do.

    >>> row_place(InputConfig(path="prompts.parquet"))(2, 3)
    'prompts.parquet row 3'
    """
    name = STDIN_NAME if cfg.location.is_stdio else cfg.location.name
    if cfg.several:
        # Only the source's spans say which file an index is in (`rows_place`), and
        # they are filled as it reads: a runner on rows read elsewhere (a Ray
        # replica) can say no more than this.
        return lambda index, line: f"{name} (line or row {line} of one of its files)"
    try:
        parquet = input_format(cfg.location, cfg.format) == "parquet"
    except InputError:  # a label, a directory or a glob rather than a file: JSONL's form
        parquet = False
    # The sources' own forms (JsonlSource, ParquetSource); a test holds them equal.
    return lambda index, line: place_in_file(name, parquet, line)


def rows_place(source: RowSource, cfg: InputConfig) -> RowPlace:
    """How messages name a row of `source` (opened from `cfg`) by index and line: the
    one rule for one file and for several, whose index says which file it is in.

    >>> with open_source(InputConfig(path="-"), stdin=io.BytesIO(b"")) as source:
    ...     rows_place(source, InputConfig(path="-"))(0, 1)
    '<stdin>:1'
    """
    if isinstance(source, FilesSource):
        return source.spans.place
    return row_place(cfg)


def is_local_pipe(where: Location | str) -> bool:
    """Whether `where` is a local pipe or device rather than a file (or missing)."""
    location = Location.of(where)
    if not location.is_local:
        return False
    try:
        mode = os.stat(location.path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
