"""Sink: all of each write or an exception, durable flushes, resume cuts a torn line."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from batching.errors import OutputError, OutputWriteError
from batching.sink import Sink, exists_message, open_error, write_failed


class RawStream:
    """A raw (unbuffered) stream that takes at most `chunk` bytes per write, as a pipe
    or a socket may, and can be told to fail its writes, flush or close."""

    def __init__(
        self,
        chunk: int = 1 << 20,
        *,
        write_fails: OSError | None = None,
        flush_fails: OSError | None = None,
        close_fails: OSError | None = None,
        full: bool = False,
    ) -> None:
        self.data = bytearray()
        self.chunk = chunk
        self.write_calls = 0
        self.flushes = 0
        self.closed = False
        self.write_fails = write_fails
        self.flush_fails = flush_fails
        self.close_fails = close_fails
        self.full = full

    def write(self, data: memoryview) -> int | None:
        self.write_calls += 1
        if self.write_fails is not None:
            raise self.write_fails
        if self.full:
            return None
        taken = bytes(data[: self.chunk])
        self.data += taken
        return len(taken)

    def flush(self) -> None:
        self.flushes += 1
        if self.flush_fails is not None:
            raise self.flush_fails

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")

    def close(self) -> None:
        self.closed = True
        if self.close_fails is not None:
            raise self.close_fails


def sink_on(stream: RawStream, *, owned: bool = True, resumable: bool = True) -> Sink:
    return Sink(stream, "out.jsonl", owned=owned, resumable=resumable)  # type: ignore[arg-type]


class FsyncRecorder:
    def __init__(self, fails: OSError | None = None) -> None:
        self.fds: list[int] = []
        self.fails = fails

    def __call__(self, fd: int) -> None:
        self.fds.append(fd)
        if self.fails is not None:
            raise self.fails


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> FsyncRecorder:
    recorder = FsyncRecorder()
    monkeypatch.setattr(os, "fsync", recorder)
    return recorder


# -- writing ----------------------------------------------------------------------------


def test_write_hands_over_all_of_the_data_when_the_stream_takes_a_little_at_a_time() -> None:
    stream = RawStream(chunk=3)
    sink = sink_on(stream)

    assert sink.write(b'{"id":7}\n') == 9

    assert bytes(stream.data) == b'{"id":7}\n'
    assert stream.write_calls == 3


def test_a_failed_write_is_one_line_that_says_the_earlier_rows_are_saved() -> None:
    sink = sink_on(RawStream(write_fails=OSError(errno.ENOSPC, "No space left on device")))

    with pytest.raises(OutputWriteError) as refused:
        sink.write(b"row\n")

    assert str(refused.value) == (
        "out.jsonl: cannot write (No space left on device); the rows before it are saved: "
        "--resume continues"
    )
    assert not sink.broken


def test_a_failed_write_to_what_cannot_be_resumed_offers_no_resume() -> None:
    sink = sink_on(RawStream(write_fails=OSError(errno.EIO, "I/O error")), resumable=False)

    with pytest.raises(OutputWriteError) as refused:
        sink.write(b"row\n")

    assert str(refused.value) == "out.jsonl: cannot write (I/O error)"


def test_a_full_non_blocking_stream_is_a_write_error_not_a_silent_loss() -> None:
    sink = sink_on(RawStream(full=True))

    with pytest.raises(OutputWriteError) as refused:
        sink.write(b"row\n")

    assert str(refused.value) == (
        "out.jsonl: cannot write (it would block); the rows before it are saved: --resume continues"
    )


def test_a_broken_pipe_propagates_and_later_flush_and_close_stay_quiet() -> None:
    stream = RawStream(write_fails=BrokenPipeError(errno.EPIPE, "Broken pipe"))
    sink = sink_on(stream)

    with pytest.raises(BrokenPipeError):
        sink.write(b"row\n")
    assert sink.broken

    stream.flush_fails = BrokenPipeError(errno.EPIPE, "Broken pipe")
    sink.flush(durable=True)
    sink.close()

    assert stream.flushes == 0  # the reader is gone: nothing more is pushed at it
    assert stream.closed and sink.closed


def test_a_broken_pipe_found_by_flush_marks_the_sink_broken() -> None:
    sink = sink_on(RawStream(flush_fails=BrokenPipeError(errno.EPIPE, "Broken pipe")))

    with pytest.raises(BrokenPipeError):
        sink.flush()

    assert sink.broken


# -- flushing ---------------------------------------------------------------------------


def test_only_a_durable_flush_of_a_file_waits_for_the_disk(
    tmp_path: Path, fsyncs: FsyncRecorder
) -> None:
    sink = Sink.for_file(str(tmp_path / "out.jsonl"), overwrite=False, resume=False)
    sink.write(b"row\n")

    sink.flush()
    assert fsyncs.fds == []
    sink.flush(durable=True)
    assert len(fsyncs.fds) == 1
    sink.close()

    assert (tmp_path / "out.jsonl").read_bytes() == b"row\n"


def test_a_durable_flush_to_a_pipe_does_not_fsync(fsyncs: FsyncRecorder) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb", buffering=0) as pipe:
        sink = Sink.for_stdout(pipe)
        sink.write(b"row\n")
        sink.flush(durable=True)
        sink.close()
        pipe.close()

        assert reader.read() == b"row\n"
    assert fsyncs.fds == []


def test_a_durable_flush_of_a_stream_without_a_descriptor_only_flushes(
    fsyncs: FsyncRecorder,
) -> None:
    stream = RawStream()

    sink_on(stream).flush(durable=True)

    assert (stream.flushes, fsyncs.fds) == (1, [])


def test_a_disk_that_refuses_the_fsync_is_a_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", FsyncRecorder(fails=OSError(errno.EIO, "I/O error")))
    sink = Sink.for_file(str(tmp_path / "out.jsonl"), overwrite=False, resume=False)

    with pytest.raises(OutputWriteError) as refused:
        sink.flush(durable=True)
    sink.close()

    assert str(refused.value) == (
        f"{tmp_path / 'out.jsonl'}: cannot write (I/O error); the rows before it are saved: "
        "--resume continues"
    )


def test_flush_after_close_does_nothing() -> None:
    stream = RawStream()
    sink = sink_on(stream)
    sink.close()

    sink.flush(durable=True)

    assert stream.flushes == 1  # the one close made


# -- closing ----------------------------------------------------------------------------


def test_close_flushes_and_closes_only_a_stream_it_owns() -> None:
    owned, lent = RawStream(), RawStream()

    sink_on(owned, owned=True).close()
    sink_on(lent, owned=False).close()

    assert (owned.flushes, owned.closed) == (1, True)
    assert (lent.flushes, lent.closed) == (1, False)  # stdout belongs to the process


def test_closing_twice_closes_once() -> None:
    stream = RawStream()
    sink = sink_on(stream)

    sink.close()
    sink.close()

    assert stream.flushes == 1


def test_a_stream_that_fails_on_close_is_a_write_error() -> None:
    # A remote stream uploads on close: its failure must not pass for success.
    sink = sink_on(RawStream(close_fails=OSError(errno.EIO, "upload failed")), resumable=False)

    with pytest.raises(OutputWriteError) as refused:
        sink.close()

    assert str(refused.value) == "out.jsonl: cannot write (upload failed)"


def test_a_failed_last_flush_still_closes_the_stream() -> None:
    stream = RawStream(flush_fails=OSError(errno.ENOSPC, "No space left on device"))

    with pytest.raises(OutputWriteError):
        sink_on(stream).close()

    assert stream.closed


# -- opening ----------------------------------------------------------------------------


def test_a_given_stdout_is_named_stdout_and_cannot_be_resumed() -> None:
    given = io.BytesIO()
    sink = Sink.for_stdout(given)
    sink.write(b"row\n")
    sink.close()

    assert (sink.name, sink.resumable) == ("stdout", False)
    assert given.getvalue() == b"row\n"
    assert not given.closed


def test_a_file_is_resumable_and_named_by_its_path(tmp_path: Path) -> None:
    path = str(tmp_path / "out.jsonl")

    sink = Sink.for_file(path, overwrite=False, resume=False)
    sink.close()

    assert (sink.name, sink.resumable) == (path, True)


def test_an_existing_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"precious\n")

    with pytest.raises(OutputError) as refused:
        Sink.for_file(str(path), overwrite=False, resume=False)

    assert str(refused.value) == (
        f"{path}: already exists; pass --resume to continue it or --overwrite to replace it"
    )
    assert path.read_bytes() == b"precious\n"


def test_overwrite_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"old row\nold row\n")

    sink = Sink.for_file(str(path), overwrite=True, resume=False)
    sink.write(b"new\n")
    sink.close()

    assert path.read_bytes() == b"new\n"


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        pytest.param(b"", b"", id="empty"),
        pytest.param(b'{"id":0}\n{"id":1}\n', b'{"id":0}\n{"id":1}\n', id="whole lines"),
        pytest.param(b'{"id":0}\n{"id":1,"outp', b'{"id":0}\n', id="torn last line"),
        pytest.param(b'{"id":0,"out', b"", id="all torn"),
        # The newline lies more than one 64 KiB block back from the end.
        pytest.param(b'{"id":0}\n' + b"x" * 200_000, b'{"id":0}\n', id="torn across blocks"),
        pytest.param(b"x" * 200_000, b"", id="all torn across blocks"),
    ],
)
def test_resume_cuts_a_torn_last_line_so_new_rows_start_a_line(
    tmp_path: Path, fsyncs: FsyncRecorder, before: bytes, kept: bytes
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(before)

    sink = Sink.for_file(str(path), overwrite=False, resume=True)
    assert path.read_bytes() == kept  # cut before any new row is written
    sink.write(b'{"id":2}\n')
    sink.close()

    assert path.read_bytes() == kept + b'{"id":2}\n'
    assert len(fsyncs.fds) == (1 if kept != before else 0)  # the cut reaches the disk


def test_resume_of_a_missing_file_starts_it(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    sink = Sink.for_file(str(path), overwrite=False, resume=True)
    sink.write(b"row\n")
    sink.close()

    assert path.read_bytes() == b"row\n"


def test_a_file_in_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "out.jsonl"

    with pytest.raises(OutputError) as refused:
        Sink.for_file(str(path), overwrite=False, resume=False)

    assert (
        str(refused.value) == f"{path}: directory {tmp_path / 'nowhere'} does not exist; create it"
    )


def test_a_directory_is_refused_as_an_output(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as refused:
        Sink.for_file(str(tmp_path), overwrite=True, resume=False)

    assert str(refused.value) == f"{tmp_path}: is a directory; name a file"


# -- messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "exc", "message"),
    [
        (
            "out.jsonl",
            FileNotFoundError(errno.ENOENT, "No such file"),
            "out.jsonl: directory . does not exist; create it",
        ),
        (
            "runs/out.jsonl",
            FileNotFoundError(errno.ENOENT, "No such file"),
            "runs/out.jsonl: directory runs does not exist; create it",
        ),
        (
            "out",
            IsADirectoryError(errno.EISDIR, "Is a directory"),
            "out: is a directory; name a file",
        ),
        (
            "/ro/out.jsonl",
            PermissionError(errno.EACCES, "Permission denied"),
            "/ro/out.jsonl: permission denied; write somewhere else",
        ),
        (
            "out.jsonl",
            OSError(errno.EROFS, "Read-only file system"),
            "out.jsonl: cannot open for writing (Read-only file system)",
        ),
        ("out.jsonl", OSError("odd"), "out.jsonl: cannot open for writing (odd)"),
    ],
)
def test_an_output_that_cannot_be_opened_says_what_to_do(
    path: str, exc: OSError, message: str
) -> None:
    error = open_error(path, exc)

    assert isinstance(error, OutputError)
    assert str(error) == message


def test_a_write_error_without_an_errno_text_says_what_it_was() -> None:
    assert str(write_failed("stdout", OSError("disk gone"), resumable=False)) == (
        "stdout: cannot write (disk gone)"
    )


def test_the_exists_message_names_both_ways_on() -> None:
    assert exists_message("runs/out.parquet") == (
        "runs/out.parquet: already exists; pass --resume to continue it or --overwrite to "
        "replace it"
    )
