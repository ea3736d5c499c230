"""What a path names, worked out once: stdin/stdout, a local file, or a remote URI.

A config turns each path it is given into a `Location` when it is built, and every
reader, writer and check after that asks the value, never the string: whether
"-" means stdio, whether `file://` is the local file, and which format the name's
extension says are decided here and nowhere else.

>>> Location.of("s3://bucket/in.jsonl.gz?region=eu").format
'jsonl'
>>> Location.of("file:///data/out.parquet").path
'/data/out.parquet'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from batching.uri import is_remote, local_path, suffix_name

__all__ = [
    "CODEC_SUFFIX",
    "STDIO",
    "Codec",
    "InputFormat",
    "Location",
    "LocationKind",
    "NamedFormat",
    "OutputFormat",
]

STDIO = "-"

LocationKind = Literal["stdio", "local", "remote"]
# The formats a file's extension can name; OpenAI batch lines are only ever asked for.
NamedFormat = Literal["jsonl", "parquet"]
# "openai": JSON Lines of OpenAI Batch API requests/responses (batching.openai_batch).
InputFormat = Literal["jsonl", "parquet", "openai"]
OutputFormat = Literal["jsonl", "parquet", "openai"]
# How a file's bytes are compressed, as its last extension says (batching.compression).
Codec = Literal["gzip", "zstd"]

_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# The extension each codec's files are named with (and zstd's longer spelling).
CODEC_SUFFIX: dict[Codec, str] = {"gzip": ".gz", "zstd": ".zst"}
_CODEC_SUFFIXES: dict[str, Codec] = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


@dataclass(frozen=True, slots=True)
class Location:
    """A path resolved: its kind, where to open it, how to name it, its format.

    `path` is what to open: the local path (a `file://` URI decoded), the remote
    URI, or "-". `name` is the path as given, for messages about an input.
    `format` is what the extension says, a `.gz` or `.zst` after it aside (that is
    `compressed`: "gzip" or "zstd", else None), and a remote URI's query
    (`?region=...`) left out; None where it says nothing.
    `extension` is the extension it went by, for messages ("(none)" if none).

    >>> Location.of("-").kind, Location.of(None).kind
    ('stdio', 'stdio')
    """

    kind: LocationKind
    path: str
    name: str
    format: NamedFormat | None = None
    compressed: Codec | None = None
    extension: str = "(none)"

    @classmethod
    def of(cls, given: str | Location | None) -> Location:
        """The location `given` names; None and "-" are stdio.

        Raises `UsageError` for a `file://` URI that names another machine.

        >>> Location.of("in.JSONL").format, Location.of("out.csv").extension
        ('jsonl', '.csv')
        >>> Location.of("in.jsonl.zst").compressed, Location.of("in.jsonl.gz").compressed
        ('zstd', 'gzip')
        """
        if isinstance(given, Location):
            return given
        if given is None or given == STDIO:
            return _STDIO
        kind: LocationKind = "remote" if is_remote(given) else "local"
        path = given if kind == "remote" else local_path(given)
        name = suffix_name(given).lower()
        stem, last = os.path.splitext(name)
        compressed = _CODEC_SUFFIXES.get(last)
        if compressed is not None:
            name = stem
        return cls(
            kind=kind,
            path=path,
            name=given,
            format=_named_format(name),
            compressed=compressed,
            extension=os.path.splitext(name)[1] or "(none)",
        )

    @property
    def is_stdio(self) -> bool:
        return self.kind == "stdio"

    @property
    def is_local(self) -> bool:
        """A file on this machine (not stdio): one with a lock, fsync and `--resume`."""
        return self.kind == "local"

    @property
    def is_remote(self) -> bool:
        return self.kind == "remote"


def _named_format(name: str) -> NamedFormat | None:
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    return None


_STDIO = Location(kind="stdio", path=STDIO, name=STDIO, format="jsonl")
