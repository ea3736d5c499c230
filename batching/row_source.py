"""The interface every input source implements, and opening the file behind one.

`RowSource` is what the pipeline reads; the JSONL and Parquet sources subclass it
and share `open_binary` so a missing or unreadable file reads the same either way.
Each also hashes the input as it reads it (`ReadDigest`), for a run's record of
exactly which bytes it ran on.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from abc import abstractmethod
from collections.abc import Iterator

from batching.closing import ClosedOnExit
from batching.errors import InputError
from batching.location import Location
from batching.manifest import InputDigest
from batching.records import Row
from batching.uri import RemoteInput, open_remote_input

__all__ = ["ReadDigest", "RowSource", "open_binary", "size_if_regular"]


class ReadDigest:
    """SHA-256 of an input's bytes as they are read, and whether the read got to the end.

    The bytes as stored (a .gz file's compressed bytes), so `sha256sum FILE` gives
    the same hex; hashed on the way through, not in a second pass over the file.

    >>> digest = ReadDigest()
    >>> digest.update(b"abc")
    >>> digest.complete = True
    >>> digest.value()[:23]
    'sha256:ba7816bf8f01cfea'
    """

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.complete = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)

    def value(self) -> str | None:
        """ "sha256:<hex>" once the input was read to its end; None until then."""
        return f"sha256:{self._sha256.hexdigest()}" if self.complete else None


class RowSource(ClosedOnExit):
    """Rows of one input, read once, front to back, in chunks.

    `total_rows` is exact for Parquet and None for JSONL; `total_bytes` is the size
    on disk (compressed for .gz) and None for stdin; `bytes_read` counts the same
    bytes, so `bytes_read / total_bytes` is the fraction done. `input_digest` is
    the SHA-256 of those bytes once every row was read, None before.
    """

    def __init__(
        self,
        name: str,
        *,
        total_rows: int | None,
        total_bytes: int | None,
        digest: ReadDigest | None = None,
    ) -> None:
        self.name = name
        self.total_rows = total_rows
        self.total_bytes = total_bytes
        self.bytes_read = 0
        self.rows_read = 0
        self.digest = digest or ReadDigest()
        self._started = False

    @property
    def input_digest(self) -> str | None:
        """ "sha256:<hex>" of the input's bytes as stored, once `chunks()` reached the end."""
        return self.digest.value()

    def input_digests(self) -> list[InputDigest]:
        """Each file read and its digest (one file here; several for `FilesSource`)."""
        return [InputDigest(self.name, self.input_digest)]

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
