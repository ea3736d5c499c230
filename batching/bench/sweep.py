"""`bench`: one engine, one prompt set, run serially, at a sweep of batch sizes, and
through the `run` pipeline, so the gain from batching is measured side by side.

A batch size b runs the prompts as static batches: b requests are added, the engine
steps until all b finished, then the next b go in (the last batch may be smaller).
Batch size 1 is the serial run, one request at a time, and the baseline of the
speed-up column; efficiency is speed-up over b (1.0 would be linear scaling). The
engine never runs more than its `max_num_seqs` at once, so larger batch sizes queue
inside it. The pipeline row is `run`'s own loop: continuous batching, topped up
after every step, in `--order auto`.

Every measurement reuses one started engine (start-up is not measured), after a
warm-up batch. The same prompts run once per row, so the CLI turns prefix caching
off by default: otherwise each run would find the last one's prompts cached.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from batching.adapters import KeptOpen, ListSink, ListSupply
from batching.config import InputConfig, RunConfig
from batching.engine import Engine, EngineRequest, PermanentRequestError
from batching.pipeline import run_rows
from batching.quantiles import exact_quantile
from batching.records import Request, Row, Sampling

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "BenchResult",
    "BenchRow",
    "Workload",
    "as_requests",
    "encode_prompts",
    "pipeline_config",
    "prompt_of",
    "run_bench",
    "run_through_pipeline",
    "synthetic_prompts",
]

ALL = 0  # in a batch-size list: every prompt in one batch
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 256, ALL)

Prompt = str | Sequence[Mapping[str, Any]]

_WORDS = (
    "river", "signal", "garden", "theory", "market", "window", "library", "pattern",
    "journey", "season", "letter", "bridge", "forest", "number", "voice", "quiet",
    "bright", "simple", "narrow", "gentle", "rapid", "modest", "clear", "slowly",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One measurement: how `requests` prompts ran at one batch size (or the pipeline).

    `batch_size` is None for the pipeline row. Rates are over `wall_seconds`.
    """

    label: str
    batch_size: int | None
    requests: int
    wall_seconds: float
    output_tokens: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    speedup: float | None = None
    efficiency: float | None = None

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall_seconds if self.wall_seconds > 0 else math.inf

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "batch_size": self.batch_size,
            "requests": self.requests,
            "wall_seconds": round(self.wall_seconds, 6),
            "requests_per_second": round(self.requests_per_second, 3),
            "output_tokens_per_second": round(self.output_tokens_per_second, 3),
            "output_tokens": self.output_tokens,
            "latency_p50_ms": _rounded(self.latency_p50_ms),
            "latency_p95_ms": _rounded(self.latency_p95_ms),
            "speedup": _rounded(self.speedup),
            "efficiency": _rounded(self.efficiency),
        }


@dataclass(frozen=True, slots=True)
class Workload:
    """What a benchmark ran: the prompts, their mean length in tokens, the `max_tokens`
    a prompt without its own takes, and the engine's `max_num_seqs`.

    >>> from batching.testing import FakeEngine
    >>> Workload.of(FakeEngine(max_num_seqs=4), [[1, 2], [3]], Sampling(max_tokens=8))
    Workload(prompts=2, prompt_tokens_mean=1.5, max_tokens=8, max_num_seqs=4)
    """

    prompts: int
    prompt_tokens_mean: float
    max_tokens: int
    max_num_seqs: int

    @classmethod
    def of(cls, engine: Engine, encoded: Sequence[Sequence[int]], sampling: Sampling) -> Workload:
        """The workload of `encoded` (the prompts as token ids, at least one) on `engine`."""
        return cls(
            prompts=len(encoded),
            prompt_tokens_mean=sum(map(len, encoded)) / len(encoded),
            max_tokens=sampling.max_tokens or 0,
            max_num_seqs=engine.max_num_seqs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "prompt_tokens_mean": round(self.prompt_tokens_mean, 1),
            "max_tokens": self.max_tokens,
            "max_num_seqs": self.max_num_seqs,
        }


@dataclass(frozen=True, slots=True)
class BenchResult:
    """The whole benchmark: what ran, and one `BenchRow` per measurement."""

    workload: Workload
    rows: tuple[BenchRow, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.workload.to_dict(),
            "settings": dict(self.settings),
            "rows": [row.to_dict() for row in self.rows],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _quantile_ms(latencies: Sequence[float], q: float) -> float | None:
    # Exact, as a benchmark holds every latency.
    seconds = exact_quantile(latencies, q)
    return None if seconds is None else seconds * 1000.0


def synthetic_prompts(
    engine: Engine, count: int, lengths: Sequence[int], seed: int = 0
) -> list[str]:
    """`count` distinct prompts whose token counts cycle through `lengths`.

    Texts of random words, cut until the engine's tokenizer counts the wanted length
    (or the nearest below it: a word can be several tokens). Each opens with its own
    number, so no two share a prefix.

    >>> from batching import FakeEngine
    >>> engine = FakeEngine()  # one character, one token
    >>> texts = synthetic_prompts(engine, 2, [24])
    >>> texts[0], [len(ids) for ids in encode_prompts(engine, texts)]
    ('Request 0. forest number', [24, 24])
    """
    if not lengths or min(lengths) < 1:
        raise ValueError("prompt lengths must be positive")
    rng = random.Random(seed)
    words = [
        [f"Request {i}."] + [rng.choice(_WORDS) for _ in range(lengths[i % len(lengths)])]
        for i in range(count)
    ]
    texts = [" ".join(w) for w in words]
    # A few rounds of scaling the word count by wanted/actual tokens; then drop
    # words one at a time from the prompts still too long.
    for _ in range(4):
        counts = _token_counts(engine, texts)
        for i, n in enumerate(counts):
            target = lengths[i % len(lengths)]
            if n != target:
                keep = max(1, round(len(words[i]) * target / max(n, 1)))
                words[i] = (words[i] + [rng.choice(_WORDS) for _ in range(keep)])[:keep]
                texts[i] = " ".join(words[i])
    counts = _token_counts(engine, texts)
    for i in range(count):
        while counts[i] > lengths[i % len(lengths)] and len(words[i]) > 1:
            words[i].pop()
            texts[i] = " ".join(words[i])
            counts[i] = _token_counts(engine, [texts[i]])[0]
    return texts


def _token_counts(engine: Engine, texts: Sequence[str]) -> list[int]:
    return [len(ids) if isinstance(ids, list) else 0 for ids in engine.encode(texts)]


def encode_prompts(engine: Engine, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt; a prompt the engine cannot encode stops the bench."""
    encoded: list[list[int]] = []
    for number, ids in enumerate(engine.encode(prompts), 1):
        if isinstance(ids, PermanentRequestError):
            raise ValueError(f"prompt {number}: {ids}")
        if not ids:
            raise ValueError(f"prompt {number} is empty")
        encoded.append(ids)
    return encoded


def run_static_batches(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    batch_size: int,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchRow:
    """Run every prompt in static batches of `batch_size`; time the whole sweep point.

    Each request's latency runs from its batch going in to its own result.
    """
    latencies: list[float] = []
    output_tokens = 0
    started = clock()
    for start in range(0, len(prompts), batch_size):
        batch_started = clock()
        keys = range(start, min(len(prompts), start + batch_size))
        for key in keys:
            engine.add(EngineRequest(key=key, prompt_token_ids=prompts[key], sampling=sampling))
        waiting = set(keys)
        while waiting:
            for output in engine.step():
                waiting.discard(output.key)
                output_tokens += output.completion_tokens
                latencies.append(clock() - batch_started)
    wall = clock() - started
    label = "serial" if batch_size == 1 else f"batch {batch_size}"
    return BenchRow(
        label=label,
        batch_size=batch_size,
        requests=len(prompts),
        wall_seconds=wall,
        output_tokens=output_tokens,
        latency_p50_ms=_quantile_ms(latencies, 0.50),
        latency_p95_ms=_quantile_ms(latencies, 0.95),
    )


def as_requests(prompts: Sequence[Prompt]) -> list[Request]:
    """Rows numbered from 0 for prompts that come without a file (no own settings).

    >>> [r.prompt for r in as_requests(["ab", "cd"])]
    ['ab', 'cd']
    """
    return [
        Request(index=i, id=i, line=i + 1, prompt=p)
        if isinstance(p, str)
        else Request(index=i, id=i, line=i + 1, messages=tuple(p))
        for i, p in enumerate(prompts)
    ]


def prompt_of(request: Request) -> Prompt:
    """The text or the chat a row asks the engine about."""
    return request.prompt if request.prompt is not None else list(request.messages or ())


def run_through_pipeline(
    engine: Engine,
    requests: Sequence[Request],
    sampling: Sampling,
    config: RunConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchRow:
    """The rows through `run_rows` (what `run` does, without the files).

    `sampling` is the run's default; a row's own settings override it, as in `run`.
    """
    # The pipeline numbers rows from 0 (its reorder buffer keys on the index).
    rows: list[Row] = [replace(request, index=i) for i, request in enumerate(requests)]
    sink = ListSink()
    lent: Engine = KeptOpen(engine)  # the pipeline closes what it starts; this is the bench's
    started = clock()
    run_rows(
        ListSupply(rows, config.input.chunk_size),
        sink,
        lambda: lent,
        replace(config, sampling=sampling),
        clock=clock,
        place=lambda index, line: f"prompt {line}",  # as encode_prompts names them
    )
    wall = clock() - started
    failed = [result for result in sink.results if result.error is not None]
    if failed:
        raise RuntimeError(f"the pipeline run failed {len(failed)} rows, first: {failed[0].error}")
    latencies = [result.latency_s for result in sink.results if result.latency_s is not None]
    return BenchRow(
        label="run pipeline",
        batch_size=None,
        requests=len(rows),
        wall_seconds=wall,
        output_tokens=sum(result.completion_tokens or 0 for result in sink.results),
        latency_p50_ms=_quantile_ms(latencies, 0.50),
        latency_p95_ms=_quantile_ms(latencies, 0.95),
    )


def sweep_sizes(batch_sizes: Iterable[int], prompts: int) -> list[int]:
    """The batch sizes to run: ALL becomes `prompts`, sizes above it and repeats drop.

    >>> sweep_sizes([1, 4, 256, 0], prompts=10)
    [1, 4, 10]
    """
    sizes: list[int] = []
    for size in batch_sizes:
        effective = prompts if size == ALL or size > prompts else size
        if effective >= 1 and effective not in sizes:
            sizes.append(effective)
    return sizes


def run_bench(
    engine: Engine,
    prompts: Sequence[Prompt],
    sampling: Sampling,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    pipeline: RunConfig | None = None,
    on_row: Callable[[BenchRow], None] = lambda row: None,
    clock: Callable[[], float] = time.perf_counter,
    settings: Mapping[str, Any] | None = None,
) -> BenchResult:
    """Measure `prompts` serially, at each batch size, then through the pipeline.

    Speed-up and efficiency are against the serial row (batch size 1), which always
    runs first. `on_row` sees each row as it is measured (for progress).

    >>> from batching.testing import FakeEngine
    >>> result = run_bench(FakeEngine(), ["ab", "cd"], Sampling(max_tokens=2),
    ...                    batch_sizes=[1, 2], pipeline=pipeline_config())
    >>> [row.label for row in result.rows]
    ['serial', 'batch 2', 'run pipeline']
    """
    if not prompts:
        raise ValueError("no prompts to benchmark")
    encoded = encode_prompts(engine, prompts)
    # Warm-up, not measured: the first steps of a fresh engine pay for lazy set-up.
    warm = encoded[: min(len(encoded), 8)]
    run_static_batches(engine, warm, sampling, len(warm), clock)

    sizes = sweep_sizes([1, *batch_sizes], len(encoded))
    rows: list[BenchRow] = []
    serial: BenchRow | None = None
    for size in sizes:
        row = run_static_batches(engine, encoded, sampling, size, clock)
        if serial is None:
            serial = row
        row = _against_serial(row, serial, size)
        rows.append(row)
        on_row(row)
    if pipeline is not None:
        assert serial is not None
        row = run_through_pipeline(engine, as_requests(prompts), sampling, pipeline, clock)
        row = _against_serial(row, serial, None)
        rows.append(row)
        on_row(row)
    return BenchResult(
        workload=Workload.of(engine, encoded, sampling),
        rows=tuple(rows),
        settings=dict(settings or {}),
    )


def _against_serial(row: BenchRow, serial: BenchRow, size: int | None) -> BenchRow:
    speedup = row.requests_per_second / serial.requests_per_second
    return replace(row, speedup=speedup, efficiency=None if size is None else speedup / size)


def pipeline_config(chunk_size: int = 1024, max_in_flight: int | None = None) -> RunConfig:
    """The `run` defaults, for the pipeline row (the window from the engine's batch).

    Without deduplication: the serial side runs every prompt, so the pipeline must
    too, or a prompt set with repeats would credit the engine with work it skipped.
    """
    return RunConfig(
        input=InputConfig(path="-", chunk_size=chunk_size),
        max_in_flight=max_in_flight,
        dedup=False,
    )
