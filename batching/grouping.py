"""Submission order within a window of requests, and what it saves; pure functions.

vLLM packs tokens without padding, so order matters for a different reason than on
a padding engine: requests of similar length finish together, keeping the running
batch full, and the measured effect is in the README. The padding figure in the
report says what the same grouping would save an engine that does pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = ["Order", "padding_tokens", "submission_order"]

Order = Literal["input", "ascending", "descending"]


def submission_order(lengths: Sequence[int], order: Order) -> list[int]:
    """Positions of `lengths` in the order they should go to the engine.

    The sort is stable, so rows of equal length keep their input order.

    >>> submission_order([5, 1, 3], "ascending")
    [1, 2, 0]
    """
    positions = list(range(len(lengths)))
    if order == "input":
        return positions
    if order == "ascending":
        return sorted(positions, key=lengths.__getitem__)
    if order == "descending":
        return sorted(positions, key=lambda i: -lengths[i])
    raise ValueError(f"unknown order {order!r}")


def padding_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Padding a static-batching engine adds when `lengths` run in batches of `batch_size`.

    Each batch pads every sequence to its longest one.

    >>> padding_tokens([1, 4, 2, 2], batch_size=2)
    3
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        total += max(batch) * len(batch) - sum(batch)
    return total
