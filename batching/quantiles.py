"""Nearest-rank quantiles: the one definition, and the two histograms that keep one
in bounded memory.

A run's latencies (`LatencyHistogram`) and `validate`'s prompt lengths
(`TokenHistogram`) can number millions, so each keeps counts per bucket, never the
values; a benchmark holds every latency and takes the exact figure
(`exact_quantile`). All three rank the same way, `nearest_rank`, and walk their
counts the same way, `value_at_rank`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

__all__ = [
    "LatencyHistogram",
    "TokenHistogram",
    "exact_quantile",
    "nearest_rank",
    "value_at_rank",
]

T = TypeVar("T")

# q is read to six decimals, in integers: `math.ceil(q * count)` in floats is one
# rank too high where q * count lands a hair above a whole number (0.07 * 100).
_Q_SCALE = 1_000_000


def nearest_rank(q: float, count: int) -> int:
    """The 1-based rank of the `q` quantile among `count` values: the smallest rank
    with at least `q` of the values at or below it (0 <= q <= 1; 0 gives rank 1).

    >>> nearest_rank(0.5, 4), nearest_rank(0.95, 20), nearest_rank(0.07, 100)
    (2, 19, 7)
    """
    if not 0.0 <= q <= 1.0:  # False for NaN too
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    return max(1, -(-round(q * _Q_SCALE) * count // _Q_SCALE))


def value_at_rank(counted: Iterable[tuple[T, int]], rank: int) -> T:
    """The value holding 1-based `rank`, from (value, how many) pairs in ascending order.

    >>> value_at_rank([("a", 2), ("b", 3)], 3)
    'b'
    """
    seen = 0
    for value, count in counted:
        seen += count
        if seen >= rank:
            return value
    raise ValueError(f"rank {rank} is beyond the {seen} values counted")


def exact_quantile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile of `values` (held whole); None when empty.

    >>> exact_quantile([0.3, 0.1, 0.2], 0.5)
    0.2
    """
    if not values:
        return None
    return sorted(values)[nearest_rank(q, len(values)) - 1]


class LatencyHistogram:
    """Quantiles of a stream of durations in constant memory.

    Buckets are log-spaced, each 1% wider than the last, from 1 µs to 1 day
    (~2,500 buckets). A quantile is reported as its bucket's geometric midpoint,
    clamped to the smallest and largest value seen, so for values in that range the
    relative error is at most sqrt(1.01) - 1 ≈ 0.5% (half a bucket). Values outside
    it land in the end buckets: under 1 µs is reported within about 1 µs, over a day
    as the largest value seen. The smallest and largest rank are exact.

    >>> h = LatencyHistogram()
    >>> for s in (0.1, 0.2, 0.3):
    ...     h.add(s)
    >>> round(h.quantile(0.5), 3)
    0.2
    """

    LOW_S = 1e-6
    HIGH_S = 86_400.0
    RATIO = 1.01

    def __init__(self) -> None:
        log_ratio = math.log(self.RATIO)
        size = math.ceil(math.log(self.HIGH_S / self.LOW_S) / log_ratio)
        self._counts = [0] * size
        self._last = size - 1
        # Bucket of s: (log(s) - log(LOW_S)) / log(RATIO), as one multiply and one
        # subtract: `add` runs once per row.
        self._scale = 1.0 / log_ratio
        self._offset = math.log(self.LOW_S) / log_ratio
        self.count = 0
        self._min = math.inf
        self._max = -math.inf

    def add(self, seconds: float) -> None:
        """Count one duration; NaN, infinite and negative values are dropped."""
        # A bad timing from an engine must not take the report (and the run) down.
        if not 0.0 <= seconds < math.inf:  # False for NaN too
            return
        i = 0
        if seconds > self.LOW_S:
            i = int(math.log(seconds) * self._scale - self._offset)
            if i > self._last:
                i = self._last
        self._counts[i] += 1
        self.count += 1
        if seconds < self._min:
            self._min = seconds
        if seconds > self._max:
            self._max = seconds

    def quantile(self, q: float) -> float | None:
        """The nearest-rank `q` quantile (0 <= q <= 1) in seconds; None when empty."""
        rank = nearest_rank(q, self.count)
        if self.count == 0:
            return None
        # The extremes are tracked exactly, so the first and last rank need no estimate.
        if rank == 1:
            return self._min
        if rank == self.count:
            return self._max
        bucket = value_at_rank(enumerate(self._counts), rank)
        if bucket == self._last:  # the overflow bucket has no upper edge to take a midpoint of
            return self._max
        midpoint: float = self.LOW_S * math.pow(self.RATIO, bucket + 0.5)
        return min(max(midpoint, self._min), self._max)


class TokenHistogram:
    """Min, max, sum and nearest-rank quantiles of token counts in bounded memory.

    Counts below `EXACT_BELOW` (most prompts) are kept exactly, one bucket per
    length; longer ones share buckets 1/8192 of their size wide, so a quantile
    there is at most 0.013% low. The number of buckets is bounded by the bit length
    of the largest count, never by the number of rows.

    >>> h = TokenHistogram()
    >>> for n in (5, 9, 7, 100):
    ...     h.add(n)
    >>> h.quantile(0.5), h.quantile(0.95), h.min, h.max
    (7, 100, 5, 100)
    """

    EXACT_BELOW = 16_384
    _PRECISION_BITS = 14  # EXACT_BELOW.bit_length() - 1

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, tokens: int) -> None:
        key = tokens
        if tokens >= self.EXACT_BELOW:
            shift = tokens.bit_length() - self._PRECISION_BITS
            key = (tokens >> shift) << shift
        self._buckets[key] = self._buckets.get(key, 0) + 1
        self.count += 1
        self.total += tokens
        if self.min is None or tokens < self.min:
            self.min = tokens
        if self.max is None or tokens > self.max:
            self.max = tokens

    def quantile(self, q: float) -> int | None:
        """The smallest count with at least `q` of all counts at or below it."""
        rank = nearest_rank(q, self.count)
        if self.min is None or self.max is None:
            return None
        key = value_at_rank(sorted(self._buckets.items()), rank)
        return min(max(key, self.min), self.max)
