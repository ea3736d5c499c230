"""gzip and zstd, both ways: members/frames written one per durable flush, read back.

A compressed output is a run of gzip members (or zstd frames), one closed at each
durable flush, so a crash leaves whole members plus at most one torn one; both
formats allow members one after another, and `gzip -dc`/`zstd -dc` read them as
one text. Reading goes through `decompressed_pieces`, which says where in the file
each member ends: what `--resume` cuts a compressed output back to, since nothing
can be cut in the middle of a compressed stream.

>>> import io
>>> out = io.BytesIO()
>>> sink = CompressedSink(Sink(out, "out.jsonl.zst", owned=False), "zstd")
>>> _ = sink.write(b'{"id":0}\\n')
>>> sink.flush(durable=True)  # the first frame ends here
>>> _ = sink.write(b'{"id":1}\\n')
>>> sink.close()
>>> written = io.BytesIO(out.getvalue())
>>> [(piece, end is not None) for piece, end in decompressed_pieces(written.read, "zstd")]
[(b'{"id":0}\\n', True), (b'{"id":1}\\n', True)]
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import zstandard

from batching.location import Codec
from batching.sink import Sink

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAGIC",
    "CompressedSink",
    "CorruptStream",
    "DecompressedReader",
    "check_tool",
    "codec_of",
    "decompressed_pieces",
]

# What a file starts with, per codec: the content decides how a file is read.
MAGIC: dict[Codec, bytes] = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
# The command-line tools' own defaults (gzip -6, zstd -3): JSON text compresses
# 6-10x at either, far faster than an engine makes the rows.
_GZIP_LEVEL = 6
_ZSTD_LEVEL = 3
# Compressed bytes handed to a decompressor at a time. zlib takes a cap on what
# one step gives back (_GZIP_STEP_OUT); zstandard's decompressobj does not, so zstd
# gets small steps: JSON text at 10-60x gives at most a few hundred KiB per step.
_BLOCK: dict[Codec, int] = {"gzip": 64 * 1024, "zstd": 8 * 1024}
_GZIP_STEP_OUT = 1024 * 1024
_GZIP_WBITS = 31  # zlib's way of saying "a gzip header and trailer"


class CorruptStream(ValueError):
    """The compressed bytes do not decode: damaged, or cut short mid-member."""


def codec_of(head: bytes) -> Codec | None:
    """The codec whose magic `head` (a file's first bytes) starts with; None for none.

    >>> codec_of(b"\\x1f\\x8b\\x08"), codec_of(b'{"prompt"')
    ('gzip', None)
    """
    for codec, magic in MAGIC.items():
        if head.startswith(magic):
            return codec
    return None


def check_tool(codec: Codec, name: str) -> str:
    """The command that tests a damaged file of `codec`, for messages.

    >>> check_tool("zstd", "in.jsonl.zst")
    '`zstd -t in.jsonl.zst`'
    """
    return f"`{'gzip' if codec == 'gzip' else 'zstd'} -t {name}`"


class _Member(Protocol):
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...

    def flush(self, mode: int, /) -> bytes: ...


class CompressedSink:
    """Bytes out through a compressor: one gzip member (zstd frame) per durable flush.

    A member ends only at a durable flush or at close, after whole lines (the JSONL
    writer writes whole batches), so every whole member in the file ends a row and
    `--resume` can cut the file back to its last one. What the compressor emits
    mid-member goes out at once: memory stays at the compressor's window.
    """

    def __init__(self, sink: Sink, codec: Codec, *, resumed_bytes: int = 0) -> None:
        """`resumed_bytes`: what the file holds already (a resumed output's whole members)."""
        self._sink = sink
        self.codec = codec
        self.name = sink.name
        self.resumable = sink.resumable
        self._member: _Member | None = None
        self._empty = resumed_bytes == 0  # holds no member yet
        self._finish = zlib.Z_FINISH if codec == "gzip" else zstandard.COMPRESSOBJ_FLUSH_FINISH

    @property
    def broken(self) -> bool:
        return self._sink.broken

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._member is None:
            self._member = _new_member(self.codec)
            self._empty = False
        emitted = self._member.compress(data)
        if emitted:
            self._sink.write(emitted)
        return len(data)

    def flush(self, *, durable: bool = False) -> None:
        # Only a durable flush ends a member: each ending costs ~20 bytes and the
        # compressor's history, and rows not yet durable may be lost anyway.
        if durable:
            self._end_member()
        self._sink.flush(durable=durable)

    def seal(self) -> None:
        """End a run that went well: a file with no row gets one empty member, since
        `gzip -dc` and `zstd -dc` refuse a file of no bytes as cut short."""
        if self._empty and not self._sink.closed and not self._sink.broken:
            self.write(b"")

    def close(self) -> None:
        if self._sink.closed:
            return
        try:
            if not self._sink.broken:
                self._end_member()
        except BaseException:
            self._sink.close()
            raise
        self._sink.close()

    def _end_member(self) -> None:
        member, self._member = self._member, None
        if member is not None:
            self._sink.write(member.flush(self._finish))


def _new_member(codec: Codec) -> _Member:
    if codec == "gzip":
        return zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    member: _Member = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
    return member


def decompressed_pieces(
    read: Callable[[int], bytes], codec: Codec
) -> Iterator[tuple[bytes, int | None]]:
    """The decompressed text of `read`'s bytes, in pieces, each with where its member
    ended in the compressed bytes (None while the member goes on).

    A member cut short by the end of the bytes, or bytes that do not decode, raise
    `CorruptStream` after the pieces before them; nothing is passed over silently
    (zstandard's own stream reader ends quietly at a truncated frame).

    >>> import gzip
    >>> data = gzip.compress(b"a\\n", mtime=0) + gzip.compress(b"b\\n", mtime=0)
    >>> list(decompressed_pieces(io.BytesIO(data).read, "gzip"))
    [(b'a\\n', 22), (b'b\\n', 44)]
    >>> list(decompressed_pieces(io.BytesIO(data[:30]).read, "gzip"))
    Traceback (most recent call last):
    batching.compression.CorruptStream: compressed data ends in the middle of a member (at byte 30)
    """
    block = _BLOCK[codec]
    consumed = 0  # compressed bytes read so far
    pending = b""  # read but not yet given to a decompressor
    decompressor: _GzipMember | _ZstdMember | None = None
    at_end = False
    while True:
        if not pending:
            pending = read(block)
            consumed += len(pending)
            at_end = not pending
        if not pending and decompressor is None:
            return
        if decompressor is None:
            decompressor = _GzipMember() if codec == "gzip" else _ZstdMember()
        try:
            # At the end of the bytes (b""): what the decompressor still holds, if any.
            piece, pending, ended = decompressor.step(pending)
        except (zlib.error, zstandard.ZstdError) as exc:
            raise CorruptStream(f"{exc} (in the member before byte {consumed})") from None
        if ended:
            decompressor = None
            yield piece, consumed - len(pending)
        elif piece:
            yield piece, None
        elif at_end:
            raise CorruptStream(
                f"compressed data ends in the middle of a member (at byte {consumed})"
            )


class _GzipMember:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(_GZIP_WBITS)

    def step(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """(text out, bytes left over, whether the member ended)."""
        piece = self._zlib.decompress(data, _GZIP_STEP_OUT)
        if self._zlib.eof:
            return piece, self._zlib.unused_data, True
        return piece, self._zlib.unconsumed_tail, False


class _ZstdMember:
    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor().decompressobj()

    def step(self, data: bytes) -> tuple[bytes, bytes, bool]:
        piece = self._zstd.decompress(data)
        if self._zstd.eof:
            return piece, self._zstd.unused_data, True
        return piece, b"", False


class DecompressedReader(io.RawIOBase):
    """`decompressed_pieces` as a raw stream, for a `BufferedReader` to read lines from.

    >>> import gzip
    >>> packed = io.BytesIO(gzip.compress(b"a\\nb\\n"))
    >>> reader = io.BufferedReader(DecompressedReader(packed.read, "gzip"))
    >>> reader.readline(), reader.readline(), reader.readline()
    (b'a\\n', b'b\\n', b'')
    """

    def __init__(self, read: Callable[[int], bytes], codec: Codec) -> None:
        self._pieces = decompressed_pieces(read, codec)
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._piece:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._piece = memoryview(piece[0])
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._piece))
        target[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n
