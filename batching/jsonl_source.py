"""The JSON Lines source: plain, gzip or zstd files, pipes and stdin, a line at a time."""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import orjson

from batching.compression import CorruptStream, DecompressedReader, check_tool, codec_of
from batching.config import OPENAI_LINES_FRAMED, InputConfig
from batching.errors import InputError
from batching.field_spelling import FieldSpelling
from batching.id_registry import IdRegistry
from batching.location import CODEC_SUFFIX, Codec
from batching.openai_batch import CustomIdRegistry, is_openai_line, parse_openai_row
from batching.records import Row
from batching.row_source import ReadDigest, RowSource, open_binary, size_if_regular
from batching.schema import invalid_row, missing_kept, parse_row
from batching.uri import RemoteInput

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["JsonlSource", "LiveLines", "open_jsonl_file"]

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Large reads keep syscalls rare; 1 MiB is past the point where bigger buffers help.
_READ_BUFFER_BYTES = 1024 * 1024


class _LineStream(Protocol):
    """What the JSONL reader needs of a stream: a file, a decompressed file, stdin or BytesIO."""

    def readline(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class LiveLines:
    """Lines of a pipe read straight from its descriptor, that can tell whether the
    next line is already here: for input that arrives at its own pace (`tail -f`).

    Reads with `os.read`, not through `sys.stdin.buffer`: a thread blocked in a
    BufferedReader holds its lock, and the interpreter aborts at exit
    ("_enter_buffered_busy") when it finds stdin's buffer locked by such a thread.
    A thread blocked in `os.read` holds no Python lock, so a reader thread may stay
    blocked on a quiet pipe while the run ends.

    >>> read_end, write_end = os.pipe()  # a pipe, as stdin is under `tail -f ... |`
    >>> os.write(write_end, b'{"prompt": "Hi"}\\n')
    17
    >>> lines = LiveLines(read_end)
    >>> lines.readline(), lines.ready()
    (b'{"prompt": "Hi"}\\n', False)
    >>> os.close(write_end)
    >>> lines.readline()
    b''
    >>> os.close(read_end)
    """

    def __init__(
        self, fd: int, *, head: bytes = b"", on_close: Callable[[], None] | None = None
    ) -> None:
        """`head`: bytes read from `fd` already; `on_close`: closes `fd` if ours."""
        self._fd = fd
        self._lines: deque[bytes] = deque()  # complete lines, each ending in a newline
        self._tail = b""  # the start of the line after them
        self._eof = False
        self._on_close = on_close
        # Hashes what is read from `fd` from now on (`head` was hashed by its reader).
        self.digest: ReadDigest | None = None
        if head:
            self._split(head)

    def ready(self) -> bool:
        """Whether `readline` would return at once (a whole line is here, or the end)."""
        return bool(self._lines) or self._eof

    def readline(self, size: int = -1, /) -> bytes:
        """The next line, at most `size` bytes of it; b"" at the end of input."""
        while True:
            if self._lines:
                line = self._lines.popleft()
                if 0 < size < len(line):
                    self._lines.appendleft(line[size:])
                    return line[:size]
                return line
            if self._eof or 0 < size <= len(self._tail):
                # An over-long line is handed out in pieces, so memory stays bounded.
                cut = len(self._tail) if size < 0 else size
                piece, self._tail = self._tail[:cut], self._tail[cut:]
                return piece
            self._fill()

    def _fill(self) -> None:
        # Closed under a reader thread (the run ended with the pipe still open): the
        # descriptor's number may belong to another file by now.
        block = b"" if self._eof else os.read(self._fd, _READ_BUFFER_BYTES)
        if not block:
            self._eof = True
            return
        if self.digest is not None:
            self.digest.update(block)
        self._split(block)

    def _split(self, block: bytes) -> None:
        # One C-level split per block, not a Python step per byte.
        *whole, self._tail = (self._tail + block).split(b"\n")
        self._lines.extend([line + b"\n" for line in whole])

    def close(self) -> None:
        """Close the descriptor if it is ours (a named pipe); stdin stays open."""
        if self._on_close is not None:
            self._eof = True
            on_close, self._on_close = self._on_close, None
            on_close()


class _CountingReader(io.RawIOBase):
    """A file seen through a byte counter and a hash: how far into the file on disk
    we are, and the digest of the bytes so far."""

    def __init__(self, raw: io.RawIOBase, digest: ReadDigest) -> None:
        self._raw = raw
        self._digest = digest
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        n = self._raw.readinto(buffer)
        if n:
            self.count += n
            # SHA-256 ran at 515-1,012 MB/s here against ~11 MB/s of JSONL parsed
            # (benchmarks/compression_speed.py): about 2% of reading a file.
            self._digest.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _HashedLines:
    """A given stream (stdin, or a test's BytesIO) whose lines are hashed as read."""

    def __init__(self, stream: _LineStream, digest: ReadDigest) -> None:
        self._stream = stream
        self._digest = digest

    def readline(self, size: int = -1, /) -> bytes:
        line = self._stream.readline(size)
        self._digest.update(line)
        return line

    def close(self) -> None:
        self._stream.close()


def open_jsonl_file(cfg: InputConfig, max_line_bytes: int) -> JsonlSource:
    name = cfg.location.name
    raw = open_binary(cfg.location)
    digest = ReadDigest()
    try:
        total_bytes = size_if_regular(raw)
        counter = _CountingReader(raw, digest)
        buffered = io.BufferedReader(counter, _READ_BUFFER_BYTES)
        # The content decides, not the name: a compressed file is read as such
        # whatever it is called, and peek() works on pipes such as <(zcat ...) too.
        stream: _LineStream
        codec = codec_of(buffered.peek(4)[:4])
        named = cfg.location.compressed
        if codec is not None:
            text = DecompressedReader(buffered.read1, codec)
            stream = io.BufferedReader(text, _READ_BUFFER_BYTES)
        elif named is not None:
            raise InputError(
                f"{name}: named {CODEC_SUFFIX[named]} but not {named}-compressed; rename "
                f"it to {cfg.location.extension}"
            )
        elif total_bytes is None and not isinstance(raw, RemoteInput):
            # A named pipe or device (`run <(tail -f q.jsonl)`, `mkfifo`): read live,
            # as stdin is, not a chunk at a time (a quiet pipe would hold its rows).
            # read1 hands over what peek buffered without reading the pipe again;
            # `buffered` closes the pipe (held here: collected, it would close it).
            head = buffered.read1(_READ_BUFFER_BYTES)
            live = LiveLines(raw.fileno(), head=head, on_close=buffered.close)
            return JsonlSource(cfg, name, live, None, None, max_line_bytes, digest=digest)
        else:
            stream = buffered
    except OSError as exc:
        raw.close()
        raise InputError(f"{name}: cannot read ({exc})") from None
    except BaseException:
        raw.close()
        raise
    return JsonlSource(
        cfg, name, stream, counter, total_bytes, max_line_bytes, digest=digest, codec=codec
    )


class JsonlSource(RowSource):
    def __init__(
        self,
        cfg: InputConfig,
        name: str,
        stream: _LineStream,
        counter: _CountingReader | None,
        total_bytes: int | None,
        max_line_bytes: int,
        *,
        digest: ReadDigest | None = None,
        codec: Codec | None = None,
    ) -> None:
        """`digest`: the hash `counter` updates (stdin's lines are hashed here);
        `codec`: how the file's content says it is compressed, for messages."""
        super().__init__(name, total_rows=None, total_bytes=total_bytes, digest=digest)
        self._cfg = cfg
        if counter is None and isinstance(stream, LiveLines):
            stream.digest = self.digest
        elif counter is None:
            stream = _HashedLines(stream, self.digest)
        self._stream = stream
        self.codec = codec
        # None for stdin: then bytes_read counts the bytes of the lines read.
        self._counter = counter
        self._max_line_bytes = max_line_bytes
        self._ids = IdRegistry(cfg.id_field, "line")
        self._line = 0  # of the last line read, for read errors
        # Rows are handed over as they arrive, so chunks may be short (see LiveLines).
        self.live = isinstance(stream, LiveLines)

    def close(self) -> None:
        if self._counter is not None:
            self._stream.close()
            self._counter.close()
        elif isinstance(self._stream, LiveLines):
            self._stream.close()  # closes a named pipe, not stdin

    def _chunks(self) -> Iterator[list[Row]]:
        try:
            yield from self._read_chunks()
        except (OSError, CorruptStream) as exc:
            after = f" after line {self._line}" if self._line else ""
            hint = ""
            if self.codec is not None:
                hint = f"; test it with {check_tool(self.codec, self.name)}"
            raise InputError(f"{self.name}: cannot read{after} ({exc}){hint}") from None
        self.digest.complete = True

    def _read_chunks(self) -> Iterator[list[Row]]:
        # The hot loop, a few µs a row: what it touches per row is a local.
        readline = self._stream.readline
        limit = self._max_line_bytes + 1
        loads = orjson.loads
        json_error = orjson.JSONDecodeError
        fields = self._cfg
        chunk_size = fields.chunk_size
        check_id = self._ids.check
        spelling = FieldSpelling(fields)
        cleared = spelling.cleared
        name = self.name
        # Live input (a pipe read as it arrives): hand over what is here whenever the
        # next line is not, instead of holding rows until a chunk fills.
        ready = self._stream.ready if isinstance(self._stream, LiveLines) else None
        consumed = 0
        line = 0
        index = 0
        chunk: list[Row] = []
        # OpenAI batch lines: forced, or decided by the first row that decodes. Lines
        # no schema reads (blank, undecodable) go to both id registries: which one
        # counts may not be decided yet.
        custom_ids = CustomIdRegistry(name)
        openai = fields.format == "openai"
        decided = openai
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
                    "shorten the row or raise --max-line-bytes"
                )
                row = invalid_row(index, line, message, kept=missing_kept(fields))
                self._ids.no_id(index)
                custom_ids.no_id(index)
            else:
                try:
                    obj = loads(raw)
                except json_error as exc:
                    if not raw.strip():
                        # So that a message about a repeated id names the right line.
                        self._ids.skipped_line(index)
                        custom_ids.skipped_line(index)
                        if ready is not None and chunk and not ready():
                            self._line = line
                            self._progress(index, consumed)
                            yield chunk
                            chunk = []
                        continue
                    message = _undecodable(raw, exc, where)
                    row = invalid_row(index, line, message, kept=missing_kept(fields))
                    self._ids.no_id(index)
                    custom_ids.no_id(index)
                else:
                    if not decided:
                        decided = True
                        openai = _openai_lines(obj, fields, where)
                    if openai:
                        row = parse_openai_row(
                            obj, index=index, line=line, fields=fields, where=where
                        )
                        custom_ids.check(row)
                    else:
                        row = parse_row(obj, index=index, line=line, fields=fields, where=where)
                        row = check_id(obj, row, where)
                        # spelling.check's first test, inlined: most rows stop here.
                        if type(obj) is dict and not cleared.issuperset(obj):
                            spelling.check(obj, where)
            chunk.append(row)
            index += 1
            if len(chunk) >= chunk_size or (ready is not None and not ready()):
                self._line = line
                self._progress(index, consumed)
                yield chunk
                chunk = []
        self._line = line
        self._progress(index, consumed)
        if openai:
            custom_ids.finish()
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
        codec = codec_of(raw)
        if codec is not None:
            # Only stdin gets here: a file's content was looked at when it was opened.
            tool = "gunzip -c" if codec == "gzip" else "zstd -dc"
            raise InputError(
                f"{self.name}: the input is {codec}-compressed; pipe it through `{tool}` "
                f"or pass the .jsonl{CODEC_SUFFIX[codec]} file's path"
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


def _openai_lines(obj: object, fields: InputConfig, where: str) -> bool:
    """Whether the first row is an OpenAI batch line (and not a plain row); with a
    template, rows are plain rows whatever fields they hold."""
    if fields.template is not None or not is_openai_line(obj):
        return False
    assert isinstance(obj, dict)
    if fields.prompt_field in obj or fields.messages_field in obj:
        return False
    if fields.framing is not None:
        raise InputError(f"{where}: {OPENAI_LINES_FRAMED}")
    return True


def _undecodable(raw: bytes, exc: orjson.JSONDecodeError, where: str) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{where}: not valid UTF-8 at byte {bad.start + 1}; save the file as UTF-8"
    # The line is parsed with its newline, so a line cut short ends "at line 2,
    # column 1"; the column the user can find is just past the line's own end.
    column = exc.colno if exc.lineno <= 1 else len(raw.rstrip(b"\r\n").decode()) + 1
    return (
        f"{where}: not valid JSON ({exc.msg} at column {column}); each line must hold "
        "one JSON object"
    )


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{n} bytes"
