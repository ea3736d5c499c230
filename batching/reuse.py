"""Never the same work twice: the rows of a run answered without the engine.

The engine loop (`batching.pipeline`) hands each chunk to `Reuse.sort`, in the
encoder thread, before anything is tokenized: rows whose request an earlier row of
the chunk already makes follow that row, and requests found in the result cache
are answered there and then. What is left runs; `join` (on the engine loop's
thread) attaches a request to an identical one still in flight from an earlier
chunk, or answers it from the results of the run kept in `RecentResults`.
When a request finishes, `settle` gives every row that followed it its own result
and stores the result in the cache.

A request whose run ends in an error gives its followers the same error, restated
at each follower's own place: the same request would fail the same way (too long,
rejected, or past its retries), and running each copy again would multiply the
cost of a bad row (an engine death, a minute of retries) by its copies. Failed
results are never cached nor kept, so a later run, or a later repeat, tries again.

>>> from batching.config import InputConfig, RunConfig
>>> from batching.records import Request, Sampling
>>> from batching.report import ReportCollector
>>> config = RunConfig(InputConfig("-"), sampling=Sampling(temperature=0.0, max_tokens=8))
>>> reuse = Reuse(config, ReportCollector(), place=lambda index, line: f"in:{line}")
>>> rows = [Request(index=i, id=i, line=i + 1, prompt="Hi") for i in range(3)]
>>> chunk = reuse.sort(rows)
>>> [(r.index, len(repeats.followers)) for r, repeats in chunk.runs]
[(0, 2)]
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from batching.config import CacheConfig, RunConfig
from batching.dedup import RecentResults, request_bytes, request_key, result_for
from batching.media import has_images
from batching.model_identity import directory_digest, model_identity
from batching.readers import RowPlace
from batching.records import Request, Result, RowError
from batching.report import ReportCollector
from batching.result_cache import ResultCache, StoredResult, cache_scope
from batching.sampling_rules import is_deterministic

__all__ = ["Repeats", "Reuse", "SortedChunk"]


@dataclass(slots=True)
class Repeats:
    """A request that runs, and the identical rows its answer serves.

    `key`: its dedup key (None when it is not merged with others); `cache_key`: its
    key in the result cache (None when not cached); `missed`: looked up there and
    not found.
    """

    request: Request
    key: bytes | None
    cache_key: bytes | None
    followers: list[Request] = field(default_factory=list)
    missed: bool = False


@dataclass(slots=True)
class SortedChunk:
    """A chunk's requests as `Reuse.sort` leaves them: those to run (each with its
    repeats, or None when it is neither merged nor cached), and the results the
    cache answered."""

    runs: list[tuple[Request, Repeats | None]]
    served: list[Result] = field(default_factory=list)


class Reuse:
    """Deduplication and the result cache for one run (see the module's docs)."""

    def __init__(
        self,
        config: RunConfig,
        report: ReportCollector,
        *,
        place: RowPlace,
        cache: ResultCache | None = None,
        scope: bytes | None = None,
    ) -> None:
        self._defaults = config.sampling
        self._dedup = config.dedup
        self._cache = cache
        self._scope = scope
        self._cache_sampled = config.cache is not None and config.cache.sampled
        self._report = report
        self._place = place
        self._leading: dict[bytes, Repeats] = {}  # in flight, by dedup key
        self._recent = RecentResults()
        self._writes: list[tuple[bytes, StoredResult]] = []
        # What the rows waiting on a request in flight hold (`request_bytes`): the
        # engine loop stops reading past its reorder limit, as for finished rows.
        self.waiting_bytes = 0

    @classmethod
    def open(cls, config: RunConfig, report: ReportCollector, *, place: RowPlace) -> Reuse | None:
        """The run's `Reuse`, its cache opened; None when it has neither dedup nor a cache."""
        if config.cache is None:
            return cls(config, report, place=place) if config.dedup else None
        cache = ResultCache.open(config.cache.path)
        try:
            scope = _scope(config.cache, cache, report)
        except BaseException:
            cache.close()
            raise
        return cls(config, report, place=place, cache=cache, scope=scope)

    # -- in the encoder thread: touches only the cache ------------------------------

    def sort(self, requests: Sequence[Request]) -> SortedChunk:
        """Merge the chunk's identical requests; answer those the cache holds."""
        chunk = SortedChunk(runs=[])
        groups: dict[bytes, Repeats] = {}
        looked_up: list[Repeats] = []
        for request in requests:
            sampling = request.sampling.over(self._defaults)
            deterministic = is_deterministic(sampling)
            merged = self._dedup and deterministic
            cached = self._cache is not None and (deterministic or self._cache_sampled)
            if (
                (not merged and not cached)
                or request.pooling is not None
                or (request.messages is not None and has_images(request.messages))
            ):
                # Rows with images run as they come (matching them would mean
                # hashing every image's pixels), and so do pooling rows (embed,
                # classify, score), whose values the cache does not hold.
                chunk.runs.append((request, None))
                continue
            base = request_key(request, sampling)
            if merged:
                first = groups.get(base)
                if first is not None:
                    first.followers.append(request)
                    continue
            cache_key = self._cache_key(base) if cached else None
            repeats = Repeats(request, base if merged else None, cache_key)
            if merged:
                groups[base] = repeats
            if cache_key is not None:
                looked_up.append(repeats)
            chunk.runs.append((request, repeats))
        if looked_up and self._cache is not None:
            found = self._cache.get_many([r.cache_key for r in looked_up if r.cache_key])
            answered = set()
            for repeats in looked_up:
                stored = found.get(repeats.cache_key or b"")
                if stored is None:
                    repeats.missed = True
                    continue
                answered.add(repeats.request.index)
                for request in (repeats.request, *repeats.followers):
                    chunk.served.append(stored.result_for(request))
            chunk.runs = [run for run in chunk.runs if run[0].index not in answered]
        return chunk

    def _cache_key(self, base: bytes) -> bytes:
        return hashlib.sha256((self._scope or b"") + base).digest()

    # -- on the engine loop's thread -------------------------------------------------

    def join(self, repeats: Repeats) -> list[Result] | None:
        """None: `repeats.request` runs (and leads any later repeat). Otherwise its
        rows are answered from a finished one (the results), or wait on an identical
        request in flight (an empty list)."""
        key = repeats.key
        if key is not None:
            leader = self._leading.get(key)
            if leader is not None:
                leader.followers.append(repeats.request)
                leader.followers.extend(repeats.followers)
                self.waiting_bytes += _held(repeats.request, *repeats.followers)
                return []
            done = self._recent.get(key)
            if done is not None:
                rows = (repeats.request, *repeats.followers)
                self._report.record_reuse(deduplicated=len(rows))
                return [done.result_for(request) for request in rows]
            self._leading[key] = repeats
            if repeats.followers:
                self.waiting_bytes += _held(*repeats.followers)
        if repeats.missed:
            self._report.record_reuse(misses=1)
        return None

    def settle(self, result: Result, repeats: Repeats) -> list[Result]:
        """`repeats.request` finished with `result`: its followers' own results."""
        key = repeats.key
        if key is not None and self._leading.get(key) is repeats:
            del self._leading[key]
            if repeats.followers:
                self.waiting_bytes -= _held(*repeats.followers)
        if result.ok:
            if key is not None:
                self._recent.remember(key, result)
            if repeats.cache_key is not None and self._cache is not None:
                self._writes.append((repeats.cache_key, StoredResult.of(result)))
        if not repeats.followers:
            return []
        self._report.record_reuse(deduplicated=len(repeats.followers))
        answers = []
        for follower in repeats.followers:
            answer = result_for(result, follower)
            if result.error is not None:
                answer.error = self._restated(result.error, repeats.request, follower)
            answers.append(answer)
        return answers

    def _restated(self, error: RowError, leader: Request, follower: Request) -> RowError:
        """The leader's error at the follower's place (messages start with the row's)."""
        prefix = f"{self._place(leader.index, leader.line)}: "
        message = error.message
        if message.startswith(prefix):
            message = f"{self._place(follower.index, follower.line)}: {message[len(prefix) :]}"
        return RowError(error.type, message)

    def flush(self) -> None:
        """Store the results finished since the last flush, in one transaction."""
        if self._writes and self._cache is not None:
            writes, self._writes = self._writes, []
            self._cache.put_many(writes)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._cache is not None:
                self._cache.close()


def _held(*requests: Request) -> int:
    return sum(request_bytes(request) for request in requests)


def _scope(config: CacheConfig, memo: ResultCache, report: ReportCollector) -> bytes:
    """The cache scope of the run's engine (`cache_scope`), its files hashed once
    and remembered in the cache (`memo`); the identity also goes to the report's
    manifest, which then need not hash the model a second time."""
    identity = model_identity(config.engine, memo=memo)
    report.record_model_identity(identity)
    if identity.name_only and config.engine_kind in ("vllm", "openai"):
        sys.stderr.write(
            f"bizra-batch: warning: --cache keys {identity.name} by its name only; a new "
            "upload under that name is not told apart (pass a local path, or "
            "--engine-arg revision=...)\n"
        )
    adapters = {
        adapter.name: directory_digest(adapter.path, memo)
        if os.path.isdir(adapter.path)
        else adapter.path
        for adapter in config.engine.loras.adapters
    }
    return cache_scope(config.engine, config.engine_kind, identity, adapters)
