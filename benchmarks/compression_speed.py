"""What compression costs the reader and the writer: .jsonl against .jsonl.gz and .jsonl.zst.

Writes a JSONL file of short prompts (300k rows unless told otherwise), compresses
it with gzip -6 and zstd -3, then times:

- `open_source(...).chunks()` on each (rows/s; the reader hashes as it goes, so
  the SHA-256 of the input is in these figures);
- SHA-256 alone over the plain file's bytes (MB/s), to see its share;
- `open_writer` writing the same rows as results to .jsonl, .jsonl.gz and .jsonl.zst,
  a durable flush every 1,024 rows as the pipeline does (rows/s, output size).

Usage, from the repository root:
    .venv/bin/python -m benchmarks.compression_speed [ROWS] [--repeats N]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import tempfile
import time
from collections.abc import Callable

import zstandard

from batching.config import InputConfig, OutputConfig
from batching.readers import open_source
from batching.records import Result
from batching.writers import open_writer
from benchmarks.reader_speed import write_prompts

_FLUSH_ROWS = 1024


def read_rows(path: str) -> int:
    with open_source(InputConfig(path=path)) as source:
        rows = sum(len(chunk) for chunk in source.chunks())
        assert source.input_digest is not None
        return rows


def write_rows(path: str, rows: int) -> int:
    results = [
        Result(index=i, id=f"row-{i}", output=f"A haiku about item {i}.") for i in range(rows)
    ]
    if os.path.exists(path):
        os.remove(path)
    with open_writer(OutputConfig(path=path)) as writer:
        for start in range(0, rows, _FLUSH_ROWS):
            writer.write(results[start : start + _FLUSH_ROWS])
            writer.flush(durable=True)
    return rows


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Seconds, best of `repeats`: the least disturbed run."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        plain = os.path.join(scratch, "in.jsonl")
        write_prompts(plain, args.rows)
        with open(plain, "rb") as file:
            data = file.read()
        inputs = {"jsonl": plain}
        for suffix, packed in (
            ("jsonl.gz", gzip.compress(data, compresslevel=6)),
            ("jsonl.zst", zstandard.ZstdCompressor(level=3).compress(data)),
        ):
            inputs[suffix] = os.path.join(scratch, f"in.{suffix}")
            with open(inputs[suffix], "wb") as file:
                file.write(packed)
        print(f"{args.rows:,} rows, {len(data) / 1e6:.1f} MB plain, best of {args.repeats}")
        print("read (open_source().chunks(), hashing included):")
        for suffix, path in inputs.items():
            seconds = best_seconds(lambda path=path: read_rows(path), args.repeats)  # type: ignore[misc]
            size = os.path.getsize(path) / 1e6
            print(f"  {suffix:10s} {args.rows / seconds:>12,.0f} rows/s  ({size:.1f} MB stored)")
        seconds = best_seconds(lambda: hashlib.sha256(data).digest(), args.repeats)
        print(f"sha256 alone: {len(data) / 1e6 / seconds:,.0f} MB/s")
        print(f"write (open_writer, durable flush every {_FLUSH_ROWS} rows):")
        for suffix in inputs:
            path = os.path.join(scratch, f"out.{suffix}")
            seconds = best_seconds(lambda path=path: write_rows(path, args.rows), args.repeats)  # type: ignore[misc]
            size = os.path.getsize(path) / 1e6
            print(f"  {suffix:10s} {args.rows / seconds:>12,.0f} rows/s  ({size:.1f} MB)")


if __name__ == "__main__":
    main()
