"""Which model a run used, named by what decides its outputs, not by its path.

A local directory is named by a digest of its files' contents (config, tokenizer,
chat template, weights): the same weights copied elsewhere get the same identity,
and weights changed in place get another. A hub name is named by its revision where
the engine arguments give one (`--engine-arg revision=...`); otherwise only by its
name, which `name_only` says, so a caller can warn that a new upload under the same
name is not told apart.

Hashing reads every byte: sha256 ran at 0.84 GB/s on one (shared) core here, so a
16 GB model costs ~20 s. A `DigestMemo` (the result cache keeps one) remembers each file's
digest by (path, size, mtime_ns), so later runs hash only what changed.

>>> import os
>>> os.mkdir("m")
>>> with open("m/config.json", "w") as config:
...     _ = config.write("{}")
>>> identity = model_identity(EngineConfig(model="m"))
>>> identity.name, len(identity.digest or ""), identity.name_only
('m', 64, False)
>>> model_identity(EngineConfig(model="org/name")).name_only
True
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from batching.config import EngineConfig

__all__ = ["DigestMemo", "ModelIdentity", "directory_digest", "model_identity"]

_READ_BYTES = 1024 * 1024


class DigestMemo(Protocol):
    """Remembers file digests by (path, size, mtime_ns): a file unchanged since is
    not read again."""

    def digest_of(self, path: str, size: int, mtime_ns: int) -> str | None: ...

    def remember_digest(self, path: str, size: int, mtime_ns: int, digest: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """A model as a run used it: `digest` for a local directory, `revision` for a
    hub name where one was given; both None means it is known by `name` alone."""

    name: str
    digest: str | None = None
    revision: str | None = None

    @property
    def name_only(self) -> bool:
        return self.digest is None and self.revision is None


def model_identity(engine: EngineConfig, *, memo: DigestMemo | None = None) -> ModelIdentity:
    """The identity of `engine.model`: a directory's content digest, else its revision."""
    directory = Path(os.path.expanduser(engine.model))
    if directory.is_dir():
        return ModelIdentity(engine.model, digest=directory_digest(directory, memo))
    revision = engine.extra.get("revision")
    return ModelIdentity(engine.model, revision=None if revision is None else str(revision))


def _model_files(directory: Path) -> list[Path]:
    # Every file but hidden ones (.git, .cache: a hub download's bookkeeping) and
    # prose: a README edit must not make every cached result look stale. Linked
    # files are followed (a hub snapshot's files link into its blobs), linked
    # folders are not, so a link cycle cannot make the walk endless.
    files = []
    for folder, folders, names in os.walk(directory):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in names:
            path = Path(folder, name)
            if name.startswith(".") or path.suffix.lower() == ".md" or not path.is_file():
                continue
            files.append(path)
    return sorted(files)


def directory_digest(directory: str | Path, memo: DigestMemo | None = None) -> str:
    """A digest of a directory's files, names and contents (hidden files and prose
    left out), the same wherever the directory is: a model's, or a LoRA adapter's."""
    directory = Path(directory)
    whole = hashlib.sha256()
    for path in _model_files(directory):
        whole.update(path.relative_to(directory).as_posix().encode())
        whole.update(b"\0")
        whole.update(_file_digest(path, memo).encode())
        whole.update(b"\n")
    return whole.hexdigest()


def _file_digest(path: Path, memo: DigestMemo | None) -> str:
    stat = path.stat()  # follows links: a hub snapshot's files link into its blobs
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo is not None:
        known = memo.digest_of(*key)
        if known is not None:
            return known
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_READ_BYTES):
            digest.update(block)
    found = digest.hexdigest()
    if memo is not None:
        memo.remember_digest(*key, found)
    return found
