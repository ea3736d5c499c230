"""A fake engine for tests and dry runs: deterministic, instant, and it fails on cue.

Shipped with the package (as httpx ships `MockTransport`) so users can test their
own pipelines around bizra-batch without a model.

Its "model" reverses the prompt: the output for prompt text T is T reversed, cut to
`max_tokens` characters; one character is one token. That makes every output a
checkable function of its input, so a test can tell a row that got its neighbour's
result from a correct one. With `n` > 1, sample k > 0 is the reversal followed by
"#k"; with `logprobs`, each character is a token of log-probability 0; with a JSON
schema, the output is the schema's smallest instance (`schema_instance`).

It pools too (`EngineRequest.pooling`), by rules as checkable: see `fake_pooled`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from batching.engine import (
    EngineDeadError,
    EngineOutOfMemoryError,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.records import ERROR_PROMPT_TOO_LONG, Sample, Sampling, TokenLogprob
from batching.tasks import Pooled, Pooling, Rerank, SegmentedIds, TextPair

__all__ = [
    "FakeEngine",
    "FakeEngineFactory",
    "expected_output",
    "fake_encode",
    "fake_pooled",
    "fake_samples",
    "schema_instance",
]


def expected_output(text: str, max_tokens: int | None) -> str:
    """The fake model's output for a prompt text.

    >>> expected_output("abc", 2)
    'cb'
    """
    reversed_text = text[::-1]
    return reversed_text if max_tokens is None else reversed_text[:max_tokens]


def _render_chat(conversation: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"{m['role']}: {_render_content(m['content'])}" for m in conversation)


def _render_content(content: Any) -> str:
    """A message's text; each image part becomes `<image>` (seven fake tokens)."""
    if not isinstance(content, list):
        return str(content)
    return "".join(
        "<image>" if part.get("type") in ("image_url", "image_pil") else str(part.get("text"))
        for part in content
    )


@dataclass(eq=False)  # identity, not value: the factory tells engines apart
class FakeEngine:
    """An `Engine` that runs `max_num_seqs` requests per step and records every step.

    Faults, all optional:
    - `poison`: a step fails (RuntimeError) while a request whose text contains one
      of these substrings is running, as a bad request can crash a real batch;
    - `flaky_steps`: step numbers (1-based, counted across the engine's life) that
      fail once with a RuntimeError, as transient faults do;
    - `die_at_step`: from this step on the engine is dead (EngineDeadError);
    - `oom_above`: a step fails with EngineOutOfMemoryError while more than this
      many requests are queued;
    - `reject`: substrings that make `add` raise PermanentRequestError;
    - `lethal`: a step kills the engine (EngineDeadError, and it stays dead) while
      a request whose text contains one of these is running, as a request that
      crashes the engine process does.
    """

    max_num_seqs: int = 8
    max_model_len: int = 4096
    poison: frozenset[str] = frozenset()
    flaky_steps: frozenset[int] = frozenset()
    die_at_step: int | None = None
    oom_above: int | None = None
    reject: frozenset[str] = frozenset()
    lethal: frozenset[str] = frozenset()
    steps: list[list[int]] = field(default_factory=list)  # keys run in each step
    added: list[int] = field(default_factory=list)  # keys in the order added
    closed: bool = False
    _queue: deque[EngineRequest] = field(default_factory=deque)
    _step_count: int = 0

    last_step_sequences: int | None = None  # sequences the last step ran

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        return fake_encode(prompts)

    def add(self, request: EngineRequest) -> None:
        self._check_alive()
        text = _decode(request.prompt_token_ids)
        if any(bad in text for bad in self.reject):
            raise PermanentRequestError("rejected by the fake engine")
        pooling = request.pooling
        if pooling is not None and (pooling.dimensions or 0) > FAKE_EMBEDDING_SIZE:
            raise PermanentRequestError(
                f"the fake model's embeddings have {FAKE_EMBEDDING_SIZE} dimensions; "
                f"dimensions={pooling.dimensions} is more"
            )
        if len(request.prompt_token_ids) >= self.max_model_len:
            raise PermanentRequestError(
                f"prompt is {len(request.prompt_token_ids)} tokens, "
                f"the model takes at most {self.max_model_len}",
                error_type=ERROR_PROMPT_TOO_LONG,
            )
        self.added.append(request.key)
        self._queue.append(request)

    def step(self) -> list[EngineOutput]:
        self._step_count += 1
        self._check_alive()
        if self.oom_above is not None and len(self._queue) > self.oom_above:
            raise EngineOutOfMemoryError(f"{len(self._queue)} requests do not fit")
        running = [self._queue[i] for i in range(min(self.max_num_seqs, len(self._queue)))]
        self.steps.append([r.key for r in running])
        self.last_step_sequences = sum(r.sampling.n or 1 for r in running)
        if self._step_count in self.flaky_steps:
            raise RuntimeError(f"transient fault at step {self._step_count}")
        if any(bad in _decode(r.prompt_token_ids) for r in running for bad in self.poison):
            raise RuntimeError("a poison request crashed the batch")
        if any(bad in _decode(r.prompt_token_ids) for r in running for bad in self.lethal):
            self.closed = True
            raise EngineDeadError("a lethal request killed the engine")
        for _ in running:
            self._queue.popleft()
        return [self._finish(r) for r in running]

    def abort(self, keys: Iterable[int]) -> None:
        drop = set(keys)
        self._queue = deque(r for r in self._queue if r.key not in drop)

    def has_unfinished(self) -> bool:
        return bool(self._queue)

    def close(self) -> None:
        self.closed = True
        self._queue.clear()

    def _check_alive(self) -> None:
        if self.closed:
            raise EngineDeadError("the fake engine was closed")
        if self.die_at_step is not None and self._step_count >= self.die_at_step:
            raise EngineDeadError(f"the fake engine died at step {self._step_count}")

    @staticmethod
    def _finish(request: EngineRequest) -> EngineOutput:
        ids = request.prompt_token_ids
        if request.pooling is not None:
            parts = ids.segments() if isinstance(ids, SegmentedIds) else [list(ids)]
            pooled = fake_pooled([_decode(part) for part in parts], request.pooling)
            return EngineOutput(request.key, "", None, len(ids), 0, pooled=pooled)
        samples = fake_samples(_decode(ids), request.sampling, adapter=request.adapter)
        return EngineOutput.of_samples(request.key, samples, len(request.prompt_token_ids))


def fake_encode(
    prompts: Sequence[str | Sequence[Mapping[str, Any]]],
) -> list[list[int] | PermanentRequestError]:
    """The fake model's tokens: one per character (a chat is rendered as `role: text`
    lines); a chat that cannot be rendered gets its error in place.

    >>> fake_encode(["hi", [{"role": "user", "content": "yo"}]])
    [[104, 105], [117, 115, 101, 114, 58, 32, 121, 111]]
    """
    encoded: list[list[int] | PermanentRequestError] = []
    for prompt in prompts:
        if isinstance(prompt, Rerank):
            encoded.append(SegmentedIds([_pair_ids(pair) for pair in prompt.pairs()]))
            continue
        if isinstance(prompt, TextPair):
            encoded.append(_pair_ids(prompt))
            continue
        try:
            text = prompt if isinstance(prompt, str) else _render_chat(prompt)
        except (KeyError, TypeError) as exc:
            encoded.append(PermanentRequestError(f"cannot render chat: {exc}"))
            continue
        encoded.append([ord(ch) for ch in text])
    return encoded


# A pair is one sequence: the query, this separator, the document.
_PAIR_SEPARATOR = "\x1f"
FAKE_EMBEDDING_SIZE = 4
FAKE_LABELS = None  # the fake classifier names no labels: a label is its index


def _pair_ids(pair: TextPair) -> list[int]:
    return [ord(ch) for ch in pair.query + _PAIR_SEPARATOR + pair.document]


def fake_pooled(texts: Sequence[str], pooling: Pooling) -> Pooled:
    """The fake model's pooled result for a row's text(s) (one text, or a rerank
    row's pairs, each "query\x1fdocument").

    - embed: `[characters, vowels, spaces, 1]`, cut to `dimensions`, then scaled
      to unit length unless `normalize` is False;
    - classify: three probabilities, the softmax of `[characters % 3, vowels % 3, 1]`;
    - score: per pair, the share of the query's distinct characters that the
      document holds (in [0, 1]).

    >>> fake_pooled(["aa b"], Pooling("embed", normalize=False)).values
    [4.0, 2.0, 1.0, 1.0]
    >>> fake_pooled(["ab\x1fbc"], Pooling("score")).values
    [0.5]
    """
    if pooling.task == "score":
        scores = []
        for text in texts:
            query, _, document = text.partition(_PAIR_SEPARATOR)
            wanted = set(query)
            scores.append(len(wanted & set(document)) / len(wanted) if wanted else 0.0)
        return Pooled(scores)
    text = texts[0]
    vowels = sum(ch in "aeiou" for ch in text)
    if pooling.task == "classify":
        logits = [len(text) % 3, vowels % 3, 1.0]
        exps = [math.exp(value) for value in logits]
        return Pooled([value / sum(exps) for value in exps], FAKE_LABELS)
    vector = [float(len(text)), float(vowels), float(text.count(" ")), 1.0]
    vector = vector[: pooling.dimensions or FAKE_EMBEDDING_SIZE]
    if pooling.normalize is not False:
        norm = math.sqrt(sum(value * value for value in vector))
        vector = [value / norm for value in vector]
    return Pooled(vector)


def fake_samples(text: str, sampling: Sampling, adapter: str | None = None) -> list[Sample]:
    """The fake model's samples for a prompt text, one per `n`.

    With a LoRA `adapter`, each output starts with its name and a colon, so a test
    can tell which adapter a row ran with.

    >>> [s.text for s in fake_samples("abc", Sampling(max_tokens=2, n=2))]
    ['cb', 'cb']
    >>> fake_samples("abc", Sampling(), adapter="sql")[0].text
    'sql:cba'
    """
    samples = []
    for number in range(sampling.n or 1):
        if sampling.json_schema is not None:
            output = orjson.dumps(schema_instance(orjson.loads(sampling.json_schema))).decode()
            finish_reason = "stop"
        else:
            # Sample k > 0 is the reversal of the prompt followed by "#k", so the
            # samples of one prompt differ and each can be checked.
            full = text[::-1] + (f"#{number}" if number else "")
            if adapter is not None:
                full = f"{adapter}:{full}"
            output = full if sampling.max_tokens is None else full[: sampling.max_tokens]
            finish_reason = "length" if len(output) < len(full) else "stop"
        logprobs = None
        if sampling.logprobs is not None:
            logprobs = tuple(_token_logprob(ch, sampling.logprobs) for ch in output)
        samples.append(Sample(output, finish_reason, len(output), logprobs))
    return samples


def _token_logprob(token: str, top: int) -> TokenLogprob:
    """The fake model is sure of its token; alternatives are the next code points."""
    alternatives = tuple((chr(ord(token) + k), float(-k)) for k in range(top))
    return TokenLogprob(token, 0.0, alternatives)


def schema_instance(schema: Any) -> Any:
    """The smallest value of a JSON Schema's type (required properties only).

    What the fake engine "generates" under structured output; enough for the
    schemas tests and dry runs use (type, properties, required, items, enum, const).

    >>> schema_instance({"type": "object", "properties": {"a": {"type": "integer"}},
    ...                  "required": ["a"]})
    {'a': 0}
    """
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {
            name: schema_instance(properties.get(name, {})) for name in schema.get("required") or []
        }
    if kind == "array":
        count = schema.get("minItems", 0)
        return [schema_instance(schema.get("items", {})) for _ in range(count)]
    minimal = {
        "string": "a" * schema.get("minLength", 0),
        "integer": 0,
        "number": 0,
        "boolean": False,
        "null": None,
    }
    return minimal.get(kind) if isinstance(kind, str) else {}


def _decode(token_ids: Sequence[int]) -> str:
    return "".join(map(chr, token_ids))


@dataclass
class FakeEngineFactory:
    """Makes FakeEngines; each restart gets the next template in `engines`, then copies
    of the last one, so a test can script "dies once, then works"."""

    engines: list[FakeEngine]
    made: list[FakeEngine] = field(default_factory=list)

    def __call__(self) -> FakeEngine:
        position = min(len(self.made), len(self.engines) - 1)
        template = self.engines[position]
        engine = template if template not in self.made else _fresh_copy(template)
        self.made.append(engine)
        return engine


def _fresh_copy(template: FakeEngine) -> FakeEngine:
    return FakeEngine(
        max_num_seqs=template.max_num_seqs,
        max_model_len=template.max_model_len,
        poison=template.poison,
        flaky_steps=template.flaky_steps,
        die_at_step=template.die_at_step,
        oom_above=template.oom_above,
        reject=template.reject,
        lethal=template.lethal,
    )
