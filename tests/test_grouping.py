"""Submission order and the padding figure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching.grouping import (
    PREFIX_TOKENS,
    choose_order,
    padding_tokens,
    prefix_groups,
    submission_order,
)

ORDERS = ["auto", "input", "length", "prefix", "ascending", "descending"]


def prompts_of_lengths(lengths: list[int]) -> list[list[int]]:
    # Distinct first tokens: no two prompts share a prefix.
    return [[1000 + i] * n for i, n in enumerate(lengths)]


def test_length_orders() -> None:
    prompts = prompts_of_lengths([5, 1, 3, 1])
    assert submission_order(prompts, "input") == [0, 1, 2, 3]
    assert submission_order(prompts, "length") == [1, 3, 2, 0]  # ties keep input order
    assert submission_order(prompts, "ascending") == [1, 3, 2, 0]
    assert submission_order(prompts, "descending") == [0, 2, 1, 3]


def test_prefix_order_puts_rows_sharing_a_prefix_together_shortest_first() -> None:
    a = [7] * PREFIX_TOKENS
    b = [8] * PREFIX_TOKENS
    prompts = [[*a, 1, 2, 3], [*b, 1], [*a, 1], [9], [*b, 4, 4, 4, 4], [*a, 5, 5]]
    # Groups in order of first appearance: a (rows 0, 2, 5), b (1, 4), then [9].
    assert submission_order(prompts, "prefix") == [2, 5, 0, 1, 4, 3]


def test_rows_that_differ_within_the_prefix_window_are_not_grouped() -> None:
    shared = [7] * (PREFIX_TOKENS - 1)
    prompts = [[*shared, 1, 5, 5], [*shared, 2, 5]]
    assert prefix_groups(prompts) == [[0], [1]]
    assert choose_order(prompts, "auto") == "length"


def test_auto_groups_by_prefix_only_when_enough_rows_share_one() -> None:
    preamble = [3] * PREFIX_TOKENS
    unique = prompts_of_lengths([10] * 8)
    # 2 of 10 rows share a prefix (20%, under PREFIX_SHARE): sort by length.
    assert choose_order([[*preamble, 1], [*preamble, 2], *unique], "auto") == "length"
    # 4 of 10 (40%): group by prefix.
    many = [[*preamble, i] for i in range(4)]
    assert choose_order([*many, *unique[:6]], "auto") == "prefix"
    assert choose_order([], "auto") == "length"


def test_a_fixed_order_is_kept_whatever_the_chunk() -> None:
    same = [[1] * PREFIX_TOKENS] * 4
    assert choose_order(same, "input") == "input"
    assert choose_order(same, "length") == "length"
    assert choose_order(prompts_of_lengths([1, 2]), "prefix") == "prefix"


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="sideways"):
        submission_order([[1]], "sideways")  # type: ignore[arg-type]


@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), max_size=40),
    st.sampled_from(ORDERS),
    st.integers(1, 4),
)
def test_every_position_is_submitted_exactly_once(
    prompts: list[list[int]], order: str, prefix_tokens: int
) -> None:
    positions = submission_order(prompts, order, prefix_tokens)  # type: ignore[arg-type]
    assert sorted(positions) == list(range(len(prompts)))


@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=5), max_size=40))
def test_prefix_order_makes_each_group_contiguous(prompts: list[list[int]]) -> None:
    keys = [
        tuple(p[:2])
        for p in submission_order(prompts, "prefix", prefix_tokens=2)
        for p in [prompts[p]]
    ]
    seen_done: set[tuple[int, ...]] = set()
    for previous, key in zip([None, *keys], keys, strict=False):
        if key != previous:
            assert key not in seen_done, "a prefix group was split"
            if previous is not None:
                seen_done.add(previous)


def test_padding_is_what_each_batch_pads_to_its_longest() -> None:
    assert padding_tokens([1, 4, 2, 2], batch_size=2) == 3
    assert padding_tokens([1, 2, 2, 4], batch_size=2) == 3
    assert padding_tokens([], batch_size=8) == 0
    with pytest.raises(ValueError):
        padding_tokens([1], batch_size=0)


@given(st.integers(1, 16), st.integers(0, 12), st.data())
def test_with_full_batches_sorting_never_adds_padding(
    batch: int, batches: int, data: st.DataObject
) -> None:
    # With full batches a sorted order is optimal: each batch's maximum is as small
    # as it can be. A partial last batch breaks this either way (below), so the
    # report's figure can be negative for a chunk where grouping costs padding.
    lengths = data.draw(
        st.lists(st.integers(1, 500), min_size=batch * batches, max_size=batch * batches)
    )
    for ordered in (sorted(lengths), sorted(lengths, reverse=True)):
        assert padding_tokens(ordered, batch) <= padding_tokens(lengths, batch)


def test_a_partial_last_batch_can_make_sorting_cost_padding() -> None:
    # Found by hypothesis: sorted either way, the odd row lands in a full batch.
    assert padding_tokens([2, 2, 1], 2) == 0 < padding_tokens([1, 2, 2], 2)
    assert padding_tokens([1, 1, 1, 2], 3) == 0 < padding_tokens([2, 1, 1, 1], 3)
