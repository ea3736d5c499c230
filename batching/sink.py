"""Bytes out to an output file or stdout: all of each write, or an exception.

Shared by the JSONL writer and the Parquet stream writer, with the errors for an
output path that cannot be opened for writing.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from typing import BinaryIO, Literal

from batching.errors import OutputError, OutputWriteError

__all__ = ["Sink", "exists_message", "open_error", "write_failed"]

_TAIL_BLOCK = 64 * 1024


class Sink:
    """Bytes out to a file or stdout, all of each write or an exception.

    Raw (unbuffered) where we hold a file descriptor: a Python buffer would keep
    a half batch that a broken pipe or a crash then leaves in limbo.

    >>> sink = Sink(io.BytesIO(), "memory", owned=False)
    >>> sink.write(b'{"id":7}')
    8
    """

    def __init__(self, stream: BinaryIO, name: str, *, owned: bool, resumable: bool = True) -> None:
        self._stream = stream
        self.name = name
        self._owned = owned
        # Whether `--resume` can continue what was written (not stdout, not a store).
        self.resumable = resumable
        self.broken = False  # the reader of a pipe went away
        self.closed = False

    @classmethod
    def for_file(cls, path: str, *, overwrite: bool, resume: bool, keep: int | None = None) -> Sink:
        """The file at `path`; on `resume`, cut after its last newline, or to `keep`
        bytes where given (a compressed output: its last whole member's end)."""
        # Plain open(): the file gets the user's umask like any file they make.
        # "x" refuses an existing file without a race between check and create.
        mode: Literal["ab", "wb", "xb"] = "ab" if resume else "wb" if overwrite else "xb"
        try:
            stream = open(path, mode, buffering=0)  # noqa: SIM115
        except FileExistsError:
            raise OutputError(exists_message(path)) from None
        except OSError as exc:
            raise open_error(path, exc) from None
        if resume:
            try:
                if keep is None:
                    _cut_torn_tail(path, stream.fileno())
                else:
                    _cut_to(stream.fileno(), keep)
            except BaseException:
                stream.close()
                raise
        return cls(stream, path, owned=True)

    @classmethod
    def for_stdout(cls, stdout: BinaryIO | None) -> Sink:
        if stdout is not None:
            return cls(stdout, "stdout", owned=False, resumable=False)
        buffered = sys.stdout.buffer
        try:
            fd = buffered.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            # A replaced stdout (a test runner's capture) has no descriptor: use it.
            return cls(buffered, "stdout", owned=False, resumable=False)
        # Anything printed before us goes out first, then we write to the descriptor.
        sys.stdout.flush()
        buffered.flush()
        raw = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
        return cls(raw, "stdout", owned=True, resumable=False)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """All of `data` (a raw file may take part of it per call), or an exception."""
        view = memoryview(data)
        try:
            while view:
                written = self._stream.write(view)
                if written is None:  # a non-blocking descriptor that is full
                    raise BlockingIOError(errno.EAGAIN, "it would block")
                view = view[written:]
        except BrokenPipeError:
            self.broken = True
            raise
        except OSError as exc:
            # A full disk or an I/O error: one line for the user, not a traceback.
            raise self.write_error(exc) from exc
        return len(data)

    def write_error(self, exc: OSError) -> OutputWriteError:
        """The one-line error for a failed write to this sink."""
        return write_failed(self.name, exc, resumable=self.resumable)

    def flush(self, *, durable: bool = False) -> None:
        if self.broken or self.closed:
            return
        self._flush_stream()
        if durable:
            try:
                fd = self._stream.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                return
            # fsync on a pipe or terminal fails with EINVAL; there is no disk to wait for.
            if stat.S_ISREG(os.fstat(fd).st_mode):
                try:
                    os.fsync(fd)
                except OSError as exc:  # the disk refused what was written
                    raise self.write_error(exc) from exc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.broken:
            # The reader is gone: flushing again would only raise again.
            if self._owned:
                self._stream.close()
            return
        try:
            self._flush_stream()
        except BaseException:
            if self._owned:
                with contextlib.suppress(OSError):
                    self._stream.close()
            raise
        if self._owned:
            try:
                self._stream.close()  # a remote stream uploads here: its failures show here
            except OSError as exc:
                raise self.write_error(exc) from exc

    def _flush_stream(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self.broken = True
            raise
        except OSError as exc:
            raise self.write_error(exc) from exc


def write_failed(name: str, exc: OSError, *, resumable: bool = True) -> OutputWriteError:
    """The one-line error for a write to `name` that failed mid-run (a full disk).

    >>> print(write_failed("out.jsonl", OSError(28, "No space")))
    out.jsonl: cannot write (No space); the rows before it are saved: --resume continues
    >>> print(write_failed("s3://b/out.jsonl", OSError(5, "I/O error"), resumable=False))
    s3://b/out.jsonl: cannot write (I/O error)
    """
    reason = exc.strerror or str(exc)
    # stdout cannot be continued, and an object store keeps nothing of a failed
    # stream (and has no --resume).
    if not resumable:
        return OutputWriteError(f"{name}: cannot write ({reason})")
    return OutputWriteError(
        f"{name}: cannot write ({reason}); the rows before it are saved: --resume continues"
    )


def exists_message(path: str) -> str:
    """What to tell a user whose output path is taken by an earlier output.

    >>> exists_message("out.jsonl")
    'out.jsonl: already exists; pass --resume to continue it or --overwrite to replace it'
    """
    return f"{path}: already exists; pass --resume to continue it or --overwrite to replace it"


def open_error(path: str, exc: OSError) -> OutputError:
    """The error for an output path that cannot be opened for writing, with what to do.

    >>> print(open_error("missing/out.jsonl", FileNotFoundError()))
    missing/out.jsonl: directory missing does not exist; create it
    """
    if isinstance(exc, FileNotFoundError):
        parent = os.path.dirname(path) or "."
        return OutputError(f"{path}: directory {parent} does not exist; create it")
    if isinstance(exc, IsADirectoryError):
        return OutputError(f"{path}: is a directory; name a file")
    if isinstance(exc, PermissionError):
        return OutputError(f"{path}: permission denied; write somewhere else")
    return OutputError(f"{path}: cannot open for writing ({exc.strerror or exc})")


def _cut_torn_tail(path: str, fd: int) -> None:
    """Truncate the file open for append at `fd` after its last newline, so appended
    rows start a line; reads only the tail, through `path` (`fd` is write-only)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return  # a pipe or device: nothing to cut, and ftruncate would fail
    position = info.st_size
    keep = 0
    with open(path, "rb", buffering=0) as reader:
        while position > 0:
            start = max(0, position - _TAIL_BLOCK)
            newline = os.pread(reader.fileno(), position - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
    _cut_to(fd, keep)


def _cut_to(fd: int, keep: int) -> None:
    """Truncate the regular file open at `fd` to `keep` bytes, if it is longer."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and keep < info.st_size:
        os.ftruncate(fd, keep)
        # Once per resume: the cut reaches the disk before any new row can.
        os.fsync(fd)
