"""What the INPUT arguments name, worked out once: an ordered tuple of input files.

INPUT may be one file (as always), several, a directory (its input files, in name
order, subfolders too), or a quoted glob (`'data/*.parquet'`, `**` for any depth);
URIs likewise (`s3://bucket/prefix/`, `hf://datasets/ORG/NAME/...`, `memory://...`),
listed through the same `pyarrow.fs` filesystem that reads them. Each file keeps
its name relative to what was given, so `-o DIR/` can write `DIR/<relative>`.

A directory lists the files whose names end in `.jsonl`, `.jsonl.gz`, `.jsonl.zst`
or `.parquet` (any case), and leaves out names starting with "." or "_" (Spark's
`_SUCCESS`, a crashed upload's `.tmp`) and an output's `<out>.parts/` directory.
Name order is the order of the relative paths as strings, so shards numbered with
leading zeros run in number order.

>>> import os
>>> os.makedirs("shards/sub", exist_ok=True)
>>> for name in ("shards/b.jsonl", "shards/a.parquet", "shards/sub/c.jsonl", "shards/x.txt"):
...     open(name, "w").close()
>>> [file.relative for file in expand_inputs(("shards",))]
['a.parquet', 'b.jsonl', 'sub/c.jsonl']
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from batching.errors import InputError, UsageError
from batching.location import STDIO, Location
from batching.parquet_format import PARTS_SUFFIX
from batching.uri import is_remote, local_path, resolve

__all__ = ["INPUT_SUFFIXES", "InputFile", "expand_inputs", "has_glob", "is_input_name"]

# What a directory or a glob picks up; a file named on its own is read whatever its
# name (its format from --input-format then).
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file: where it is, and its name relative to the argument it came from.

    `relative` uses "/" whatever the platform; a file named on its own is its base name.
    `size` is the size a remote listing gave (for the progress bar without a round
    trip per file); None where it was not listed.

    >>> InputFile.of("data/in.jsonl").relative
    'in.jsonl'
    """

    location: Location
    relative: str
    size: int | None = field(default=None, compare=False)

    @classmethod
    def of(cls, given: str, relative: str | None = None, size: int | None = None) -> InputFile:
        location = Location.of(given)
        return cls(location, relative or _base_name(location), size)

    @property
    def name(self) -> str:
        """The file as messages name it (`data/b.jsonl`, `s3://bucket/b.jsonl`)."""
        return self.location.name


def has_glob(path: str) -> bool:
    """Whether `path` holds glob characters (`*`, `?`, `[`), in its path part.

    >>> has_glob("data/*.jsonl"), has_glob("s3://b/in.jsonl?versionId=3")
    (True, False)
    """
    return _GLOB_CHARS.search(_without_query(path)) is not None


def is_input_name(name: str) -> bool:
    """Whether a directory listing or a glob picks up the file `name`.

    >>> is_input_name("part-0.JSONL.GZ"), is_input_name("_SUCCESS"), is_input_name("a.csv")
    (True, False, False)
    """
    base = name.rsplit("/", 1)[-1]
    return not base.startswith((".", "_")) and base.lower().endswith(INPUT_SUFFIXES)


def expand_inputs(given: Sequence[str]) -> tuple[InputFile, ...]:
    """The input files `given` names, in order: each argument's files in name order.

    A plain file is taken as it is, without a look at the disk (a missing one is
    reported when it is opened, as before). Raises `UsageError` for an argument
    that names nothing: an empty directory, a glob that matches no input file, or
    stdin ("-") among several inputs (`InputError`, a `UsageError`, for an argument that
    names no input file). The same file named twice runs twice.

    >>> [file.name for file in expand_inputs(("a.jsonl", "b.parquet"))]
    ['a.jsonl', 'b.parquet']
    """
    if not given:
        raise UsageError("no input given; name a file, a directory or a glob (- for stdin)")
    if len(given) > 1 and STDIO in given:
        raise UsageError(
            "- (stdin) can only be the one input; save it to a file to run it with others"
        )
    files: list[InputFile] = []
    for argument in given:
        files.extend(_expand_one(argument))
    return tuple(files)


def _expand_one(argument: str) -> list[InputFile]:
    if argument == STDIO:
        return [InputFile(Location.of(STDIO), STDIO)]
    if is_remote(argument):
        return _expand_remote(argument)
    path = local_path(argument)
    # A file whose name holds a bracket (`notes[1].jsonl`) is that file, not a glob.
    if has_glob(path) and not os.path.isfile(path):
        base, pattern = _split_glob(path)
        found = [
            (relative, os.path.join(base, relative))
            for relative in _local_names(base)
            if _matches(pattern, relative)
        ]
        return _found(argument, found, glob=True)
    if os.path.isdir(path):
        found = [(relative, os.path.join(path, relative)) for relative in _local_names(path)]
        return _found(argument, [(r, p) for r, p in found if is_input_name(r)], glob=False)
    return [InputFile.of(argument)]


def _expand_remote(argument: str) -> list[InputFile]:
    """A remote file, directory (`.../prefix/`, or a name that is one) or glob."""
    uri, query = _split_query(argument)
    glob = has_glob(uri)
    if not glob and not uri.endswith("/") and Location.of(argument).format is not None:
        return [InputFile.of(argument)]  # a file by its name: opened (and checked) later
    base_uri, pattern = _split_glob(uri) if glob else (uri.rstrip("/"), "")
    listed = _remote_names(argument, base_uri)
    if listed is None:  # not a directory: a file whose name tells no format
        return [InputFile.of(argument)]
    found = [
        (relative, f"{base_uri}/{relative}{query}")
        for relative in listed
        if (_matches(pattern, relative) if glob else is_input_name(relative))
    ]
    return _found(argument, found, glob=glob, sizes=listed)


def _found(
    argument: str,
    found: list[tuple[str, str]],
    *,
    glob: bool,
    sizes: dict[str, int | None] | None = None,
) -> list[InputFile]:
    if not found:
        if glob:
            raise InputError(
                f"{argument}: the glob matches no input file ({', '.join(INPUT_SUFFIXES)})"
            )
        raise InputError(
            f"{argument}: the directory holds no input files ({', '.join(INPUT_SUFFIXES)}, "
            "in it or its subfolders)"
        )
    found.sort()
    sizes = sizes or {}
    return [InputFile.of(path, relative, sizes.get(relative)) for relative, path in found]


def _local_names(root: str) -> list[str]:
    """Every file under `root`, as paths relative to it with "/", in no set order."""
    names: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        # Pruned in place: os.walk then does not descend into them.
        subfolders[:] = [name for name in subfolders if _listed_folder(name)]
        relative_folder = os.path.relpath(folder, root)
        for name in files:
            relative = name if relative_folder == "." else os.path.join(relative_folder, name)
            names.append(relative.replace(os.sep, "/"))
    return names


def _remote_names(argument: str, base_uri: str) -> dict[str, int | None] | None:
    """The files under the remote directory `base_uri`, relative to it, with their
    sizes; None if it is not a directory (one listing call: S3 and the Hugging Face
    Hub list by prefix)."""
    import pyarrow.fs as pafs

    remote = resolve(base_uri + "/")
    try:
        info = remote.fs.get_file_info(remote.path)
        if info.type == pafs.FileType.File:
            return None
        listed = []
        if info.type != pafs.FileType.NotFound:
            listed = remote.fs.get_file_info(pafs.FileSelector(remote.path, recursive=True))
    except OSError as exc:
        raise InputError(f"{argument}: cannot list it ({str(exc).strip()})") from None
    except Exception as exc:
        # An fsspec filesystem raises what its HTTP client raises (hf:// offline: httpx's
        # ConnectError, not an OSError): one line for the user, not a traceback.
        reason = (str(exc).strip() or "no detail").splitlines()[0]
        raise InputError(f"{argument}: cannot list it ({type(exc).__name__}: {reason})") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{argument}: no such file or directory; check the URI")
    root = remote.path.rstrip("/") + "/"
    names: dict[str, int | None] = {}
    for entry in listed:
        if entry.type != pafs.FileType.File or not entry.path.startswith(root):
            continue
        relative = entry.path[len(root) :]
        if all(_listed_folder(part) for part in relative.split("/")[:-1]):
            names[relative] = entry.size
    return names


def _listed_folder(name: str) -> bool:
    return not name.startswith((".", "_")) and not name.endswith(PARTS_SUFFIX)


def _split_glob(path: str) -> tuple[str, str]:
    """`path` cut before its first part with a glob character: the folder to list,
    and the pattern the files' names under it must match.

    >>> _split_glob("data/2024-*/part-*.parquet")
    ('data', '2024-*/part-*.parquet')
    """
    parts = path.split("/")
    first = next(n for n, part in enumerate(parts) if _GLOB_CHARS.search(part))
    base = "/".join(parts[:first])
    if not base:
        base = "/" if path.startswith("/") else "."
    return base, "/".join(parts[first:])


def _matches(pattern: str, relative: str) -> bool:
    """Whether `relative` matches `pattern` part by part; `**` matches any parts.

    >>> _matches("**/*.jsonl", "a.jsonl"), _matches("*.jsonl", "sub/a.jsonl")
    (True, False)
    """
    return _match_parts(pattern.split("/"), relative.split("/"))


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, parts[skip:]) for skip in range(len(parts) + 1))
    return bool(parts) and _part_matches(head, parts[0]) and _match_parts(rest, parts[1:])


def _part_matches(pattern: str, part: str) -> bool:
    import fnmatch

    # fnmatchcase: the store's names are case-sensitive, whatever the platform says.
    return fnmatch.fnmatchcase(part, pattern)


def _base_name(location: Location) -> str:
    if location.is_stdio:
        return STDIO
    return _without_query(location.path).rstrip("/").rsplit("/", 1)[-1]


def _without_query(path: str) -> str:
    return _split_query(path)[0]


def _split_query(path: str) -> tuple[str, str]:
    """A URI's path and its query ("?region=..."), kept for every file listed under it."""
    if not is_remote(path) or "?" not in path:
        return path, ""
    uri, query = path.split("?", 1)
    return uri, "?" + query


def distinct_relatives(files: Iterable[InputFile]) -> None:
    """Raise `UsageError` if two files would be written to the same output name."""
    seen: dict[str, str] = {}
    for file in files:
        if file.relative in seen:
            raise UsageError(
                f"{file.name} and {seen[file.relative]}: both would be written to "
                f"{file.relative} under the output directory; rename one, or pass "
                "the directory that holds them both"
            )
        seen[file.relative] = file.name
