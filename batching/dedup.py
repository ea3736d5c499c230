"""Identical requests run once: what makes two rows the same request, and the
finished results kept so that later repeats are answered too.

Two rows are the same request when the engine would get the same prompt (the text,
or the chat's messages) and the same effective sampling; only deterministic ones
(`sampling_rules.is_deterministic`) are merged, since two sampled rows are meant to
differ. The prompt as given decides its tokens once the model is fixed, so the key
needs no tokenizer: rows can be matched, and looked up in the result cache, before
anything is tokenized or any engine started.

>>> from batching.records import Request, Sampling
>>> greedy = Sampling(temperature=0.0, max_tokens=8)
>>> a = request_key(Request(index=0, id="a", line=1, prompt="Hi"), greedy)
>>> b = request_key(Request(index=5, id="b", line=6, prompt="Hi"), greedy)
>>> c = request_key(Request(index=6, id="c", line=7, prompt="Hi"), Sampling(temperature=0))
>>> a == b, a == c
(True, False)
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

from batching.ordering import result_bytes
from batching.records import SAMPLING_FIELDS, Request, Result, Sampling
from batching.result_cache import StoredResult

__all__ = [
    "RECENT_RESULTS_BYTES",
    "RecentResults",
    "request_bytes",
    "request_key",
    "result_for",
    "sampling_digest",
]

# Finished results kept for repeats that come after their first row finished. 32 MiB
# holds ~110k short answers (~300 bytes each with the entry's overhead), a hundred
# chunks' worth of distinct requests, beside a reorder buffer of 256 MiB by default;
# the least recently used go first.
RECENT_RESULTS_BYTES = 32 * 1024 * 1024


def request_key(request: Request, sampling: Sampling) -> bytes:
    """A digest of what decides a request's answer besides the model: its prompt
    (or messages), its LoRA adapter and `sampling`, the effective settings (the
    row's over the run's). Not for rows with images (`reuse` runs those as they come).

    Floats are written as floats, so temperature 0 and 0.0 are one request.
    """
    digest = hashlib.sha256(sampling_digest(sampling))
    if request.adapter is not None:  # a LoRA adapter answers differently
        name = request.adapter.encode()
        digest.update(b"a" + len(name).to_bytes(4, "big") + name)
    if request.prompt is not None:
        digest.update(b"p")
        digest.update(request.prompt.encode("utf-8", "surrogatepass"))
    else:
        digest.update(b"m")
        digest.update(orjson.dumps(request.messages, option=orjson.OPT_SORT_KEYS, default=_plain))
    return digest.digest()


_FLOAT_FIELDS = frozenset({"temperature", "top_p"})


# Most rows share a handful of effective settings (`Sampling.over` hands back the
# run's own object for a row that sets none), so each is encoded once: the key went
# from 3.5 to ~1 µs a row.
@functools.lru_cache(maxsize=1024)
def sampling_digest(sampling: Sampling) -> bytes:
    """A fixed-length digest of every sampling field (32 bytes).

    >>> len(sampling_digest(Sampling(temperature=0.0)))
    32
    """
    settings = [
        float(value) if isinstance(value, int | float) and name in _FLOAT_FIELDS else value
        for name, value in ((name, getattr(sampling, name)) for name in SAMPLING_FIELDS)
    ]
    return hashlib.sha256(orjson.dumps(settings)).digest()


def _plain(value: Any) -> Any:
    # Chat messages arrive as any Mapping; orjson writes only dicts itself.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot key a {type(value).__name__}")


# A waiting row's Request and its list slot, before its prompt: measured like the
# reorder buffer's rows (`ordering.result_bytes`), ~230 bytes.
_REQUEST_OVERHEAD_BYTES = 230


def request_bytes(request: Request) -> int:
    """An estimate of the memory a row waiting for an identical request holds.

    >>> request_bytes(Request(index=0, id="a", line=1, prompt="x" * 100))
    330
    """
    if request.prompt is not None:
        return _REQUEST_OVERHEAD_BYTES + len(request.prompt)
    text = sum(len(str(message.get("content", ""))) for message in request.messages or ())
    return _REQUEST_OVERHEAD_BYTES + text


def result_for(result: Result, request: Request) -> Result:
    """`result` as `request`'s own row: its index, id and kept fields; no latency,
    since this row never ran in the engine. (An error keeps its message as is: the
    caller restates it for the row.)

    >>> first = Result(index=0, id="a", output="yo", completion_tokens=1, latency_s=0.2)
    >>> copy = result_for(first, Request(index=7, id="b", line=8, prompt="Hi"))
    >>> copy.index, copy.id, copy.output, copy.latency_s
    (7, 'b', 'yo', None)
    """
    return Result(
        index=request.index,
        id=request.id,
        output=result.output,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        error=result.error,
        kept=request.kept,
        latency_s=None,
        logprobs=result.logprobs,
        chat=request.messages is not None,
    )


class RecentResults:
    """Finished results by request key, the least recently used dropped past
    `limit_bytes` (estimated as the reorder buffer estimates, `result_bytes`).

    Each is kept as a plain tuple of its fields, not as the `Result`: a tuple of
    strings and numbers drops out of the garbage collector's watch, while 100k kept
    Result objects made every full collection walk them (with a null engine the
    engine loop cost 17 CPU µs a row with dedup against 8.5 without; JSON bytes
    instead cost as much again to encode).

    >>> recent = RecentResults(limit_bytes=700)
    >>> for n in range(3):
    ...     recent.remember(bytes([n]), Result(index=n, id=n, output="x" * 100))
    >>> recent.get(bytes([0])) is None, recent.get(bytes([2])).output == "x" * 100
    (True, True)
    """

    def __init__(self, limit_bytes: int = RECENT_RESULTS_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._results: OrderedDict[bytes, tuple[Any, ...]] = OrderedDict()

    def get(self, key: bytes) -> StoredResult | None:
        fields = self._results.get(key)
        if fields is None:
            return None
        self._results.move_to_end(key)
        return StoredResult(*fields[:-1])

    def remember(self, key: bytes, result: Result) -> None:
        if key in self._results:
            return
        size = result_bytes(result) + len(key)
        if size > self.limit_bytes:
            return
        self._results[key] = (
            result.output,
            result.finish_reason,
            result.prompt_tokens,
            result.completion_tokens,
            result.logprobs,
            size,
        )
        self.held_bytes += size
        while self.held_bytes > self.limit_bytes:
            _, dropped = self._results.popitem(last=False)
            self.held_bytes -= dropped[-1]
