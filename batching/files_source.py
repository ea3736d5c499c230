"""Several input files read as one: rows numbered across them, each file's own lines kept.

`FilesSource` opens the files one at a time, in order, and renumbers each row's
`index` to continue the count (what the pipeline orders by), leaving its `line` the
file's own, so a message still reads `data/b.jsonl:3`. `InputSpans` records where
each file's rows start as they are read: the one rule that says which file an
index is in, for messages (`place`) and for `-o DIR/` (which output a result goes to).

>>> for name in ("a.jsonl", "b.jsonl"):
...     with open(name, "wb") as file:
...         _ = file.write(b'{"prompt": "Hi"}\\n{"prompt": "there"}\\n')
>>> from batching.config import InputConfig
>>> with FilesSource(InputConfig("a.jsonl", more_paths=("b.jsonl",))) as source:
...     rows = [row for chunk in source.chunks() for row in chunk]
...     [(row.index, source.spans.place(row.index, row.line)) for row in rows]
[(0, 'a.jsonl:1'), (1, 'a.jsonl:2'), (2, 'b.jsonl:1'), (3, 'b.jsonl:2')]
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence

from batching.config import DEFAULT_MAX_LINE_BYTES, InputConfig
from batching.errors import InputError
from batching.inputs import InputFile
from batching.location import Location
from batching.manifest import InputDigest
from batching.protocols import RowSupply
from batching.records import Row
from batching.row_source import RowSource

__all__ = ["FileRows", "FilesSource", "InputSpans", "check_openable", "place_in_file"]

# What reads one file: its rows as opened, or wrapped (a per-file resume).
FileRows = Callable[[int, RowSupply], RowSupply]


def place_in_file(name: str, parquet: bool, line: int) -> str:
    """How messages name row `line` of the file `name`: the sources' own forms.

    >>> place_in_file("in.jsonl", False, 3), place_in_file("in.parquet", True, 3)
    ('in.jsonl:3', 'in.parquet row 3')
    """
    return f"{name} row {line}" if parquet else f"{name}:{line}"


class InputSpans:
    """Where each file's rows start in the numbering across the files, as read so far.

    Appended to by the reader as it opens each file, and asked by the writer and
    by messages about rows already read, so a file is always known by the time
    one of its rows is asked about.

    >>> spans = InputSpans((InputFile.of("a.jsonl"), InputFile.of("b.parquet")), (False, True))
    >>> spans.start(0, 0); spans.start(1, 2)
    >>> spans.file_of(1), spans.file_of(2), spans.place(2, 1)
    (0, 1, 'b.parquet row 1')
    """

    def __init__(self, files: Sequence[InputFile], parquet: Sequence[bool]) -> None:
        self.files = tuple(files)
        self._parquet = tuple(parquet)
        self._starts: list[int] = []

    def start(self, file_number: int, index: int) -> None:
        """File `file_number`'s rows start at `index` (files are started in order)."""
        assert file_number == len(self._starts), "files start in order"
        self._starts.append(index)

    def file_of(self, index: int) -> int:
        """The number of the file row `index` is in (the last to start at or before it:
        an empty file starts where the next one does)."""
        return max(0, bisect.bisect_right(self._starts, index) - 1)

    def first_index(self, file_number: int) -> int | None:
        """Where file `file_number`'s rows start; None while it has not been opened."""
        return self._starts[file_number] if file_number < len(self._starts) else None

    def place(self, index: int, line: int) -> str:
        """How messages name row `index`, which is `line` in its own file."""
        number = self.file_of(index)
        return place_in_file(self.files[number].name, self._parquet[number], line)


class FilesSource(RowSource):
    """The rows of `cfg.files`, in order, numbered across them.

    `rows_of(number, rows)` reads file `number` from its opened rows (by default
    the source itself; `job` wraps it to skip what each file's output holds, under
    `-o DIR/ --resume`); the rows it yields are numbered from where the last
    file's left off, so the numbers never have a gap. `total_bytes` is the files'
    summed size, where every size can be known without opening the file.
    """

    def __init__(
        self,
        cfg: InputConfig,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        rows_of: FileRows | None = None,
    ) -> None:
        from batching.readers import input_format

        formats = [input_format(file.location, cfg.format) for file in cfg.files]
        super().__init__(_input_name(cfg), total_rows=None, total_bytes=_summed_size(cfg.files))
        self._cfg = cfg
        self._max_line_bytes = max_line_bytes
        self._rows_of = rows_of
        self.spans = InputSpans(cfg.files, [fmt == "parquet" for fmt in formats])
        self._open: RowSource | None = None
        self._bytes_before = 0  # of the files read to the end
        self._rows_before = 0
        self._digests: list[InputDigest] = []

    def input_digests(self) -> list[InputDigest]:
        """Each file read to its end so far, with its digest, in order."""
        return list(self._digests)

    def _chunks(self) -> Iterator[list[Row]]:
        from batching.readers import open_source

        index = 0
        for number, file in enumerate(self._cfg.files):
            self.spans.start(number, index)
            source = open_source(self._cfg.for_file(file), max_line_bytes=self._max_line_bytes)
            self._open = source
            try:
                supply: RowSupply = _FileRows(source)
                if self._rows_of is not None:
                    supply = self._rows_of(number, supply)
                for chunk in supply.chunks():
                    for row in chunk:
                        row.index = index
                        index += 1
                    self.rows_read = self._rows_before + source.rows_read
                    self.bytes_read = self._bytes_before + source.bytes_read
                    yield chunk
                self._digests.extend(source.input_digests())
            finally:
                self._open = None
                source.close()
            self._rows_before += source.rows_read
            self._bytes_before += source.total_bytes or source.bytes_read
            self.rows_read, self.bytes_read = self._rows_before, self._bytes_before

    def close(self) -> None:
        if self._open is not None:
            self._open.close()

    def estimated_total_rows(self) -> int | None:
        """For the progress bar: the rows read so far, scaled by the bytes still ahead."""
        if self.total_bytes and self.bytes_read:
            estimate = round(self.rows_read * self.total_bytes / self.bytes_read)
            return max(self.rows_read, estimate)
        return None


def _input_name(cfg: InputConfig) -> str:
    """The input as given, and how many files it is: `data/ (12 files)`.

    >>> _input_name(InputConfig("a.jsonl", more_paths=("b.jsonl",)))
    'a.jsonl, b.jsonl (2 files)'
    """
    given = (cfg.path, *cfg.more_paths)
    shown = ", ".join(given[:3]) + (", ..." if len(given) > 3 else "")
    count = len(cfg.files)
    return f"{shown} ({count} file{'' if count == 1 else 's'})"


class _FileRows:
    """One opened file's rows, as a `RowSupply`."""

    def __init__(self, source: RowSource) -> None:
        self._source = source

    def chunks(self) -> Iterator[list[Row]]:
        return self._source.chunks()

    def estimated_total_rows(self) -> int | None:
        return self._source.total_rows


def _summed_size(files: Sequence[InputFile]) -> int | None:
    """The files' summed size as stored; None if one's size is not known without a
    round trip to its store (a remote file named on its own rather than listed)."""
    total = 0
    for file in files:
        location: Location = file.location
        if file.size is not None:
            total += file.size
            continue
        if not location.is_local:
            return None
        try:
            total += os.stat(location.path).st_size
        except OSError:
            # Reported, with what to do, when the file is opened in its turn.
            return None
    return total


def check_openable(files: Sequence[InputFile]) -> None:
    """Raise `InputError` for a local file that is not there, before any model loads:
    found only when its turn came, it stopped a run hours in."""
    for file in files:
        location = file.location
        if location.is_local and not os.path.exists(location.path):
            raise InputError(f"{file.name}: no such file; check the path (use - to read stdin)")
