"""Submission order within a chunk of requests, and what it saves; pure functions.

Two things decide how fast vLLM gets through a chunk, and the order can help both:

- **Length.** vLLM packs tokens without padding, but requests of similar length
  finish together, keeping the running batch full; on the CPU backend a step also
  costs more when its sequences differ in length (measured in the README).
- **Shared prefixes.** vLLM's prefix cache is LRU. In input order, rows that share a
  system prompt or few-shot preamble are spread out, and once the distinct preambles
  outgrow the KV cache each is evicted before its next row comes round, so it is
  prefilled again. Submitting the rows that share a prefix one after another
  prefills it once per chunk.

`prefix` groups rows whose first `PREFIX_TOKENS` tokens are equal (groups in order of
first appearance, shortest row first within a group); `length` sorts the chunk by
length; `auto` looks at the chunk and picks `prefix` when enough of its rows repeat
a leading-token key (`PREFIX_SHARE`), else `length`. Results go back to input order
in the reorder buffer whatever the order.

Rows that run with a LoRA adapter are grouped by adapter within the chunk (base-model
rows first), keeping the chosen order inside each group: a vLLM step costs more the
more distinct adapters its batch holds (each one's LoRA matrices are applied
separately), so rows that share an adapter should share steps.

The padding figure in the report says what the same order would save an engine
that does pad.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

__all__ = [
    "PREFIX_SHARE",
    "PREFIX_TOKENS",
    "ChunkOrder",
    "Order",
    "by_adapter",
    "choose_order",
    "padding_tokens",
    "plan_order",
    "prefix_groups",
    "submission_order",
]

Order = Literal["auto", "input", "length", "prefix", "ascending", "descending"]
"""`ascending` is `length` under its older name; `descending` is longest first."""

ChunkOrder = Literal["input", "length", "prefix", "descending"]
"""What a chunk is actually ordered by, once `auto` has chosen."""

# Rows are grouped by their first 64 tokens. Shorter keys would group rows that share
# only a chat template's header (~20 tokens, less than one KV block: nothing to
# reuse); longer ones would split preambles a user varies near their end. 64 is four
# 16-token KV blocks, half the CPU backend's 128-token block.
PREFIX_TOKENS = 64

# `auto` groups by prefix when at least this share of a chunk's rows have a key
# another row of the chunk has too. Below it grouping gains little and costs the
# length order its benefit for the rest of the chunk.
PREFIX_SHARE = 0.25


def prefix_groups(
    prompts: Sequence[Sequence[int]], prefix_tokens: int = PREFIX_TOKENS
) -> list[list[int]]:
    """Positions of `prompts` grouped by their first `prefix_tokens` tokens.

    Groups come in order of first appearance; positions within one in input order.

    >>> prefix_groups([[1, 2, 9], [5], [1, 2, 7]], prefix_tokens=2)
    [[0, 2], [1]]
    """
    groups: dict[Hashable, list[int]] = {}
    for position, token_ids in enumerate(prompts):
        key: Hashable = tuple(token_ids[:prefix_tokens])
        group = groups.get(key)
        if group is None:
            groups[key] = [position]
        else:
            group.append(position)
    return list(groups.values())


def _groups_shared_enough(groups: list[list[int]], rows: int) -> bool:
    shared = sum(len(g) for g in groups if len(g) > 1)
    return rows > 0 and shared >= PREFIX_SHARE * rows


def _fixed(order: Order) -> ChunkOrder | None:
    """The concrete order `order` names; None for `auto`."""
    if order == "ascending":
        return "length"
    if order in ("input", "length", "prefix", "descending"):
        return order
    if order == "auto":
        return None
    raise ValueError(f"unknown order {order!r}")


def choose_order(
    prompts: Sequence[Sequence[int]], order: Order, prefix_tokens: int = PREFIX_TOKENS
) -> ChunkOrder:
    """The order a chunk is submitted in: `order` itself, or `auto`'s choice.

    >>> choose_order([[1, 2, 3], [1, 2, 4], [9]], "auto", prefix_tokens=2)
    'prefix'
    >>> choose_order([[1, 2, 3], [7, 2, 4], [9]], "auto", prefix_tokens=2)
    'length'
    """
    return plan_order(prompts, order, prefix_tokens)[0]


def submission_order(
    prompts: Sequence[Sequence[int]], order: Order, prefix_tokens: int = PREFIX_TOKENS
) -> list[int]:
    """Positions of `prompts` (token ids) in the order they should go to the engine.

    Every sort is stable, so rows that tie keep their input order.

    >>> submission_order([[1] * 5, [2], [3] * 3], "length")
    [1, 2, 0]
    >>> submission_order([[1, 1, 1], [2], [1, 1]], "prefix", prefix_tokens=1)
    [2, 0, 1]
    """
    return plan_order(prompts, order, prefix_tokens)[1]


def plan_order(
    prompts: Sequence[Sequence[int]],
    order: Order,
    prefix_tokens: int = PREFIX_TOKENS,
    adapters: Sequence[str | None] | None = None,
) -> tuple[ChunkOrder, list[int]]:
    """`choose_order` and `submission_order` in one pass (the prefix keys once).

    `adapters` (each prompt's LoRA adapter, None for the base model) groups the
    order by adapter, base model first, then adapters as they first come.

    >>> plan_order([[1, 2], [1, 3], [9]], "auto", prefix_tokens=1)
    ('prefix', [0, 1, 2])
    >>> plan_order([[1, 1], [2], [3, 3, 3], [4]], "length", adapters=["b", None, "a", "b"])
    ('length', [1, 3, 0, 2])
    """
    chosen, positions = _plan_order(prompts, order, prefix_tokens)
    if adapters is not None and any(adapter is not None for adapter in adapters):
        positions = by_adapter(positions, adapters)
    return chosen, positions


def by_adapter(positions: Sequence[int], adapters: Sequence[str | None]) -> list[int]:
    """`positions` grouped by their adapter, base model (None) first; stable.

    >>> by_adapter([0, 1, 2, 3], ["a", None, "b", "a"])
    [1, 0, 3, 2]
    """
    groups: dict[str | None, list[int]] = {None: []}
    for position in positions:
        groups.setdefault(adapters[position], []).append(position)
    return [position for group in groups.values() for position in group]


def _plan_order(
    prompts: Sequence[Sequence[int]], order: Order, prefix_tokens: int
) -> tuple[ChunkOrder, list[int]]:
    chosen = _fixed(order)
    groups: list[list[int]] | None = None
    if chosen is None:
        groups = prefix_groups(prompts, prefix_tokens)
        chosen = "prefix" if _groups_shared_enough(groups, len(prompts)) else "length"
    positions = range(len(prompts))
    if chosen == "input":
        return chosen, list(positions)
    if chosen == "length":
        return chosen, sorted(positions, key=lambda i: len(prompts[i]))
    if chosen == "descending":
        return chosen, sorted(positions, key=lambda i: -len(prompts[i]))
    if groups is None:
        groups = prefix_groups(prompts, prefix_tokens)
    return chosen, [
        position
        for group in groups
        for position in (sorted(group, key=lambda i: len(prompts[i])) if len(group) > 1 else group)
    ]


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
