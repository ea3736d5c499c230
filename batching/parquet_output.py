"""Parquet writers: one stream to stdout, or crash-safe sealed parts assembled into a file.

See `writers` for what a crash leaves behind and how `--resume` continues it;
`parquet_format` owns the columns and the parts directory both sides agree on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from batching.errors import OutputError
from batching.parquet_format import (
    PARTS_SUFFIX,
    JsonIdRuns,
    ParquetLayout,
    parquet_rows,
    part_path,
    read_schema,
    whole_parts,
)
from batching.records import Result
from batching.result_writer import ResultWriter
from batching.sink import Sink, exists_message, open_error, write_failed

if TYPE_CHECKING:
    from batching.config import OutputConfig

__all__ = ["ParquetPartsWriter", "ParquetStreamWriter", "unfinished_rows_dir"]

_TMP_SUFFIX = ".tmp"
_ASSEMBLY_NAME = "assembled.parquet" + _TMP_SUFFIX


class _ParquetRows(ResultWriter):
    """Buffers results into row groups of one layout; subclasses say where they go."""

    def __init__(self, name: str, row_group_rows: int, schema: Any = None) -> None:
        # Imported here: pyarrow costs ~0.2 s at start-up and JSONL output never needs it.
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(name)
        self._pa = pa
        self._pq = pq
        self._row_group_rows = row_group_rows
        self._pending: list[Result] = []
        self._layout = ParquetLayout(pa, schema)
        # Of the file being written: its rows so far, and which hold a JSON text id.
        self._file_rows = 0
        self._json_ids = JsonIdRuns()

    def write(self, results: Sequence[Result]) -> None:
        self._pending.extend(results)
        if len(self._pending) >= self._row_group_rows:
            self._write_row_group()

    @abstractmethod
    def _write_table(self, table: Any) -> None:
        """Write `table` as one row group."""

    def _write_row_group(self) -> None:
        if not self._pending:
            return
        results, self._pending = self._pending, []
        if self._layout.schema is None:
            self._layout.start(results)
        table, json_ids = self._layout.table(results, self.name)
        self._write_table(table)
        for position in json_ids:
            self._json_ids.add(self._file_rows + position)
        self._file_rows += len(results)
        self.rows_written += len(results)

    def _finish(self, writer: Any) -> None:
        """Write the footer of the file `writer` writes."""
        metadata = self._json_ids.metadata()
        if metadata:
            writer.add_key_value_metadata(metadata)
        self._file_rows = 0
        self._json_ids = JsonIdRuns()
        writer.close()


class ParquetStreamWriter(_ParquetRows):
    """Parquet as one stream: a row group per flush, the footer at close.

    `whole_row_groups` (a remote file, whose object appears only at close anyway):
    a flush writes no short row group, so the row groups are those of a local
    output, `row_group_rows` each but the last.
    """

    def __init__(self, sink: Sink, row_group_rows: int, *, whole_row_groups: bool = False) -> None:
        super().__init__(sink.name, row_group_rows)
        self._sink = sink
        self._writer: Any = None
        self._whole_row_groups = whole_row_groups

    def write(self, results: Sequence[Result]) -> None:
        if not self._whole_row_groups:
            super().write(results)
            return
        self._pending.extend(results)
        size = self._row_group_rows
        while len(self._pending) >= size:
            rest = self._pending[size:]
            del self._pending[size:]
            self._write_row_group()
            self._pending = rest

    def flush(self, durable: bool = False) -> None:
        if not self._whole_row_groups:
            self._write_row_group()
        self._sink.flush(durable=durable)

    def close(self) -> None:
        if self._sink.closed:
            return
        if self._sink.broken:
            # Nobody is reading: a footer cannot reach them, and trying raises again.
            self._sink.close()
            return
        try:
            self._write_row_group()
        finally:
            # Even when the last group failed, the footer makes the rows before it
            # a readable file.
            try:
                if self._writer is None:
                    self._layout.start([])  # no rows: still a valid file, fixed columns
                    self._writer = self._pq.ParquetWriter(self._sink, self._layout.schema)
                self._finish(self._writer)
            finally:
                self._sink.close()

    def _write_table(self, table: Any) -> None:
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self._sink, self._layout.schema)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._sink.flush()


class ParquetPartsWriter(_ParquetRows):
    """Parquet to a file, by way of sealed parts in `<out>.parts/`; see the `writers` doc."""

    def __init__(self, path: str, row_group_rows: int, schema: Any, next_part: int) -> None:
        super().__init__(path, row_group_rows, schema)
        self._path = path
        self._parts_dir = path + PARTS_SUFFIX
        self._next_part = next_part
        self._part_file: BinaryIO | None = None
        self._part_writer: Any = None
        self._closed = False

    @classmethod
    def open(
        cls, path: str, *, overwrite: bool, resume: bool, row_group_rows: int
    ) -> ParquetPartsWriter:
        _prepare_parts(path, overwrite=overwrite, resume=resume)
        parts = whole_parts(path + PARTS_SUFFIX)
        schema = read_schema(parts[0]) if parts else None
        return cls(path, row_group_rows, schema, next_part=len(parts))

    def write(self, results: Sequence[Result]) -> None:
        with self._writing():
            super().write(results)

    def flush(self, durable: bool = False) -> None:
        with self._writing():
            self._write_row_group()
            if durable:
                self._seal()
            elif self._part_file is not None:
                self._part_file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._writing():
            try:
                self._write_row_group()
            finally:
                self._seal()
            self._assemble()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk) as one line for the user, not a traceback."""
        try:
            yield
        except OSError as exc:
            raise write_failed(self._path, exc) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # A failed run keeps its parts for --resume rather than leave a finished-looking
        # <out>. Rows still pending are not written: resume redoes them, and writing
        # them here could raise a second error over the one the user needs to see.
        self._closed = True
        self._pending = []
        # Keep the rows written so far; if the disk refuses that too, the error the
        # user needs is the one that ended the run.
        with contextlib.suppress(OSError):
            self._seal()

    def _write_table(self, table: Any) -> None:
        if self._part_writer is None:
            self._part_file = open(self._part_path(self._next_part) + _TMP_SUFFIX, "wb")  # noqa: SIM115
            self._part_writer = self._pq.ParquetWriter(self._part_file, self._layout.schema)
        self._part_writer.write_table(table, row_group_size=table.num_rows)

    def _seal(self) -> None:
        """Make the open part a whole part: footer, fsync, rename into place."""
        if self._part_file is None:
            return
        file, writer = self._part_file, self._part_writer
        self._part_file = self._part_writer = None
        try:
            self._finish(writer)
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        final = self._part_path(self._next_part)
        os.replace(final + _TMP_SUFFIX, final)
        _fsync_dir(self._parts_dir)
        self._next_part += 1

    def _assemble(self) -> None:
        """Copy the parts, in order, into `<out>` (atomically), then remove them."""
        if self._layout.schema is None:
            self._layout.start([])  # no rows: still a valid file with the fixed columns
        schema = self._layout.schema
        temporary = os.path.join(self._parts_dir, _ASSEMBLY_NAME)
        with open(temporary, "wb") as file:
            writer = self._pq.ParquetWriter(file, schema)
            try:
                for table in self._regrouped(whole_parts(self._parts_dir)):
                    writer.write_table(table, row_group_size=table.num_rows)
            finally:
                self._finish(writer)
            file.flush()
            os.fsync(file.fileno())
        # Same file system (the parts dir sits next to <out>), so the replace is atomic.
        os.replace(temporary, self._path)
        _fsync_dir(os.path.dirname(self._path) or ".")
        shutil.rmtree(self._parts_dir)

    def _regrouped(self, parts: list[str]) -> Iterator[Any]:
        """The parts' rows as tables of `row_group_rows` rows (the last may be short).

        Regrouping makes `<out>` independent of where flushes fell, so a resumed
        run assembles the same file an uninterrupted one does. At most two row
        groups are held at a time.
        """
        size = self._row_group_rows
        batches: list[Any] = []
        held = offset = 0
        for part in parts:
            with self._pq.ParquetFile(part) as source:
                self._json_ids.extend(JsonIdRuns.read(source), offset)
                offset += source.metadata.num_rows
                for batch in source.iter_batches(batch_size=size):
                    batches.append(batch)
                    held += batch.num_rows
                    while held >= size:
                        table = self._pa.Table.from_batches(batches, schema=self._layout.schema)
                        yield table.slice(0, size)
                        rest = table.slice(size)
                        batches, held = rest.to_batches(), rest.num_rows
        if held:
            yield self._pa.Table.from_batches(batches, schema=self._layout.schema)

    def _part_path(self, number: int) -> str:
        return part_path(self._parts_dir, number)


def unfinished_rows_dir(output: OutputConfig) -> str | None:
    """Where an unfinished run's completed rows are, if not in the output itself: a
    local Parquet file is written whole at the end, and until then they are in its
    parts directory. None for every other output (its rows are in it).

    >>> from batching.config import OutputConfig
    >>> unfinished_rows_dir(OutputConfig("out.parquet"))
    'out.parquet.parts'
    >>> unfinished_rows_dir(OutputConfig("out.jsonl")) is None
    True
    """
    if not output.location.is_local or output.written_format != "parquet":
        return None
    return output.location.path + PARTS_SUFFIX


def _prepare_parts(path: str, *, overwrite: bool, resume: bool) -> None:
    """Leave `<out>.parts/` ready for the next part, or raise `OutputError`.

    A finished `<out>` is always the whole output: close() writes it only once all
    parts are in, and `--resume` moves it into the parts dir before adding any.
    So parts next to it are leftovers of a close() that was removing them.
    """
    parts_dir = path + PARTS_SUFFIX
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; name a file")
    try:
        if resume and os.path.exists(path):
            parquet_rows(path)  # refuse a file that is not ours before moving it
            if os.path.isdir(parts_dir):
                shutil.rmtree(parts_dir)
            os.mkdir(parts_dir)
            os.rename(path, part_path(parts_dir, 0))
            _fsync_dir(parts_dir)
            _fsync_dir(os.path.dirname(path) or ".")
        elif resume and os.path.isdir(parts_dir):
            for name in os.listdir(parts_dir):
                if name.endswith(_TMP_SUFFIX):  # a part or an assembly a crash cut short
                    os.unlink(os.path.join(parts_dir, name))
        else:
            if overwrite:
                if os.path.lexists(path):
                    os.unlink(path)
                if os.path.isdir(parts_dir):
                    shutil.rmtree(parts_dir)
            elif os.path.lexists(path):
                raise OutputError(exists_message(path))
            os.mkdir(parts_dir)  # an earlier run's parts: FileExistsError
    except FileExistsError:
        raise OutputError(exists_message(path)) from None
    except OSError as exc:
        raise open_error(path, exc) from None


def _fsync_dir(path: str) -> None:
    """Make a rename in `path` durable: without it a crash can undo the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory (EINVAL); a rename there is as
        # durable as they make it.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
