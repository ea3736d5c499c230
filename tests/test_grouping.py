"""Submission order and the padding figure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching.grouping import padding_tokens, submission_order


def test_orders() -> None:
    lengths = [5, 1, 3, 1]
    assert submission_order(lengths, "input") == [0, 1, 2, 3]
    assert submission_order(lengths, "ascending") == [1, 3, 2, 0]  # ties keep input order
    assert submission_order(lengths, "descending") == [0, 2, 1, 3]


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="sideways"):
        submission_order([1], "sideways")  # type: ignore[arg-type]


@given(st.lists(st.integers(1, 500)), st.sampled_from(["input", "ascending", "descending"]))
def test_every_position_is_submitted_exactly_once(lengths: list[int], order: str) -> None:
    assert sorted(submission_order(lengths, order)) == list(range(len(lengths)))  # type: ignore[arg-type]


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
