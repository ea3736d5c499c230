"""The reorder buffer releases results in input order, each exactly once."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batching.ordering import ReorderBuffer, result_bytes
from batching.records import Result


def test_holds_results_until_every_earlier_row_is_done() -> None:
    buffer = ReorderBuffer(start=10)
    buffer.push(Result(index=12, id="c"))
    buffer.push(Result(index=11, id="b"))
    assert buffer.pop_ready() == [] and len(buffer) == 2
    buffer.push(Result(index=10, id="a"))
    assert [r.id for r in buffer.pop_ready()] == ["a", "b", "c"]
    assert buffer.next_index == 13 and len(buffer) == 0


def test_a_second_result_for_a_row_is_refused() -> None:
    buffer = ReorderBuffer()
    buffer.push(Result(index=0, id=0))
    buffer.pop_ready()
    with pytest.raises(ValueError, match="already has a result"):
        buffer.push(Result(index=0, id=0))
    buffer.push(Result(index=2, id=2))
    with pytest.raises(ValueError):
        buffer.push(Result(index=2, id=2))


@given(st.integers(0, 300), st.randoms())
def test_any_completion_order_comes_out_in_input_order(size: int, rng: random.Random) -> None:
    order = list(range(size))
    rng.shuffle(order)
    buffer = ReorderBuffer()
    released: list[int] = []
    for index in order:
        buffer.push(Result(index=index, id=index))
        released += [r.index for r in buffer.pop_ready()]
    assert released == list(range(size))


def test_the_bytes_held_follow_what_waits_and_the_peak_stays() -> None:
    buffer = ReorderBuffer(start=0)
    long_text = Result(index=1, id=1, output="x" * 1000)
    samples = Result(index=2, id=2, output=["ab", "cde"])
    buffer.push(long_text)
    buffer.push(samples)
    held = result_bytes(long_text) + result_bytes(samples)
    assert buffer.held_bytes == held
    assert result_bytes(samples) == result_bytes(Result(index=0, id=0, output="abcde"))
    buffer.push(Result(index=0, id=0))
    assert len(buffer.pop_ready()) == 3
    assert (buffer.held_bytes, buffer.peak_bytes, buffer.peak_rows) == (
        0,
        held + result_bytes(Result(index=0, id=0)),
        3,
    )


def test_logprobs_count_towards_a_rows_bytes() -> None:
    entry = {"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "b", "logprob": -2}] * 3}
    plain = Result(index=0, id=0, output="a")
    with_logprobs = Result(index=0, id=0, output="a", logprobs=[entry, entry])
    several = Result(index=0, id=0, output="a", logprobs=[[entry], [entry]])
    # Each entry a token and three alternatives; per sample or flat, the same count.
    assert result_bytes(with_logprobs) - result_bytes(plain) == 2 * (200 + 3 * 60)
    assert result_bytes(several) == result_bytes(with_logprobs)
