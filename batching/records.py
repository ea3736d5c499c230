"""The values that flow through a run: requests in, results out.

Every input row becomes exactly one `Request` or one `InvalidRow`, and every one of
those becomes exactly one `Result`; `index` (the 0-based row position) is the key
that carries a row through grouping, the engine and the reorder buffer back to its
place in the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batching.tasks import Pooling

__all__ = [
    "ERROR_ENGINE",
    "ERROR_INVALID_INPUT",
    "ERROR_INVALID_REQUEST",
    "ERROR_PROMPT_TOO_LONG",
    "NO_SAMPLING",
    "InvalidRow",
    "Request",
    "Result",
    "Row",
    "RowError",
    "Sample",
    "Sampling",
    "TokenLogprob",
]

# Error types written into `error.type`; users filter on them, so they are stable.
ERROR_INVALID_INPUT = "invalid_input"
ERROR_PROMPT_TOO_LONG = "prompt_too_long"
ERROR_INVALID_REQUEST = "invalid_request"  # the engine rejected it (bad sampling, template)
ERROR_ENGINE = "engine_error"

# The records made once per row (Request, InvalidRow, Result, Sample) are plain
# slotted dataclasses, not frozen ones, though nothing changes them once made: a
# frozen dataclass sets each field through object.__setattr__ in its __init__, which
# measured 2.9 µs against 1.0 µs for Result's eleven fields, and the engine loop
# makes several per row. Sampling stays frozen: it is hashed, and made once per row
# at most. Treat them all as read-only.

# A chat message as it arrives: {"role": ..., "content": ...} and whatever else the
# template understands. Kept as plain mappings because templates differ per model.
Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling settings; `None` means "not set here, use the next layer's value".

    >>> Sampling(temperature=0.0).over(Sampling(max_tokens=16, temperature=1.0)).temperature
    0.0
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    # Samples per prompt; every one is kept (the output becomes a list when n > 1).
    n: int | None = None
    # Log-probabilities of this many top tokens at each generated position.
    logprobs: int | None = None
    # Structured output: the JSON text of a JSON Schema the output must match.
    # Kept as text, not a dict, so Sampling stays hashable and cheap to compare.
    json_schema: str | None = None

    def over(self, defaults: Sampling) -> Sampling:
        """Return these settings with every unset field taken from `defaults`."""
        # Runs once per row; most rows set nothing, and the merge (fields + replace)
        # was the largest cost of the engine loop in a null-engine profile.
        if self is NO_SAMPLING or self == NO_SAMPLING:
            return defaults
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(defaults, **{k: v for k, v in changes.items() if v is not None})


# The settings of a row that sets none: shared, so `over` can tell it by identity.
NO_SAMPLING = Sampling()


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Sampling))


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability, and the `top` alternatives at its place.

    >>> TokenLogprob("Hi", -0.5, (("Hi", -0.5), ("Ho", -1.2))).to_dict()["top_logprobs"][1]
    {'token': 'Ho', 'logprob': -1.2}
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's chat form (`choices[].logprobs.content[]`), so one shape serves both."""
        return {
            "token": self.token,
            "logprob": self.logprob,
            "top_logprobs": [{"token": token, "logprob": lp} for token, lp in self.top],
        }


@dataclass(slots=True)
class Sample:
    """One completion of a prompt; a request with `n` > 1 has `n` of them."""

    text: str
    finish_reason: str | None
    tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    """What went wrong with one row, as written to the output's `error` field."""

    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(slots=True)
class Request:
    """One valid input row, ready to be prepared for the engine.

    `prompt` or `messages` is set, never both. `line` is the 1-based line (JSONL) or
    row (Parquet) number, for messages that point the user at their input.
    `adapter` names the LoRA adapter the row runs with (None: the base model).
    `pooling` is set for a row of a pooling task (embed, classify, score); a score
    row's query and document(s) are its `messages` (a `tasks.TextPair` or `Rerank`).
    """

    index: int
    id: Any
    line: int
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    sampling: Sampling = NO_SAMPLING
    kept: Mapping[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    pooling: Pooling | None = None


@dataclass(slots=True)
class InvalidRow:
    """An input row that could not become a request; it still gets an output row."""

    index: int
    id: Any
    line: int
    error: RowError
    kept: Mapping[str, Any] = field(default_factory=dict)


Row = Request | InvalidRow


@dataclass(slots=True)
class Result:
    """One output row. `latency_s` is submission-to-completion inside the engine.

    With `n` > 1 samples, `output` and `finish_reason` are lists (one item a sample)
    and `completion_tokens` is their total, as OpenAI counts usage. `logprobs` is
    JSON-ready (a list of `TokenLogprob.to_dict()`, a list of such lists for n > 1),
    None unless asked for. `chat` says the row was a chat (for OpenAI output).
    `values` holds a pooling task's fields (`tasks.TASK_COLUMNS`: an embedding,
    probs and label, a score), written after `error`.
    """

    index: int
    id: Any
    output: str | list[str] | None = None
    finish_reason: str | list[str | None] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: RowError | None = None
    kept: Mapping[str, Any] = field(default_factory=dict)
    latency_s: float | None = None
    logprobs: list[Any] | None = None
    chat: bool = False
    values: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, row: Request | InvalidRow, error: RowError) -> Result:
        """The output row for a row that ends in `error`."""
        return cls(index=row.index, id=row.id, error=error, kept=row.kept)

    @classmethod
    def completed(
        cls,
        request: Request,
        samples: Sequence[Sample],
        *,
        prompt_tokens: int,
        completion_tokens: int,
        multiple: bool,
        latency_s: float | None = None,
    ) -> Result:
        """The output row of a request that finished with `samples`.

        `multiple` (the request asked for n > 1) makes `output` a list even if the
        engine gave one sample, so a row's shape depends on what was asked, not got.

        >>> row = Request(index=0, id="a", line=1, prompt="Hi")
        >>> Result.completed(row, [Sample("yo", "stop", 1)], prompt_tokens=2,
        ...                  completion_tokens=1, multiple=True).output
        ['yo']
        """
        logprobs: list[Any] | None = None
        if any(sample.logprobs is not None for sample in samples):
            per_sample = [[t.to_dict() for t in sample.logprobs or ()] for sample in samples]
            logprobs = per_sample if multiple else per_sample[0]
        first = samples[0]
        return cls(
            index=request.index,
            id=request.id,
            output=[s.text for s in samples] if multiple else first.text,
            finish_reason=[s.finish_reason for s in samples] if multiple else first.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            kept=request.kept,
            latency_s=latency_s,
            logprobs=logprobs,
            chat=request.messages is not None,
        )

    @classmethod
    def completed_one(
        cls,
        request: Request,
        text: str,
        finish_reason: str | None,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float | None = None,
    ) -> Result:
        """`completed` for the usual request: one sample, no logprobs, no Sample made.

        >>> Result.completed_one(Request(index=0, id="a", line=1, prompt="Hi"), "yo", "stop",
        ...                      prompt_tokens=2, completion_tokens=1).output
        'yo'
        """
        return cls(
            request.index,
            request.id,
            text,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            None,
            request.kept,
            latency_s,
            None,
            request.messages is not None,
        )

    @classmethod
    def pooled(
        cls,
        request: Request,
        values: dict[str, Any],
        *,
        prompt_tokens: int,
        latency_s: float | None = None,
    ) -> Result:
        """The output row of a pooling request (`values`: see `tasks.task_values`).

        >>> Result.pooled(Request(index=0, id="a", line=1, prompt="Hi"), {"embedding": [1.0]},
        ...               prompt_tokens=2).to_dict()["embedding"]
        [1.0]
        """
        return cls(
            index=request.index,
            id=request.id,
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            kept=request.kept,
            latency_s=latency_s,
            values=values,
        )

    def to_dict(self) -> dict[str, Any]:
        """The output schema: fixed fields first, then the kept input fields.

        `logprobs` follows `error` on the rows that have them.
        """
        out: dict[str, Any] = {
            "id": self.id,
            "output": self.output,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": None if self.error is None else self.error.to_dict(),
        }
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        if self.values is not None:
            out.update(self.values)
        for key, value in self.kept.items():
            out.setdefault(key, value)
        return out
