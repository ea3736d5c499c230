"""How fast `open_source(...).chunks()` reads JSONL, against the raw parsers.

Writes a JSONL file of short prompts (1M rows unless told otherwise), then times:

- `open_source(...).chunks()`: what the pipeline pays per row (parse + validate +
  `Request` objects + duplicate-id check);
- a bare orjson loop (`readline` + `orjson.loads`): the floor for any JSONL reader
  in Python that holds one line at a time;
- `pyarrow.json.read_json`: multi-threaded C++, but it holds the whole file as a
  table, so it is a reference point, not an option for streaming.

Usage, from the repository root:
    .venv/bin/python -m benchmarks.reader_speed [ROWS] [--repeats N] [--keep PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import orjson

from batching.config import InputConfig
from batching.readers import open_source

_FILLER = (
    "Summarise the passage below in one sentence, keeping every name and number it "
    "gives. The passage follows, as the user pasted it from a longer report. "
)


def write_prompts(path: str, rows: int, prompt_bytes: int | None = None) -> None:
    """Rows of `{"id", "prompt"}`; `prompt_bytes` pads each prompt to about that many
    bytes (a realistic batch prompt is a few hundred to a few thousand tokens)."""
    pad = ""
    if prompt_bytes is not None:
        pad = (_FILLER * (prompt_bytes // len(_FILLER) + 1))[: max(0, prompt_bytes - 30)]
    with open(path, "wb") as out:
        for start in range(0, rows, 100_000):
            stop = min(rows, start + 100_000)
            out.write(
                b"".join(
                    orjson.dumps(
                        {"id": f"row-{i}", "prompt": f"{pad}Write a haiku about item {i}."}
                    )
                    + b"\n"
                    for i in range(start, stop)
                )
            )


def read_with_source(path: str) -> int:
    with open_source(InputConfig(path=path)) as source:
        return sum(len(chunk) for chunk in source.chunks())


def read_with_orjson(path: str) -> int:
    count = 0
    loads = orjson.loads
    with open(path, "rb") as lines:
        for line in lines:
            loads(line)
            count += 1
    return count


def read_with_pyarrow(path: str) -> int:
    import pyarrow.json

    return int(pyarrow.json.read_json(path).num_rows)


def best_rate(read: Callable[[str], int], path: str, repeats: int) -> float:
    """Rows per second, best of `repeats`: the least disturbed run."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        rows = read(path)
        best = max(best, rows / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="write the file here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.keep or os.path.join(scratch, "prompts.jsonl")
        write_prompts(path, args.rows)
        size_mb = os.path.getsize(path) / 1e6
        print(f"{args.rows:,} rows, {size_mb:.0f} MB, best of {args.repeats}")
        rates = {
            "open_source().chunks()": best_rate(read_with_source, path, args.repeats),
            "orjson line loop": best_rate(read_with_orjson, path, args.repeats),
            "pyarrow.json.read_json": best_rate(read_with_pyarrow, path, args.repeats),
        }
        for label, rate in rates.items():
            print(f"{label:24s} {rate:>12,.0f} rows/s")
        ours = rates["open_source().chunks()"]
        print(f"ratio to orjson loop: {ours / rates['orjson line loop']:.2f}")
        print(f"ratio to pyarrow.json: {ours / rates['pyarrow.json.read_json']:.2f}")


if __name__ == "__main__":
    main()
