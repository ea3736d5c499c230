"""Write results, in input order, as JSONL, OpenAI batch lines or Parquet; resume them.

Results are written as they come, and a crash (even kill -9) leaves an output that
`--resume` continues after its last complete row:

- JSONL goes out one system call per batch, whole lines only, so the worst a crash
  leaves is one torn last line, which resume cuts off before it appends.
- Parquet to a file goes into sealed part files in `<out>.parts/`: each durable
  flush closes the open part (footer, fsync) and renames it into place, so the
  directory only ever holds whole parts, plus maybe one `.tmp` file that resume
  deletes. `close()` then copies the parts, in order, into `<out>` in row groups of
  `PARQUET_ROW_GROUP_ROWS` rows, so the finished file does not depend on where the
  flushes (or a crash and resume) fell. Leaving the `with` block by an exception
  keeps the parts instead: a half output never looks like a finished `<out>`.
- Parquet to stdout is one stream, a row group per flush, readable only once
  `close()` has written its footer, and not resumable.
- JSONL named .gz or .zst goes out compressed, one gzip member (zstd frame) per
  durable flush (`batching.compression`): a crash tears at most the last member,
  and resume cuts the file back to the end of the last whole one.

Nothing stays in a Python-level buffer after `write()` returns: if stdout is a pipe
whose reader has gone, `write()` raises `BrokenPipeError` and no half batch is left
behind for the interpreter to trip over again at exit.

This module opens writers and writes JSONL; `parquet_output` writes Parquet, and
`existing_output` reads an earlier output back for `--resume`.

>>> with open_writer(OutputConfig(path="out.jsonl")) as writer:
...     writer.write([Result(index=0, id="a", output="Hello")])
>>> with open("out.jsonl") as written:
...     print(written.read(), end="")
{"id":"a","output":"Hello",...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, BinaryIO

from batching.compression import CompressedSink
from batching.config import OutputConfig
from batching.existing_output import ExistingOutput, scan_output
from batching.location import Codec
from batching.openai_batch import OpenAIBatchLines
from batching.output_format import dumps_line, output_format
from batching.parquet_format import PARQUET_ROW_GROUP_ROWS, PARTS_SUFFIX
from batching.parquet_output import ParquetPartsWriter, ParquetStreamWriter
from batching.records import Result
from batching.result_writer import ResultWriter
from batching.sink import Sink
from batching.uri import open_remote_output

# The public names of the output side live here, whichever module owns them.
__all__ = [
    "PARQUET_ROW_GROUP_ROWS",
    "PARTS_SUFFIX",
    "ExistingOutput",
    "ResultWriter",
    "open_writer",
    "output_format",
    "scan_output",
]


def open_writer(
    cfg: OutputConfig,
    *,
    stdout: BinaryIO | None = None,
    row_group_rows: int | None = None,
    openai_lines: OpenAIBatchLines | None = None,
    existing: ExistingOutput | None = None,
) -> ResultWriter:
    """Open the output `cfg` names; raises `OutputError` at once if it cannot be.

    `stdout` replaces the process's stdout when the path is None or "-" (tests pass a
    BytesIO). An existing output is refused unless `cfg.overwrite` (replace it) or
    `cfg.resume` (continue it after its last complete row, see `scan_output`) is set.
    `openai_lines` makes OpenAI lines for the run (the errors file shares the
    output's, so a failed line has the same id in both). `existing` is what
    `scan_output(cfg)` found, where the caller scanned it already: a compressed
    output resumed is cut back to its whole members, and only a full scan finds them.

    >>> import io
    >>> out = io.BytesIO()
    >>> with open_writer(OutputConfig(), stdout=out) as writer:
    ...     writer.write([Result(index=0, id=7, output="Hi")])
    >>> out.getvalue()[:24]
    b'{"id":7,"output":"Hi","f'
    """
    fmt, location = cfg.written_format, cfg.location
    rows = row_group_rows or PARQUET_ROW_GROUP_ROWS
    to_line: Callable[[Result], dict[str, Any]] = Result.to_dict
    if fmt == "openai":
        to_line = openai_lines or OpenAIBatchLines(cfg.model)
    if location.is_stdio:
        sink = Sink.for_stdout(stdout)
        return ParquetStreamWriter(sink, rows) if fmt == "parquet" else _JsonlWriter(sink, to_line)
    path = location.path
    if location.is_remote:
        # An object store takes one stream: Parquet goes out a whole row group at a
        # time, so the file matches a local output's, footer at close.
        stream = open_remote_output(path, overwrite=cfg.overwrite, resume=cfg.resume)
        sink = Sink(stream, path, owned=True, resumable=False)
        if fmt == "parquet":
            return ParquetStreamWriter(sink, rows, whole_row_groups=True)
        return _JsonlWriter(_compressed(sink, location.compressed), to_line)
    if fmt == "parquet":
        return ParquetPartsWriter.open(
            path, overwrite=cfg.overwrite, resume=cfg.resume, row_group_rows=rows
        )
    keep = None
    if cfg.resume and location.compressed is not None:
        existing = existing or scan_output(cfg)
        keep = existing.whole_bytes if existing is not None else None
    sink = Sink.for_file(path, overwrite=cfg.overwrite, resume=cfg.resume, keep=keep)
    return _JsonlWriter(_compressed(sink, location.compressed, keep or 0), to_line)


def _compressed(sink: Sink, codec: Codec | None, kept: int = 0) -> Sink | CompressedSink:
    return sink if codec is None else CompressedSink(sink, codec, resumed_bytes=kept)


class _JsonlWriter(ResultWriter):
    """JSON Lines of `to_line(result)`: our own rows, or OpenAI batch output lines."""

    def __init__(
        self, sink: Sink | CompressedSink, to_line: Callable[[Result], dict[str, Any]]
    ) -> None:
        super().__init__(sink.name)
        self._sink = sink
        self._to_line = to_line

    def write(self, results: Sequence[Result]) -> None:
        if not results:
            return
        # One write per batch, whole lines only, so a reader of the file (or a resume
        # after a crash) only ever has to drop a torn last line. Appending each line
        # to one bytearray as it is made measured 4.5x faster (0.75 vs 3.4 µs a row)
        # than joining a list of them: the allocator reuses a freed line's memory.
        buffer = bytearray()
        to_line = self._to_line
        for result in results:
            buffer += dumps_line(to_line(result))
        self._sink.write(buffer)
        self._sink.flush()  # a given stdout may buffer; rows should reach a pipe now
        self.rows_written += len(results)

    def flush(self, durable: bool = False) -> None:
        self._sink.flush(durable=durable)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and isinstance(self._sink, CompressedSink):
            self._sink.seal()
        self.close()

    def close(self) -> None:
        self._sink.close()
