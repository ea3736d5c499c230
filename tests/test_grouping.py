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


@given(st.lists(st.integers(1, 500), max_size=200), st.integers(1, 64))
def test_sorting_by_length_never_adds_padding(lengths: list[int], batch: int) -> None:
    assert padding_tokens(sorted(lengths), batch) <= padding_tokens(lengths, batch)
