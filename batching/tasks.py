"""What a run does with each row: generate text, embed it, classify it, or score a pair.

The task is chosen once per run (`InputConfig.task`, from `--task`, a config file or
Python) and decides three things, all here:

- what a row holds (`row_texts`): `generate` reads a prompt or messages as ever;
  `embed` and `classify` read the prompt (or `input`, or the template's text);
  `score` reads `text_1` and `text_2`, or `query` and `documents` (a rerank row);
- what the engine runs (`Pooling`): vLLM's pooling runner with the task always set,
  since its default pooling task returns one vector per token;
- what an output row gains (`TASK_COLUMNS`, `task_values`): `embedding`; `probs`
  and `label`; `score`, or `scores` for a rerank row (one per document, in order).

A pair reaches the engine as a `TextPair` and a rerank row as a `Rerank`: sequences
of `{"role": "query" | "document", "content": ...}` messages (vLLM's own score
template roles), so the `Engine.encode` signature is unchanged and engines that
never score need nothing new. An engine that scores tokenizes each pair together
(one sequence, as a cross-encoder reads it); a rerank row's pairs come back as
`SegmentedIds`, one flat id list that still reads as the row's tokens for grouping,
with the length of each pair, so one row stays one engine request and one output row.

>>> row_texts({"text_1": "cats", "text_2": "dogs"}, "score", "prompt")
(TextPair(query='cats', document='dogs'), None)
>>> task_values("classify", Pooled([0.2, 0.8], labels=("no", "yes")), rerank=False)
{'probs': [0.2, 0.8], 'label': 'yes'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from batching.errors import UsageError
from batching.sampling_rules import message as _message

__all__ = [
    "POOLING_TASKS",
    "TASKS",
    "TASK_COLUMNS",
    "Pooled",
    "Pooling",
    "Rerank",
    "SegmentedIds",
    "Task",
    "TextPair",
    "check_task",
    "request_texts",
    "row_fields",
    "row_texts",
    "task_values",
]

Task = Literal["generate", "embed", "classify", "score"]
TASKS: tuple[Task, ...] = get_args(Task)
POOLING_TASKS: frozenset[str] = frozenset(("embed", "classify", "score"))

# The columns each task adds to an output row, after `error`, in this order.
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "generate": (),
    "embed": ("embedding",),
    "classify": ("probs", "label"),
    "score": ("score", "scores"),
}

# What vLLM's PoolingParams(task=...) is for each of ours: a cross-encoder scores
# with its classification head (one label), as LLM.score does.
VLLM_POOLING_TASK: dict[str, str] = {"embed": "embed", "classify": "classify", "score": "classify"}


def check_task(value: str) -> Task:
    """`value` as a task; a usage error naming the choices otherwise.

    >>> check_task("embed")
    'embed'
    >>> check_task("rank")
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: unknown task 'rank'; use generate, embed, classify or score
    """
    for task in TASKS:
        if value == task:
            return task
    raise UsageError(f"unknown task {value!r}; use generate, embed, classify or score")


@dataclass(frozen=True, slots=True)
class Pooling:
    """How one row is pooled: the task, the run's `normalize`, the row's `dimensions`.

    `normalize` None keeps the model's default (vLLM normalizes embeddings); it is
    vLLM's `use_activation` (softmax or sigmoid for classify and score).

    >>> Pooling("embed", normalize=False).task
    'embed'
    """

    task: Task
    normalize: bool | None = None
    dimensions: int | None = None


class TextPair(tuple[Mapping[str, Any], ...]):
    """A query and a document to score together, as two score-template messages."""

    __slots__ = ()

    def __new__(cls, query: str, document: str) -> TextPair:
        return super().__new__(
            cls, ({"role": "query", "content": query}, {"role": "document", "content": document})
        )

    @property
    def query(self) -> str:
        return str(self[0]["content"])

    @property
    def document(self) -> str:
        return str(self[1]["content"])

    def __repr__(self) -> str:
        return f"TextPair(query={self.query!r}, document={self.document!r})"


class Rerank(tuple[Mapping[str, Any], ...]):
    """A query and the documents to score it against, each pair on its own.

    >>> Rerank("q", ["a", "b"]).pairs()
    [TextPair(query='q', document='a'), TextPair(query='q', document='b')]
    """

    __slots__ = ()

    def __new__(cls, query: str, documents: Sequence[str]) -> Rerank:
        messages = [{"role": "query", "content": query}]
        messages += [{"role": "document", "content": d} for d in documents]
        return super().__new__(cls, messages)

    @property
    def query(self) -> str:
        return str(self[0]["content"])

    @property
    def documents(self) -> list[str]:
        return [str(m["content"]) for m in self[1:]]

    def __repr__(self) -> str:
        return f"Rerank(query={self.query!r}, documents={self.documents!r})"

    def pairs(self) -> list[TextPair]:
        return [TextPair(self.query, document) for document in self.documents]


class SegmentedIds(list[int]):
    """The token ids of several sequences run as one row (a rerank row's pairs, or a
    pair with token type ids).

    A list of all the ids, so the pipeline's grouping and length checks see the
    row's whole cost; `lengths` says where each sequence ends.

    >>> ids = SegmentedIds([[1, 2], [3]])
    >>> list(ids), ids.segments()
    ([1, 2, 3], [[1, 2], [3]])
    """

    lengths: tuple[int, ...]
    # Per sequence, the token type ids a BERT-style cross-encoder reads beside the
    # ids (which side of the pair each token is on), or None.
    token_type_ids: tuple[list[int] | None, ...]

    def __init__(
        self,
        parts: Sequence[Sequence[int]],
        token_type_ids: Sequence[list[int] | None] | None = None,
    ) -> None:
        super().__init__(token for part in parts for token in part)
        self.lengths = tuple(len(part) for part in parts)
        self.token_type_ids = tuple(token_type_ids or [None] * len(parts))

    def segments(self) -> list[list[int]]:
        out: list[list[int]] = []
        start = 0
        for length in self.lengths:
            out.append(self[start : start + length])
            start += length
        return out


@dataclass(slots=True)
class Pooled:
    """An engine's pooled result for a row: the vector, or a rerank row's scores.

    `labels` are the model's class names (its `id2label`), for a classify row's label.
    """

    values: list[float]
    labels: Sequence[str] | None = None

    def label(self) -> str:
        """The most probable class, by name where the model names it.

        >>> Pooled([0.1, 0.7, 0.2]).label()
        '1'
        """
        best = max(range(len(self.values)), key=self.values.__getitem__)
        if self.labels is not None and best < len(self.labels):
            return self.labels[best]
        return str(best)


def task_values(task: str, pooled: Pooled, *, rerank: bool) -> dict[str, Any]:
    """The output fields a finished row of `task` adds (see `TASK_COLUMNS`).

    >>> task_values("score", Pooled([0.9, 0.1]), rerank=True)
    {'scores': [0.9, 0.1]}
    """
    if task == "embed":
        return {"embedding": pooled.values}
    if task == "classify":
        return {"probs": pooled.values, "label": pooled.label()}
    if rerank:
        return {"scores": pooled.values}
    return {"score": pooled.values[0]}


def request_texts(
    texts: str | TextPair | Rerank | None,
) -> tuple[str | None, tuple[Mapping[str, Any], ...] | None]:
    """A pooling row's text as a `Request`'s `prompt` and `messages`: a plain text is
    the prompt; a pair or rerank row goes in `messages`.

    >>> request_texts(TextPair("a", "b"))[0] is None
    True
    """
    if isinstance(texts, (TextPair, Rerank)):
        return None, texts
    return texts, None


def row_fields(task: str, prompt_field: str) -> tuple[str, ...]:
    """The fields a pooling row of `task` may read (a Parquet reader decodes only these).

    >>> row_fields("embed", "text")
    ('text', 'input', 'dimensions')
    """
    if task == "score":
        return ("text_1", "text_2", "query", "documents")
    return (prompt_field, "input", "dimensions")


def row_texts(
    obj: Mapping[str, Any], task: str, prompt_field: str, where: str = ""
) -> tuple[str | TextPair | Rerank | None, str | None]:
    """A pooling row's text (`prompt_field`, else `input`), pair or rerank; or a problem.

    >>> row_texts({"input": "hi"}, "embed", "prompt")
    ('hi', None)
    >>> row_texts({"query": "q", "documents": []}, "score", "prompt", "p:1")[1]
    "p:1: field 'documents': expected a non-empty list of strings, found a list of 0 items"
    """
    if task != "score":
        name = prompt_field if prompt_field in obj or "input" not in obj else "input"
        text = obj.get(name)
        if text is None:
            return None, (
                f"{where}: no {prompt_field!r} or 'input' field; set --prompt-field if the "
                "text is under another name"
            )
        if not isinstance(text, str) or not text:
            return None, _message(where, name, "a non-empty string", text)
        return text, None
    if "query" in obj or "documents" in obj:
        query, documents = obj.get("query"), obj.get("documents")
        if not isinstance(query, str) or not query:
            return None, _message(where, "query", "a non-empty string", query)
        if (
            not isinstance(documents, list)
            or not documents
            or not all(isinstance(d, str) and d for d in documents)
        ):
            expected = "a non-empty list of strings"
            return None, _message(where, "documents", expected, documents)
        return Rerank(query, documents), None
    first, second = obj.get("text_1"), obj.get("text_2")
    if first is None and second is None:
        return None, (
            f"{where}: a score row needs 'text_1' and 'text_2' (a query and a document), "
            "or 'query' and 'documents'"
        )
    for name, value in (("text_1", first), ("text_2", second)):
        if not isinstance(value, str) or not value:
            return None, _message(where, name, "a non-empty string", value)
    assert isinstance(first, str) and isinstance(second, str)
    return TextPair(first, second), None
