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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    parser.add_argument("--profile", type=Path, help="write a cProfile summary here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bizra-null-") as scratch:
        path = os.path.join(scratch, "prompts.jsonl")
        output = os.path.join(scratch, "out.jsonl")
        write_prompts(path, args.rows)
        size_mb = os.path.getsize(path) / 1e6
        print(f"{args.rows:,} rows, {size_mb:.0f} MB; best of {args.repeats}, alternating")
        ours = theirs = reader = 0.0
        cpu_us = float("inf")
        for _ in range(args.repeats):
            rate, cpu_per_row = pipeline_run(path, output)
            ours, cpu_us = max(ours, rate), min(cpu_us, cpu_per_row)
            theirs = max(theirs, pyarrow_rate(path))
            started = time.perf_counter()
            reader = max(reader, read_with_source(path) / (time.perf_counter() - started))
        print(f"bizra pipeline, null engine  {ours:>12,.0f} rows/s ({cpu_us:.1f} CPU µs a row)")
        print(f"pyarrow.json.read_json       {theirs:>12,.0f} rows/s")
        print(f"(our reader alone            {reader:>12,.0f} rows/s: the pipeline's ceiling)")
        ratio = ours / theirs
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"pipeline/pyarrow: {ratio:.3f} (target >= {TARGET_RATIO}: {verdict})")
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
