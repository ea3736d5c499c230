"""Input and output paths as filesystem URIs: `file://`, `s3://`, `gs://`, `hdfs://`, ...

A path is one of three kinds:

- a plain path, or "-" for stdin/stdout: the local file, as always;
- a `file://` URI: the same local file, with every local feature (the output
  lock, fsync, `--resume`, Parquet's crash-safe parts directory);
- any other scheme: a remote file, opened through `pyarrow.fs` (S3, GCS, HDFS, ...)
  or, for schemes pyarrow lacks (`memory://`, `az://`, `http://`...), through fsspec
  wrapped as a pyarrow filesystem. Read as a stream, written as a stream.

Object stores cannot append, rename or lock, so a remote output has no lock (two
runs on one output are not kept apart), is not fsynced part by part, and cannot be
continued with `--resume`: `check_remote_output` says so before anything runs.

>>> is_remote("s3://bucket/prompts.jsonl"), is_remote("file:///data/in.jsonl")
(True, False)
>>> local_path("file:///data/in.jsonl")
'/data/in.jsonl'
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from batching.errors import InputError, OutputError, UsageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "RemoteFile",
    "RemoteInput",
    "check_remote_output",
    "is_remote",
    "is_uri",
    "local_path",
    "open_remote_input",
    "open_remote_output",
    "open_remote_parquet",
    "resolve",
    "suffix_name",
]

# RFC 3986 scheme, then "://": "C:\data" or "a:b.jsonl" stay plain paths.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | None) -> bool:
    """Whether `path` is written as a URI (`scheme://...`), local or not."""
    return path is not None and _URI.match(path) is not None


def is_remote(path: str | None) -> bool:
    """Whether `path` is a URI of a filesystem other than the local one."""
    return is_uri(path) and not _is_file_uri(path or "")


def local_path(path: str) -> str:
    """The local path a `file://` URI names; any other path unchanged.

    >>> local_path("file:///tmp/a%20b.jsonl"), local_path("out.jsonl")
    ('/tmp/a b.jsonl', 'out.jsonl')
    """
    if not _is_file_uri(path):
        return path
    parts = urlsplit(path)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"{path}: a file:// URI names a file on this machine; write file:///path "
            "(three slashes) or the plain path"
        )
    return unquote(parts.path)


def suffix_name(path: str) -> str:
    """`path` without a URI's query (`?region=...`), for telling the format by extension.

    >>> suffix_name("s3://bucket/in.jsonl.gz?region=eu-west-1")
    's3://bucket/in.jsonl.gz'
    """
    return path.split("?", 1)[0] if is_uri(path) else path


def _is_file_uri(path: str) -> bool:
    return path[:7].lower() == "file://"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A remote path resolved: the filesystem that holds it, and its path there."""

    uri: str
    fs: Any  # pyarrow.fs.FileSystem
    path: str

    def info(self) -> Any:
        """`pyarrow.fs.FileInfo` of the path; raises OSError if the store cannot say."""
        return self.fs.get_file_info(self.path)


def resolve(uri: str, error: type[UsageError] = UsageError) -> RemoteFile:
    """The filesystem and path `uri` names: pyarrow's, else fsspec's; `error` if neither.

    >>> resolve("memory://bucket/in.jsonl").path
    '/bucket/in.jsonl'
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            raise error(
                f"{uri}: not a filesystem URI pyarrow can open ({_first_line(exc)})"
            ) from None
    except OSError as exc:
        # e.g. S3 that cannot reach the bucket's region, HDFS without a JVM
        raise error(f"{uri}: cannot reach its filesystem ({_first_line(exc)})") from None
    else:
        return RemoteFile(uri, fs, path)
    # A scheme pyarrow has no filesystem for: fsspec may (memory://, az://, http://),
    # with the scheme's own package installed (adlfs, ...).
    try:
        import fsspec.core
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        spec_fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise error(
            f"{uri}: this scheme needs a package that is not installed ({_first_line(exc)})"
        ) from None
    except (ValueError, OSError) as exc:
        raise error(f"{uri}: unknown filesystem scheme ({_first_line(exc)})") from None
    return RemoteFile(uri, PyFileSystem(FSSpecHandler(spec_fs)), path)


def _first_line(exc: BaseException) -> str:
    # pyarrow's HDFS errors run to a hundred lines of dlopen attempts.
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---- input ---------------------------------------------------------------------------


class RemoteInput(io.RawIOBase):
    """A remote file read front to back, as the JSONL reader reads a local one.

    `size` is the file's size on the store (compressed, for .gz), so progress and the
    row estimate work as for a local file.
    """

    def __init__(self, stream: Any, size: int | None) -> None:
        self._stream = stream
        self.size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        n: int = self._stream.readinto(buffer)
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def _existing_input(uri: str) -> tuple[RemoteFile, Any]:
    """The remote file `uri` and its `FileInfo` (one look-up: a round trip to the store)."""
    import pyarrow.fs as pafs

    remote = resolve(uri, InputError)
    try:
        info = remote.info()
    except OSError as exc:
        raise InputError(f"{uri}: cannot open ({_first_line(exc)})") from None
    except Exception as exc:
        # fsspec filesystems raise what their HTTP client raises (hf:// without a
        # network: httpx's ConnectError, not an OSError): one line, not a traceback.
        raise InputError(f"{uri}: cannot open ({type(exc).__name__}: {_first_line(exc)})") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{uri}: no such file; check the URI")
    if info.type == pafs.FileType.Directory:
        # Named like a file (Spark writes `table.parquet/` folders): the slash lists it.
        raise InputError(f"{uri}: is a directory; end it with / to read the files in it")
    return remote, info


def open_remote_input(uri: str) -> RemoteInput:
    """The remote file `uri` as a stream; `InputError` with a next step if it cannot be.

    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/bucket/in.jsonl", b'{"prompt": "Hi"}\\n')
    >>> open_remote_input("memory://bucket/in.jsonl").read()
    b'{"prompt": "Hi"}\\n'
    >>> fsspec.filesystem("memory").rm("/bucket", recursive=True)
    """
    remote, info = _existing_input(uri)
    try:
        # compression=None: the reader tells gzip or zstd by its content, and counts
        # the compressed bytes against the size, as for a local .jsonl.gz.
        stream = remote.fs.open_input_stream(remote.path, compression=None)
    except OSError as exc:
        raise InputError(f"{uri}: cannot open ({_first_line(exc)})") from None
    return RemoteInput(stream, info.size)


def open_remote_parquet(uri: str) -> tuple[Any, int | None]:
    """The remote Parquet file `uri` opened for random access, and its size.

    Parquet is read footer first, so it needs a seekable file, not a stream.
    """
    remote, _ = _existing_input(uri)
    try:
        file = remote.fs.open_input_file(remote.path)
    except OSError as exc:
        raise InputError(f"{uri}: cannot open ({_first_line(exc)})") from None
    size: int | None = file.size()
    return file, size


# ---- output --------------------------------------------------------------------------


def check_remote_output(uri: str, *, overwrite: bool, resume: bool) -> RemoteFile:
    """Raise `OutputError` unless a remote output may be written at `uri` as asked.

    An existing object is replaced only with `overwrite`; `resume` is refused, with
    what to do instead, since a store cannot append to an object.
    """
    import pyarrow.fs as pafs

    if resume:
        raise OutputError(
            f"{uri}: --resume cannot continue a remote output (object stores cannot "
            "append); write to a local path, which --resume can continue, and copy it "
            f"to {uri} when done, or pass --overwrite to start again"
        )
    remote = resolve(uri, OutputError)
    try:
        info = remote.info()
    except OSError as exc:
        raise OutputError(f"{uri}: cannot open for writing ({_first_line(exc)})") from None
    if info.type == pafs.FileType.Directory:
        raise OutputError(f"{uri}: is a directory; name a file")
    if info.type != pafs.FileType.NotFound and not overwrite:
        raise OutputError(
            f"{uri}: already exists; pass --overwrite to replace it (a remote output "
            "cannot be continued with --resume)"
        )
    return remote


def open_remote_output(uri: str, *, overwrite: bool, resume: bool = False) -> Any:
    """A stream that writes the remote file `uri`, checked by `check_remote_output`.

    On an object store the object appears whole when the stream closes.
    """
    remote = check_remote_output(uri, overwrite=overwrite, resume=resume)
    try:
        # compression=None: the bytes go out as written, whatever the name's suffix.
        return remote.fs.open_output_stream(remote.path, compression=None)
    except OSError as exc:
        raise OutputError(f"{uri}: cannot open for writing ({_first_line(exc)})") from None
