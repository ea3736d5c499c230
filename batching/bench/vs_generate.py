"""`bench --vs-generate`: the same rows through one raw `LLM.generate` call and
through `run`'s pipeline, on one engine, to show what the tool costs a user against
the call they would otherwise write.

Both sides share the engine `bench` started (one model load, one KV cache, engine
settings identical by construction), run the same rows with the same settings (the
run's defaults under each row's own), and are warmed up the same way: each side's
own path over the first rows, untimed, just before its measured run. The pipeline
side is `run_rows` with `run`'s defaults, as in `bench`'s pipeline row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batching.bench.sweep import (
    BenchRow,
    Prompt,
    Workload,
    encode_prompts,
    prompt_of,
    run_through_pipeline,
)
from batching.config import RunConfig
from batching.engine import Engine, EngineOutput
from batching.records import Request, Sampling

__all__ = [
    "SHARED_ENGINE",
    "WARMUP_PROMPTS",
    "GenerateAll",
    "VsGenerateResult",
    "raw_generate",
    "run_through_generate",
    "run_vs_generate",
]

# The raw side: every prompt, each with its own settings, in one call; outputs in
# prompt order.
GenerateAll = Callable[[Engine, Sequence[Prompt], Sequence[Sampling]], Sequence[EngineOutput]]

WARMUP_PROMPTS = 8


# Shown with the table, so a reader knows what the two sides share.
SHARED_ENGINE = "one engine, loaded once: LLM.generate runs on the vllm.LLM the pipeline drives"


@dataclass(frozen=True, slots=True)
class VsGenerateResult:
    """The same rows through one raw `LLM.generate` call and through `run`'s pipeline.

    The ratios are the pipeline's throughput over `LLM.generate`'s (above 1.0: the
    pipeline is faster).
    """

    workload: Workload
    warmup_prompts: int
    generate: BenchRow
    pipeline: BenchRow
    engine: str = SHARED_ENGINE
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows_ratio(self) -> float:
        return self.pipeline.requests_per_second / self.generate.requests_per_second

    @property
    def output_tokens_ratio(self) -> float:
        if self.generate.output_tokens_per_second == 0:
            return math.nan
        return self.pipeline.output_tokens_per_second / self.generate.output_tokens_per_second

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.workload.to_dict(),
            "warmup_prompts": self.warmup_prompts,
            "engine": self.engine,
            "settings": dict(self.settings),
            "rows": [row.to_dict() for row in (self.generate, self.pipeline)],
            "pipeline_over_generate": {
                "requests_per_second": round(self.rows_ratio, 4),
                "output_tokens_per_second": round(self.output_tokens_ratio, 4),
            },
        }


def raw_generate(
    engine: Engine, prompts: Sequence[Prompt], samplings: Sequence[Sampling]
) -> list[EngineOutput]:
    """Every prompt in one `LLM.generate` call on the vLLM engine's own `vllm.LLM`.

    >>> outputs = raw_generate(engine, ["Hello"], [Sampling(max_tokens=4)])  # doctest: +SKIP
    >>> outputs[0].completion_tokens  # doctest: +SKIP
    4
    """
    # batching.engines.vllm imports vllm only inside its functions.
    from batching.engines.vllm import VllmEngine, generate_all

    if not isinstance(engine, VllmEngine):
        raise TypeError(f"LLM.generate needs the vLLM engine, not {type(engine).__name__}")
    return generate_all(engine, prompts, samplings)


def run_through_generate(
    engine: Engine,
    requests: Sequence[Request],
    sampling: Sampling,
    generate: GenerateAll = raw_generate,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchRow:
    """The rows through one `generate` call, each with its settings over `sampling`."""
    prompts = [prompt_of(request) for request in requests]
    samplings = [request.sampling.over(sampling) for request in requests]
    started = clock()
    outputs = generate(engine, prompts, samplings)
    wall = clock() - started
    return BenchRow(
        label="LLM.generate",
        batch_size=None,
        requests=len(requests),
        wall_seconds=wall,
        output_tokens=sum(output.completion_tokens for output in outputs),
        latency_p50_ms=None,  # one call: no request's own finish time is seen
        latency_p95_ms=None,
    )


def run_vs_generate(
    engine: Engine,
    requests: Sequence[Request],
    sampling: Sampling,
    pipeline: RunConfig,
    *,
    generate: GenerateAll = raw_generate,
    on_row: Callable[[BenchRow], None] = lambda row: None,
    clock: Callable[[], float] = time.perf_counter,
    settings: Mapping[str, Any] | None = None,
) -> VsGenerateResult:
    """The rows through one `generate` call, then through the `run` pipeline.

    Both sides run on `engine`, with the same rows and settings (each row's own
    over `sampling`). Each is warmed up the same way, untimed: its own path over
    the first `WARMUP_PROMPTS` rows, just before its measured run.

    >>> from batching.testing import FakeEngine
    >>> def every(engine, prompts, samplings):
    ...     return [EngineOutput(i, "", "length", 1, 2) for i in range(len(prompts))]
    >>> from batching.bench.sweep import as_requests, pipeline_config
    >>> result = run_vs_generate(FakeEngine(), as_requests(["ab", "cd"]),
    ...                          Sampling(max_tokens=2), pipeline_config(), generate=every)
    >>> result.generate.output_tokens, result.pipeline.output_tokens
    (4, 4)
    """
    if not requests:
        raise ValueError("no prompts to benchmark")
    # Every prompt encodes, or the bench stops before either side runs (LLM.generate
    # would fail the whole call on one bad prompt); the mean length is for the heading.
    encoded = encode_prompts(engine, [prompt_of(request) for request in requests])
    warm = requests[:WARMUP_PROMPTS]

    run_through_generate(engine, warm, sampling, generate, clock)
    raw = run_through_generate(engine, requests, sampling, generate, clock)
    on_row(raw)
    run_through_pipeline(engine, warm, sampling, pipeline, clock)
    ours = run_through_pipeline(engine, requests, sampling, pipeline, clock)
    on_row(ours)
    return VsGenerateResult(
        workload=Workload.of(engine, encoded, sampling),
        warmup_prompts=len(warm),
        generate=raw,
        pipeline=ours,
        settings=dict(settings or {}),
    )
