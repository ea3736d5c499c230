"""Finished results kept across runs in a local SQLite file (`--cache PATH`).

A row is looked up by a key over everything that decides its output: the model's
identity (`batching.model_identity`), the engine settings that change outputs, the
engine kind, the prompt as the engine gets it and the full effective sampling
(`batching.dedup.request_key`). A later run answers the rows it finds from here and
gives only the others to the engine; a run whose rows are all found starts none.

Safe to share: the file is in WAL mode with a busy timeout, so two runs may read
and write it at once; writes go in one transaction per batch of written rows, so a
run killed mid-write (even with kill -9) leaves every earlier batch whole and the
unfinished one absent. Each stored value carries a checksum of its key and bytes,
so a damaged page is an error, never a wrong answer. A file that is not ours
(no SQLite, another program's database, another schema version) is refused when
it is opened, before anything runs.

>>> cache = ResultCache.open("results.sqlite")
>>> cache.put_many([(b"k" * 32, StoredResult("hello", "stop", 3, 1, None))])
>>> cache.get_many([b"k" * 32, b"x" * 32])[b"k" * 32].output
'hello'
>>> cache.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batching.config import EngineConfig
from batching.errors import CacheCorruptError, CacheFileError, UsageError
from batching.location import Location
from batching.model_identity import ModelIdentity
from batching.records import Request, Result

__all__ = [
    "ResultCache",
    "StoredResult",
    "cache_scope",
]

# "bzrc" in the database header (PRAGMA application_id): how a file is known as ours.
APPLICATION_ID = int.from_bytes(b"bzrc", "big")
SCHEMA_VERSION = 1
# A second run writing at the same moment holds the lock for one transaction, a few
# milliseconds; a minute covers a slow disk without hanging forever on a stuck one.
_BUSY_TIMEOUT_S = 60.0
# Keys per SELECT ... IN (...): under SQLite's old 999-variable limit.
_LOOKUP_BATCH = 500
_CHECK_BYTES = 8

_SCHEMA = (
    "CREATE TABLE results (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
    "check_sum BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE file_digests (path TEXT NOT NULL, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (path, size, mtime_ns))",
)

# Engine arguments that change speed or memory, never what a request produces;
# every other argument (quantization, kv_cache_dtype, revision, tokenizer, ...) is
# part of the key, unknown ones included, so an argument this list misses costs
# only cache hits.
_SPEED_ONLY_ARGS = frozenset(
    {
        "enforce_eager",
        "gpu_memory_utilization",
        "swap_space",
        "cpu_offload_gb",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "disable_log_stats",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "distributed_executor_backend",
        "max_seq_len_to_capture",
        "disable_custom_all_reduce",
        "compilation_config",
    }
)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """What a cached row gives back: a finished result's own fields."""

    output: str | list[str] | None
    finish_reason: str | list[str | None] | None
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: list[Any] | None

    @classmethod
    def of(cls, result: Result) -> StoredResult:
        return cls(
            result.output,
            result.finish_reason,
            result.prompt_tokens,
            result.completion_tokens,
            result.logprobs,
        )

    def result_for(self, request: Request) -> Result:
        """The row's result, as a fresh run would write it; no engine latency.

        >>> row = Request(index=4, id="d", line=5, prompt="Hi")
        >>> StoredResult("yo", "stop", 2, 1, None).result_for(row).to_dict()["output"]
        'yo'
        """
        return Result(
            index=request.index,
            id=request.id,
            output=self.output,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            kept=request.kept,
            logprobs=self.logprobs,
            chat=request.messages is not None,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            [self.output, self.finish_reason, self.prompt_tokens, self.completion_tokens,
             self.logprobs]
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredResult:
        output, finish_reason, prompt_tokens, completion_tokens, logprobs = orjson.loads(data)
        return cls(output, finish_reason, prompt_tokens, completion_tokens, logprobs)


def cache_scope(
    engine: EngineConfig,
    engine_kind: str,
    identity: ModelIdentity,
    adapters: Mapping[str, str] | None = None,
) -> bytes:
    """The part of every key that the run fixes: engine kind, model, output settings,
    and each LoRA adapter a row may name (`adapters`: name -> its directory's digest,
    or its path where it is not a local directory).

    A local model is named by its digest alone, so a copy elsewhere shares results.

    >>> from batching.config import EngineConfig
    >>> from batching.model_identity import ModelIdentity
    >>> a = cache_scope(EngineConfig("m", dtype="float32"), "vllm", ModelIdentity("m", "ab"))
    >>> b = cache_scope(EngineConfig("m", dtype="float16"), "vllm", ModelIdentity("m", "ab"))
    >>> c = cache_scope(EngineConfig("m", dtype="float32", max_num_seqs=8,
    ...                 extra={"enforce_eager": True}), "vllm", ModelIdentity("/x", "ab"))
    >>> a == b, a == c
    (False, True)
    """
    model: dict[str, Any] = (
        {"digest": identity.digest}
        if identity.digest is not None
        else {"name": identity.name, "revision": identity.revision}
    )
    settings = {
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "seed": engine.seed,
        "task": engine.task,
        "args": {k: v for k, v in engine.extra.items() if k not in _SPEED_ONLY_ARGS},
    }
    scope = {
        "engine": engine_kind,
        "model": model,
        "settings": settings,
        "adapters": dict(adapters or {}),
    }
    return hashlib.sha256(orjson.dumps(scope, option=orjson.OPT_SORT_KEYS)).digest()


class ResultCache:
    """A result cache file, opened (and made, if new or empty) and checked as ours.

    Safe from two threads (the encoder thread looks rows up while the engine loop
    writes): one connection, used under a lock.
    """

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> ResultCache:
        """Open `path`, making a new cache there if it is missing or empty."""
        location = Location.of(path)
        if not location.is_local:
            raise UsageError(f"--cache {path}: the cache must be a local file")
        try:
            db = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CacheFileError(f"--cache {path}: cannot open ({exc})") from None
        try:
            _check_ours(db, path)
            db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a power
            # cut may lose the last batches, never leave a half-written one.
            db.execute("PRAGMA synchronous=NORMAL")
            _create_if_new(db, path)
        except sqlite3.OperationalError as exc:  # locked past the timeout, read-only, ...
            db.close()
            raise CacheFileError(f"--cache {path}: cannot use the file ({exc})") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CacheFileError(_not_ours(path, str(exc))) from None
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, StoredResult]:
        """The stored results of those `keys` that are in the cache."""
        found: dict[bytes, StoredResult] = {}
        with self._lock, self._guard():
            for start in range(0, len(keys), _LOOKUP_BATCH):
                batch = keys[start : start + _LOOKUP_BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(
                    f"SELECT key, value, check_sum FROM results WHERE key IN ({marks})",
                    batch,
                )
                for key, value, check in rows:
                    if _check_sum(key, value) != check:
                        raise CacheCorruptError(_damaged(self.path, "a stored result"))
                    found[key] = StoredResult.from_bytes(value)
        return found

    def put_many(self, items: Iterable[tuple[bytes, StoredResult]]) -> None:
        """Store results in one transaction; a key already stored keeps its value."""
        rows = []
        for key, stored in items:
            value = stored.to_bytes()
            rows.append((key, value, _check_sum(key, value)))
        if not rows:
            return
        with self._lock, self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO results (key, value, check_sum) VALUES (?, ?, ?)", rows
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def digest_of(self, path: str, size: int, mtime_ns: int) -> str | None:
        """A model file's digest remembered by an earlier run (`DigestMemo`)."""
        with self._lock, self._guard():
            row = self._db.execute(
                "SELECT digest FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                (path, size, mtime_ns),
            ).fetchone()
        return None if row is None else str(row[0])

    def remember_digest(self, path: str, size: int, mtime_ns: int, digest: str) -> None:
        with self._lock, self._guard():
            self._db.execute(
                "INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                (path, size, mtime_ns, digest),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return _guarded(self.path)


@contextlib.contextmanager
def _guarded(path: str) -> Iterator[None]:
    """SQLite's reports of damage (or a lock held past the timeout) during a run as
    one clear error."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise CacheCorruptError(f"--cache {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise CacheCorruptError(_damaged(path, str(exc))) from None


def _check_ours(db: sqlite3.Connection, path: str) -> None:
    """Refuse, without writing to it, a database that is someone else's."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    if application_id == APPLICATION_ID:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise CacheFileError(
                f"--cache {path}: a result cache of schema version {version}, this "
                f"bizra-batch reads version {SCHEMA_VERSION}; give --cache a new path"
            )
        return
    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if application_id != 0 or tables:
        raise CacheFileError(_not_ours(path, "another program's SQLite database"))


def _create_if_new(db: sqlite3.Connection, path: str) -> None:
    # Two runs may create the same new file at once: the write lock decides which
    # makes the tables; the other finds them made.
    db.execute("BEGIN IMMEDIATE")
    try:
        _check_ours(db, path)
        if db.execute("PRAGMA application_id").fetchone()[0] == 0:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check_sum(key: bytes, value: bytes) -> bytes:
    return hashlib.blake2b(key + value, digest_size=_CHECK_BYTES).digest()


def _not_ours(path: str, why: str) -> str:
    return (
        f"--cache {path}: not a bizra-batch result cache ({why}); give --cache a new path, "
        "or delete the file if it was a cache"
    )


def _damaged(path: str, what: str) -> str:
    return (
        f"--cache {path}: the cache is damaged ({what}); delete it (results are only "
        "reused, never lost) and run again"
    )
