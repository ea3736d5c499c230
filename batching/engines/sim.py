"""A model-free engine that keeps an accelerator's time: `--engine sim`.

On a 2-core CPU the tiny model is slow and the engine never waits for us; on a GPU
it finishes hundreds to thousands of requests a second and our own pipeline becomes
what it waits for. `SimEngine` shows that pace on any machine: it schedules like
vLLM's continuous batching and *sleeps* for each step as long as a GPU would take,
releasing the GIL as a process waiting on a device does. A user can rehearse a big
job's input, output and timing with it before renting GPUs; we measure the pipeline
with it (`benchmarks/gpu_pace.py`).

Its rules, exactly (the benchmark derives the shortest possible time from them):

- Tokens and output text are the fake engine's (`batching.testing`: one prompt
  character is one token). A request runs for exactly its `max_tokens` steps and
  reports that many completion tokens, with `n` sequences when n > 1.
- Each step first admits waiting requests, in the order they were added, while
  fewer than `max_num_seqs` sequences run and the prompt tokens admitted in this
  step stay within `max_num_batched_tokens` (a longer prompt is admitted alone).
  Then it sleeps `step_ms + prefill_us_per_token * admitted prompt tokens / 1000`
  milliseconds, and every running sequence gains one token; those that reach
  `max_tokens` finish in that step.
- Its own bookkeeping per step is proportional to what it admits and finishes, not
  to what runs: a request's finishing step is known when it is admitted.

So a file cannot take less than `max(ceil(sum max_tokens / max_num_seqs),
max(max_tokens)) * step_ms + sum prompt tokens * prefill_us_per_token` (`bound_s`).

The defaults, 15 ms a step and 30 µs a prompt token, are an 8B model on one H100 at
batch 256: decoding reads 16 GB of bf16 weights per step at ~3 TB/s (~5 ms) plus the
KV cache of 256 sequences, and prefill costs 2 x 8e9 FLOP a token at ~500 TFLOP/s
effective (~30 µs).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from batching.config import EngineConfig
from batching.engine import EngineOutput, EngineRequest, PermanentRequestError
from batching.errors import UsageError
from batching.records import ERROR_PROMPT_TOO_LONG, Sample
from batching.testing import fake_encode, fake_samples

__all__ = ["SIM_DEFAULTS", "SimEngine", "bound_seconds", "sim_engine_factory"]

# The defaults of the settings `--engine-arg` may change, by name.
SIM_DEFAULTS: Mapping[str, float] = {"step_ms": 15.0, "prefill_us_per_token": 30.0}
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_MAX_MODEL_LEN = 131_072


@dataclass(slots=True)
class _Admitted:
    request: EngineRequest
    sequences: int
    steps: int


@dataclass(eq=False)
class SimEngine:
    """An `Engine` that schedules like vLLM and takes a GPU's time per step.

    >>> from batching.records import Sampling
    >>> engine = SimEngine(max_num_seqs=2, step_ms=0, prefill_us_per_token=0)
    >>> engine.add(EngineRequest(0, [97, 98, 99], Sampling(max_tokens=2)))
    >>> engine.step(), [out.text for out in engine.step()]
    ([], ['cb'])
    """

    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    step_ms: float = SIM_DEFAULTS["step_ms"]
    prefill_us_per_token: float = SIM_DEFAULTS["prefill_us_per_token"]
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    sleep: Callable[[float], None] = time.sleep
    last_step_sequences: int | None = None  # sequences the last step ran
    steps: int = 0
    _waiting: deque[EngineRequest] = field(default_factory=deque)
    # Requests by the step they finish in, and the live ones by key: a step touches
    # only what it admits and what finishes in it, never every running sequence.
    _finishing: dict[int, list[_Admitted]] = field(default_factory=dict)
    _live: dict[int, _Admitted] = field(default_factory=dict)
    _running: int = 0

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        return fake_encode(prompts)

    def add(self, request: EngineRequest) -> None:
        prompt_tokens = len(request.prompt_token_ids)
        if prompt_tokens >= self.max_model_len:
            raise PermanentRequestError(
                f"prompt is {prompt_tokens} tokens, the model takes at most {self.max_model_len}",
                error_type=ERROR_PROMPT_TOO_LONG,
            )
        self._waiting.append(request)

    def step(self) -> list[EngineOutput]:
        self.steps += 1
        admitted_tokens = self._admit()
        self.last_step_sequences = self._running
        self.sleep((self.step_ms + self.prefill_us_per_token * admitted_tokens / 1000.0) / 1000.0)
        outputs: list[EngineOutput] = []
        for done in self._finishing.pop(self.steps, ()):
            if self._live.get(done.request.key) is not done:
                continue  # aborted while it ran
            del self._live[done.request.key]
            self._running -= done.sequences
            outputs.append(_output(done))
        return outputs

    def _admit(self) -> int:
        admitted_tokens = 0
        waiting = self._waiting
        while waiting:
            request = waiting[0]
            sequences = request.sampling.n or 1
            if self._running and self._running + sequences > self.max_num_seqs:
                break
            tokens = len(request.prompt_token_ids)
            if admitted_tokens and admitted_tokens + tokens > self.max_num_batched_tokens:
                break
            waiting.popleft()
            admitted_tokens += tokens
            steps = _steps(request, self.max_model_len)
            admitted = _Admitted(request, sequences, steps)
            self._finishing.setdefault(self.steps + steps - 1, []).append(admitted)
            self._live[request.key] = admitted
            self._running += sequences
        return admitted_tokens

    def abort(self, keys: Iterable[int]) -> None:
        drop = set(keys)
        if self._waiting:
            self._waiting = deque(r for r in self._waiting if r.key not in drop)
        for key in drop:
            admitted = self._live.pop(key, None)
            if admitted is not None:
                self._running -= admitted.sequences

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._live)

    def close(self) -> None:
        self._waiting.clear()
        self._finishing.clear()
        self._live.clear()
        self._running = 0


def _steps(request: EngineRequest, max_model_len: int) -> int:
    max_tokens = request.sampling.max_tokens
    if max_tokens is None:  # as vLLM: up to the model's length
        max_tokens = max_model_len - len(request.prompt_token_ids)
    return max(1, max_tokens)


def _output(done: _Admitted) -> EngineOutput:
    request = done.request
    text = "".join(map(chr, request.prompt_token_ids))
    # The fake model's text, but every sample ran its full `max_tokens` steps.
    samples = [
        Sample(s.text, "length", done.steps, s.logprobs)
        for s in fake_samples(text, request.sampling)
    ]
    return EngineOutput.of_samples(request.key, samples, len(request.prompt_token_ids))


def sim_engine_factory(config: EngineConfig) -> Callable[[], SimEngine]:
    """The factory `--engine sim` runs: sizes from the engine options, timings from
    `--engine-arg step_ms=…` / `prefill_us_per_token=…`.

    A picklable `functools.partial`, so Ray replicas can build their own.

    >>> sim_engine_factory(EngineConfig(model="sim", max_num_seqs=1024))().max_num_seqs
    1024
    >>> sim_engine_factory(EngineConfig(model="sim", extra={"step": 1}))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --engine-arg step: the sim engine takes step_ms, ...
    """
    timings: dict[str, float] = dict(SIM_DEFAULTS)
    for key, value in config.extra.items():
        if key not in SIM_DEFAULTS:
            raise UsageError(f"--engine-arg {key}: the sim engine takes {', '.join(SIM_DEFAULTS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise UsageError(f"--engine-arg {key}={value}: must be a number of at least 0")
        if math.isinf(value):
            raise UsageError(f"--engine-arg {key}={value}: must be finite")
        timings[key] = float(value)
    return partial(
        SimEngine,
        max_num_seqs=config.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        max_num_batched_tokens=config.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS,
        max_model_len=config.max_model_len or DEFAULT_MAX_MODEL_LEN,
        step_ms=timings["step_ms"],
        prefill_us_per_token=timings["prefill_us_per_token"],
    )


def bound_seconds(
    max_tokens: Sequence[int],
    prompt_tokens: Sequence[int],
    *,
    max_num_seqs: int,
    step_ms: float = SIM_DEFAULTS["step_ms"],
    prefill_us_per_token: float = SIM_DEFAULTS["prefill_us_per_token"],
    replicas: int = 1,
) -> float:
    """The shortest time the sim can run these requests in, over `replicas` engines.

    `max(ceil(sum max_tokens / (replicas * max_num_seqs)), max(max_tokens)) * step_ms
    + sum prompt tokens * prefill_us_per_token / replicas`.

    >>> bound_seconds([10, 20], [100, 100], max_num_seqs=1, step_ms=10,
    ...               prefill_us_per_token=10)
    0.302
    """
    if not max_tokens:
        return 0.0
    capacity = replicas * max_num_seqs
    steps = max(math.ceil(sum(max_tokens) / capacity), max(max_tokens))
    return (steps * step_ms + sum(prompt_tokens) * prefill_us_per_token / 1000.0 / replicas) / 1000
