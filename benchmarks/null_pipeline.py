"""Our own cost per row: the whole `run` path with a null engine, against pyarrow's
raw JSONL read rate on the same file.

The null engine answers every request in the step after it is added, with an empty
output, and encodes a prompt to one token without looking at it, so what is timed
is bizra's code alone: reading and validating rows (with the read-ahead thread),
grouping, the engine loop, the reorder buffer, the report and writing JSONL.
`pyarrow.json.read_json` is multi-threaded C++ that parses the file into a table
and writes nothing, so it is a ceiling, not a competitor; the target is half of it.

    .venv/bin/python benchmarks/null_pipeline.py                  # 1M rows
    .venv/bin/python benchmarks/null_pipeline.py --rows 200000 --profile prof.txt

It also prints the rate of our reader alone (`open_source(...).chunks()`, what the
read-ahead thread runs), the ceiling for the whole pipeline. `--profile FILE` also
runs the pipeline once under cProfile (main thread only) and writes the top
functions by own time there.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.engine import EngineOutput, EngineRequest, PermanentRequestError
from batching.job import run
from batching.report import ReportCollector
from benchmarks.reader_speed import read_with_source, write_prompts

__all__ = ["NullEngine", "main"]

TARGET_RATIO = 0.5


class NullEngine:
    """An `Engine` that costs nothing: one token per prompt, every request done at once."""

    max_model_len = 1 << 30
    max_num_seqs = 1 << 30

    def __init__(self) -> None:
        self._queued: list[int] = []

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        return [[1] for _ in prompts]

    def add(self, request: EngineRequest) -> None:
        self._queued.append(request.key)

    def step(self) -> list[EngineOutput]:
        done, self._queued = self._queued, []
        return [EngineOutput(key, "", "stop", 1, 0) for key in done]

    def abort(self, keys: Iterable[int]) -> None:
        drop = set(keys)
        self._queued = [k for k in self._queued if k not in drop]

    def has_unfinished(self) -> bool:
        return bool(self._queued)

    def close(self) -> None:
        self._queued = []


def pipeline_rate(path: str, output: str) -> float:
    """Rows per second through `batching.job.run` with the null engine."""
    return pipeline_run(path, output)[0]


def pipeline_run(path: str, output: str) -> tuple[float, float]:
    """Rows per second through `batching.job.run` with the null engine, and the
    CPU µs per row it took in all threads (the reader and encoder threads too)."""
    config = RunConfig(
        input=InputConfig(path=path), output=OutputConfig(path=output, overwrite=True)
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    report = run(config, NullEngine, report=ReportCollector(gpu_sampler=lambda: None))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if report.rows_failed:
        raise SystemExit(f"{report.rows_failed} rows failed: {dict(report.errors_by_type)}")
    return report.rows / elapsed, cpu / report.rows * 1e6


def pyarrow_rate(path: str) -> float:
    import pyarrow.json

    started = time.perf_counter()
    rows = pyarrow.json.read_json(path).num_rows
    return int(rows) / (time.perf_counter() - started)


def vllm_intake(path: str, model: str, rows: int = 5_000) -> tuple[float, float]:
    """vLLM's own CPU µs per request before any model compute, on the file's first
    `rows` prompts: tokenizing, and `add_request`, through the adapter `run` uses
    (in-process engine, as bizra-batch starts it on CPU). The yardstick for our
    per-row cost: a real run pays both for every row, on top of ours."""
    import orjson

    from batching.config import EngineConfig
    from batching.engine import EngineRequest
    from batching.engines.vllm import create_vllm_engine
    from batching.records import Sampling

    with open(path, "rb") as lines:
        prompts = [orjson.loads(line)["prompt"] for line in itertools.islice(lines, rows)]
    engine = create_vllm_engine(EngineConfig(model=model))
    sampling = Sampling(max_tokens=1)
    try:
        spent = [0.0, 0.0]
        for round_, batch in enumerate((prompts[:256], prompts)):  # a warm-up, then timed
            started = time.process_time()
            encoded = engine.encode(batch)
            tokenized = time.process_time()
            for key, (ids, prompt) in enumerate(zip(encoded, batch, strict=True)):
                if isinstance(ids, PermanentRequestError):
                    raise SystemExit(f"vLLM refused prompt {key}: {ids}")
                engine.add(EngineRequest(key + round_ * rows, ids, sampling, prompt))
            spent = [tokenized - started, time.process_time() - tokenized]
            while engine.has_unfinished():
                engine.step()
    finally:
        engine.close()
    return spent[0] / len(prompts) * 1e6, spent[1] / len(prompts) * 1e6


def compare(path: str, output: str, repeats: int) -> tuple[float, float, float, float]:
    """Best of `repeats`, alternating: our rows/s and CPU µs a row, pyarrow's rows/s,
    and our reader's rows/s."""
    ours = theirs = reader = 0.0
    cpu_us = float("inf")
    for _ in range(repeats):
        rate, cpu_per_row = pipeline_run(path, output)
        ours, cpu_us = max(ours, rate), min(cpu_us, cpu_per_row)
        theirs = max(theirs, pyarrow_rate(path))
        started = time.perf_counter()
        reader = max(reader, read_with_source(path) / (time.perf_counter() - started))
    return ours, cpu_us, theirs, reader


def _verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET_RATIO else "MISSED"


def _sizes(text: str) -> list[int]:
    return [int(size) for size in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    parser.add_argument(
        "--prompt-bytes",
        type=_sizes,
        metavar="N[,N...]",
        help="pad prompts to about N bytes; several sizes print one line each, on files "
        "of at most --rows rows and about 400 MB",
    )
    parser.add_argument(
        "--vllm",
        metavar="MODEL",
        help="also measure vLLM's own CPU cost per request (tokenize + add_request) "
        "on the first 5,000 prompts, with this model",
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile summary here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bizra-null-") as scratch:
        path = os.path.join(scratch, "prompts.jsonl")
        output = os.path.join(scratch, "out.jsonl")
        if args.prompt_bytes and len(args.prompt_bytes) > 1:
            print(f"best of {args.repeats}, alternating; a file per prompt size")
            print("prompt bytes      rows    MB   bizra rows/s  CPU µs/row  pyarrow rows/s  ratio")
            for size in args.prompt_bytes:
                rows = min(args.rows, max(10_000, 400_000_000 // (size + 60)))
                write_prompts(path, rows, size)
                size_mb = os.path.getsize(path) / 1e6
                ours, cpu_us, theirs, _ = compare(path, output, args.repeats)
                print(
                    f"{size:>12,} {rows:>9,} {size_mb:>5.0f} {ours:>14,.0f} {cpu_us:>11.1f} "
                    f"{theirs:>15,.0f}  {ours / theirs:.3f} ({_verdict(ours / theirs)})",
                    flush=True,
                )
            return 0
        size = args.prompt_bytes[0] if args.prompt_bytes else None
        write_prompts(path, args.rows, size)
        size_mb = os.path.getsize(path) / 1e6
        print(f"{args.rows:,} rows, {size_mb:.0f} MB; best of {args.repeats}, alternating")
        ours, cpu_us, theirs, reader = compare(path, output, args.repeats)
        print(f"bizra pipeline, null engine  {ours:>12,.0f} rows/s ({cpu_us:.1f} CPU µs a row)")
        print(f"pyarrow.json.read_json       {theirs:>12,.0f} rows/s")
        print(f"(our reader alone            {reader:>12,.0f} rows/s: the pipeline's ceiling)")
        ratio = ours / theirs
        print(f"pipeline/pyarrow: {ratio:.3f} (target >= {TARGET_RATIO}: {_verdict(ratio)})")
        if args.vllm:
            tokenize_us, add_us = vllm_intake(path, args.vllm)
            intake = tokenize_us + add_us
            print(
                f"vLLM's own intake a request: tokenize {tokenize_us:.1f} + add_request "
                f"{add_us:.1f} = {intake:.1f} CPU µs"
            )
            print(f"our CPU a row / vLLM's intake a request: {cpu_us / intake:.3f}")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(pipeline_rate, path, output)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
            args.profile.write_text(text.getvalue())
            print(f"profile (by own time) written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
