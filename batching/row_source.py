"""The interface every input source implements, and opening the file behind one.

`RowSource` is what the pipeline reads; the JSONL and Parquet sources subclass it
and share `open_binary` so a missing or unreadable file reads the same either way.
"""

from __future__ import annotations

import io
import os
import stat
from abc import abstractmethod
from collections.abc import Iterator

from batching.closing import ClosedOnExit
from batching.errors import InputError
from batching.location import Location
from batching.records import Row
from batching.uri import RemoteInput, open_remote_input

__all__ = ["RowSource", "open_binary", "size_if_regular"]


class RowSource(ClosedOnExit):
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


def open_binary(location: Location) -> io.RawIOBase:
    """Open `location` unbuffered for reading; `InputError` with a next step if it cannot be.

    Messages name it as it was given (a `file://` URI as the URI).
    """
    path = location.name
    if location.is_remote:
        return open_remote_input(location.path)
    try:
        return io.FileIO(location.path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the path (use - to read stdin)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; pass a .jsonl or .parquet file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied; check the file's permissions") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None


def size_if_regular(raw: io.RawIOBase) -> int | None:
    """The size on disk of a regular file; None for a pipe or device, which has none."""
    if isinstance(raw, RemoteInput):
        return raw.size
    info = os.fstat(raw.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None
