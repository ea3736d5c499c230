"""Tests for batching.quantiles: the nearest-rank definition and the two histograms'
error bounds and memory."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching.quantiles import (
    LatencyHistogram,
    TokenHistogram,
    exact_quantile,
    nearest_rank,
    value_at_rank,
)

# The histogram's buckets are 1% wide; its estimate is within half of that in theory,
# and a value on a bucket edge may round into the neighbour, so test the full width.
BUCKET_WIDTH = LatencyHistogram.RATIO - 1.0


def by_sorting(values: list[float], q: float) -> float:
    """Nearest-rank quantile as the textbook writes it, to check the package's against."""
    ordered = sorted(values)
    # Decimal q times a whole count, rounded up, without float error.
    return ordered[max(1, math.ceil(round(q * 1000) * len(ordered) / 1000 - 1e-9)) - 1]


@given(
    values=st.lists(st.floats(min_value=0.0, max_value=1e9), min_size=1, max_size=200),
    q=st.sampled_from([0.0, 0.01, 0.07, 0.25, 0.5, 0.95, 0.99, 1.0]),
)
def test_exact_quantile_is_the_textbook_nearest_rank(values: list[float], q: float) -> None:
    assert exact_quantile(values, q) == by_sorting(values, q)


def test_nearest_rank_counts_in_whole_numbers() -> None:
    # 0.07 * 100 is 7.000000000000001 in floats; the 7th value is the 7% quantile.
    assert nearest_rank(0.07, 100) == 7
    assert [nearest_rank(q, 10) for q in (0.0, 0.1, 0.11, 0.5, 1.0)] == [1, 1, 2, 5, 10]


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_a_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        nearest_rank(q, 3)


def test_value_at_rank_walks_the_counts() -> None:
    counted = [(1, 2), (5, 0), (7, 3)]
    assert [value_at_rank(counted, rank) for rank in (1, 2, 3, 5)] == [1, 1, 7, 7]
    with pytest.raises(ValueError, match="rank 6 is beyond the 5 values counted"):
        value_at_rank(counted, 6)


def test_empty_values_have_no_quantile() -> None:
    assert exact_quantile([], 0.5) is None
    assert LatencyHistogram().quantile(0.5) is None


def test_latency_histogram_single_value_is_exact() -> None:
    h = LatencyHistogram()
    h.add(0.123456)
    assert h.quantile(0.5) == 0.123456
    assert h.quantile(1.0) == 0.123456


def test_latency_histogram_ignores_bad_values_and_clamps_out_of_range() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) is None
    for bad in (math.nan, math.inf, -1.0):
        h.add(bad)
    assert h.count == 0
    for v in (0.0, 0.0, 1e7, 2e7):
        h.add(v)
    below = h.quantile(0.5)  # under 1 µs: the first bucket, so within about 1 µs
    assert below is not None and 0.0 <= below < 2e-6
    assert h.quantile(0.75) == 2e7  # beyond a day: the overflow bucket, its maximum
    assert (h.quantile(0.01), h.quantile(1.0)) == (0.0, 2e7)  # the extremes are exact
    with pytest.raises(ValueError):
        h.quantile(1.5)


def test_latency_histogram_memory_does_not_grow_with_samples() -> None:
    # Its state, measured as its pickle: fixed buckets, however many samples.
    h = LatencyHistogram()
    empty = len(pickle.dumps(h))
    rng = random.Random(1)
    for _ in range(100_000):
        h.add(rng.expovariate(2.0))
    assert len(pickle.dumps(h)) < empty + 4096  # the counts' digits, not the samples
    assert h.count == 100_000


@pytest.mark.parametrize("seed", range(5))
def test_latency_histogram_quantiles_within_a_bucket_of_exact(seed: int) -> None:
    rng = random.Random(seed)
    # Log-uniform from 1 ms to 100 s, plus a heavy tail: what request latencies do.
    values = [10 ** rng.uniform(-3, 2) for _ in range(20_000)]
    values += [rng.paretovariate(1.5) for _ in range(2_000)]
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 1.0):
        estimate = h.quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(by_sorting(values, q), rel=BUCKET_WIDTH)


@given(
    values=st.lists(st.floats(min_value=1e-6, max_value=86_400.0), min_size=1, max_size=300),
    q=st.sampled_from([0.01, 0.25, 0.5, 0.95, 1.0]),
)
def test_latency_histogram_error_bound_holds_for_any_data(values: list[float], q: float) -> None:
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    assert h.quantile(q) == pytest.approx(by_sorting(values, q), rel=BUCKET_WIDTH)


@given(st.lists(st.integers(0, TokenHistogram.EXACT_BELOW - 1), min_size=1, max_size=300))
def test_token_histogram_is_exact_for_ordinary_lengths(values: list[int]) -> None:
    h = TokenHistogram()
    for value in values:
        h.add(value)
    assert (h.count, h.total, h.min, h.max) == (len(values), sum(values), min(values), max(values))
    for q in (0.0, 0.5, 0.95, 1.0):
        assert h.quantile(q) == int(by_sorting(values, q))


@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=100))
def test_token_histogram_long_lengths_are_close_and_buckets_stay_few(values: list[int]) -> None:
    h = TokenHistogram()
    for value in values:
        h.add(value)
    for q in (0.5, 0.95):
        exact = int(by_sorting(values, q))
        found = h.quantile(q)
        assert found is not None and exact * (1 - 1 / 8192) <= found <= exact


def test_token_histogram_memory_does_not_grow_with_rows() -> None:
    # Its state, measured as its pickle: 200,000 more distinct lengths in the same
    # octaves share the buckets the first 200,000 made (one a length would double it).
    h = TokenHistogram()
    for n in range(200_000):
        h.add(TokenHistogram.EXACT_BELOW + n * 997)
    size = len(pickle.dumps(h))
    for n in range(200_000):
        h.add(TokenHistogram.EXACT_BELOW + n * 997 + 1)
    assert len(pickle.dumps(h)) < size * 1.05
    assert h.count == 400_000


def test_empty_token_histogram_has_no_quantiles() -> None:
    assert TokenHistogram().quantile(0.5) is None
