"""The engine interface every backend implements, and the errors it may raise.

The pipeline owns batching, ordering and retry; an engine only takes prepared
requests, steps, and hands back what finished. That split lets the tests drive the
whole pipeline with a fake engine (`batching.testing`) that records what it saw
and fails on cue, while `batching.engines.vllm` wraps the real one.

The interface is a streaming one (`add` / `step`) rather than `generate(list)`:
vLLM's `LLM.generate` drains the engine at the end of every call, so feeding it
chunk by chunk leaves the accelerator idle at each chunk's tail. With `add`/`step`
the pipeline tops the engine up while earlier requests are still decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from batching.records import ERROR_INVALID_REQUEST, RowError, Sample, Sampling
from batching.tasks import Pooled, Pooling

__all__ = [
    "CountsSequences",
    "EncodedPrompt",
    "Engine",
    "EngineDeadError",
    "EngineFactory",
    "EngineOutOfMemoryError",
    "EngineOutput",
    "EngineRequest",
    "PermanentRequestError",
    "Sample",
    "multimodal_of",
]


class EncodedPrompt(list[int]):
    """Token ids `Engine.encode` made, with the engine's own prepared input beside them.

    For a chat with images, `multimodal` is what the engine made of it (vLLM: the
    processed input with the pixel data); the ids already hold each image's tokens,
    so lengths, grouping and `prompt_tokens` count them. The pipeline passes it back
    in `EngineRequest.multimodal`.

    >>> ids = EncodedPrompt([1, 7, 7, 2], multimodal={"images": 1})
    >>> len(ids), ids.multimodal
    (4, {'images': 1})
    """

    __slots__ = ("multimodal",)

    def __init__(self, ids: Iterable[int], multimodal: Any = None) -> None:
        super().__init__(ids)
        self.multimodal = multimodal


def multimodal_of(ids: Sequence[int]) -> Any:
    """The engine's prepared multimodal input that came with `ids`, or None.

    >>> multimodal_of([1, 2]) is None
    True
    """
    return ids.multimodal if isinstance(ids, EncodedPrompt) else None


# Not frozen, though read-only: one of each is made per row, and a frozen dataclass's
# __init__ costs about three times as much (see `batching.records`).
@dataclass(slots=True)
class EngineRequest:
    """A request as the engine sees it: tokens and sampling, keyed by row index.

    `prompt` is the row's prompt or messages as given, for engines that cannot take
    token ids (a remote OpenAI-compatible server); local engines use the tokens.
    `adapter` names the LoRA adapter to run it with (None: the base model);
    `multimodal` is the engine's own prepared input for a prompt with images (see
    `EncodedPrompt`), None for text.
    `pooling` set asks for a pooled result (`EngineOutput.pooled`) instead of text;
    an engine that cannot pool rejects the request (PermanentRequestError).
    """

    key: int
    prompt_token_ids: Sequence[int]
    sampling: Sampling
    prompt: str | Sequence[Mapping[str, Any]] | None = None
    adapter: str | None = None
    multimodal: Any = None
    pooling: Pooling | None = None


@dataclass(slots=True)
class EngineOutput:
    """A finished request: its first sample in `text`/`finish_reason`, all in `samples`.

    With `error` set, one that failed alone (its row's record): an engine that runs
    requests independently (a remote server) reports a request it gave up on this
    way, so its neighbours are not retried with it.

    An engine that makes one sample without logprobs may leave `samples` empty;
    `all_samples()` then builds the one from the flat fields. `completion_tokens`
    counts every sample's tokens. A pooling request's result is `pooled` (its text
    empty, no completion tokens).

    >>> EngineOutput(key=0, text="yo", finish_reason="stop", prompt_tokens=2,
    ...              completion_tokens=1).all_samples()
    (Sample(text='yo', finish_reason='stop', tokens=1, logprobs=None),)
    """

    key: int
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: RowError | None = None
    samples: tuple[Sample, ...] = ()
    pooled: Pooled | None = None

    @classmethod
    def of_samples(cls, key: int, samples: Sequence[Sample], prompt_tokens: int) -> EngineOutput:
        """The output of a request that made `samples` (at least one).

        One sample without logprobs (most requests) is kept in the flat fields
        alone, `samples` left empty: the pipeline then makes the row's result
        straight from them.

        >>> EngineOutput.of_samples(0, [Sample("yo", "stop", 1)], prompt_tokens=2).samples
        ()
        """
        first = samples[0]
        only = len(samples) == 1 and first.logprobs is None
        return cls(
            key=key,
            text=first.text,
            finish_reason=first.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(sample.tokens for sample in samples),
            samples=() if only else tuple(samples),
        )

    def all_samples(self) -> tuple[Sample, ...]:
        if self.samples:
            return self.samples
        return (Sample(self.text, self.finish_reason, self.completion_tokens),)


class PermanentRequestError(Exception):
    """The request can never succeed (too long, invalid sampling): do not retry it."""

    def __init__(self, message: str, error_type: str = ERROR_INVALID_REQUEST) -> None:
        super().__init__(message)
        self.error_type = error_type


class EngineDeadError(Exception):
    """The engine is gone (crashed, process died); a new one must be started."""


class EngineOutOfMemoryError(Exception):
    """The engine ran out of memory; fewer requests in flight may succeed."""


class Engine(Protocol):
    """A streaming inference engine.

    >>> from batching.testing import FakeEngine
    >>> engine: Engine = FakeEngine()  # its "model" reverses the prompt
    >>> [ids] = engine.encode(["Hi"])
    >>> engine.add(EngineRequest(key=0, prompt_token_ids=ids, sampling=Sampling()))
    >>> while engine.has_unfinished():
    ...     for out in engine.step():
    ...         print(out.key, out.text)
    0 iH
    """

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus completion the engine accepts, in tokens."""
        ...

    @property
    def max_num_seqs(self) -> int:
        """Most requests the engine runs in one step (its batch size)."""
        ...

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        """Token ids of each prompt, in one batched call.

        A string is a plain prompt (special tokens added as `LLM.generate` would); a
        sequence of messages is a chat rendered with the model's chat template (as
        `LLM.chat` would). A prompt that cannot be encoded gets its error in place,
        so one bad row never fails its neighbours. A chat may hold decoded images
        (`batching.media`); an engine that runs them returns an `EncodedPrompt`
        whose ids include the image tokens, one that cannot gives the row its error.

        The pipeline encodes the next chunk in its own thread while the current
        one runs, so `encode` must be safe to call beside `add`, `step` and
        `abort` (never beside `close`, nor beside another `encode`).
        """
        ...

    def add(self, request: EngineRequest) -> None:
        """Queue a request. Raises PermanentRequestError for a request it rejects."""
        ...

    def step(self) -> list[EngineOutput]:
        """Run one engine step; return the requests that finished in it."""
        ...

    def abort(self, keys: Iterable[int]) -> None:
        """Drop queued or running requests (before a retry resubmits them)."""
        ...

    def has_unfinished(self) -> bool: ...

    def close(self) -> None: ...


EngineFactory = Callable[[], Engine]


@runtime_checkable
class CountsSequences(Protocol):
    """An engine that says how many sequences its last step ran (for the report's
    `engine_occupancy`); None where it cannot tell for that step.

    >>> from batching.testing import FakeEngine
    >>> isinstance(FakeEngine(), CountsSequences)
    True
    """

    @property
    def last_step_sequences(self) -> int | None: ...
