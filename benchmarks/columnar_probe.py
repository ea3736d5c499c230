"""How fast could a column-at-a-time pipeline be? A what-if for the null-pipeline target.

`null_pipeline.py` measures bizra's row-at-a-time path against pyarrow's JSONL read
rate. This probe does the same job a column at a time, the way a pyarrow-based
lane would, on the same file and with the same output bytes, and times each stage:

- read: 4 MiB blocks cut at the last newline;
- parse: `pyarrow.json.read_json` on each block (multi-threaded C++);
- validate: prompt column has no nulls and no empty strings;
- ids: the exact duplicate-id check bizra makes (a dict of every id seen), or with
  `--no-id-check` none at all;
- lines: each output line built with `pyarrow.compute` string kernels (no Python
  per row);
- write: one write and one fsync per block.

The stages run one after another on one thread; a lane that parsed the next block
in a thread while the main thread wrote the last could save up to the parse share.
It skips what a real lane would still need (the engine hand-off and results, the
reorder, the report, falling back to the row path for a block that does not
parse), so its rate is an upper bound for that design, not a measurement of one.
It refuses files whose ids or prompts need JSON escaping, and checks that its
output is byte for byte what `null_pipeline.NullEngine` through `run` writes.

    .venv/bin/python benchmarks/columnar_probe.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from benchmarks.null_pipeline import TARGET_RATIO, pipeline_run, pyarrow_rate
from benchmarks.reader_speed import write_prompts

__all__ = ["main", "probe"]

_BLOCK_BYTES = 4 << 20
_LINE_END = ',"finish_reason":"stop","prompt_tokens":1,"completion_tokens":0,"error":null}\n'
STAGES = ("read", "parse", "validate", "ids", "lines", "write")


def probe(path: str, output: str, *, check_ids: bool) -> tuple[float, dict[str, float]]:
    """Rows per second of the column-at-a-time job, and seconds spent per stage."""
    spent = dict.fromkeys(STAGES, 0.0)
    seen: dict[object, int] = {}
    rows = 0
    tail = b""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as source, open(output, "wb", buffering=0) as out:
        while True:
            mark = time.perf_counter()
            block = source.read(_BLOCK_BYTES)
            if not block and not tail:
                break
            data = tail + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            data, tail = data[:cut], data[cut:]
            lines = data.count(b"\n")
            mark = _tick(spent, "read", mark)

            table = pj.read_json(io.BytesIO(data))
            mark = _tick(spent, "parse", mark)

            prompts = table.column("prompt").combine_chunks()
            ids = table.column("id").combine_chunks()
            if table.num_rows != lines or prompts.null_count or ids.null_count:
                raise SystemExit("probe: blank lines or missing fields; use a plain prompt file")
            if pc.min(pc.utf8_length(prompts)).as_py() == 0:
                raise SystemExit("probe: empty prompt; use a plain prompt file")
            mark = _tick(spent, "validate", mark)

            if check_ids:
                block_ids = dict(zip(ids.to_pylist(), range(rows, rows + lines), strict=True))
                if len(block_ids) != lines or not seen.keys().isdisjoint(block_ids):
                    raise SystemExit("probe: duplicate ids; use a plain prompt file")
                seen.update(block_ids)
            mark = _tick(spent, "ids", mark)

            if (
                pc.any(pc.match_substring(ids, '"')).as_py()
                or pc.any(pc.match_substring(ids, "\\")).as_py()
            ):
                raise SystemExit("probe: ids that need JSON escaping; use a plain prompt file")
            empty = pa.array([""] * lines, pa.string())
            made = pc.binary_join_element_wise(
                '{"id":"', ids, '","output":"', empty, '"' + _LINE_END, ""
            )
            view = _values(made)
            mark = _tick(spent, "lines", mark)

            out.write(view)
            os.fsync(out.fileno())
            _tick(spent, "write", mark)
            rows += lines
    return rows / (time.perf_counter() - started), spent


def _values(strings: pa.StringArray) -> memoryview:
    """The bytes of every string in `strings`, back to back, without a copy."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)
    first, last = offsets[strings.offset], offsets[strings.offset + len(strings)]
    return memoryview(strings.buffers()[2])[first:last]


def _tick(spent: dict[str, float], stage: str, mark: float) -> float:
    now = time.perf_counter()
    spent[stage] += now - mark
    return now


def _digest(path: str) -> str:
    with open(path, "rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bizra-columnar-") as scratch:
        path = os.path.join(scratch, "prompts.jsonl")
        ours_out = os.path.join(scratch, "bizra.jsonl")
        probe_out = os.path.join(scratch, "probe.jsonl")
        write_prompts(path, args.rows)
        print(f"{args.rows:,} rows; best of {args.repeats}, alternating")
        best = {"bizra": 0.0, "probe, exact id check": 0.0, "probe, no id check": 0.0}
        theirs = 0.0
        stages: dict[str, float] = {}
        for _ in range(args.repeats):
            best["bizra"] = max(best["bizra"], pipeline_run(path, ours_out)[0])
            rate, spent = probe(path, probe_out, check_ids=True)
            if rate > best["probe, exact id check"]:
                best["probe, exact id check"], stages = rate, spent
            rate = probe(path, probe_out, check_ids=False)[0]
            best["probe, no id check"] = max(best["probe, no id check"], rate)
            theirs = max(theirs, pyarrow_rate(path))
        same = _digest(ours_out) == _digest(probe_out)
        print(f"outputs byte-identical: {'yes' if same else 'NO'}")
        print(f"{'pyarrow.json.read_json':<28}{theirs:>12,.0f} rows/s")
        for name, rate in best.items():
            print(f"{name:<28}{rate:>12,.0f} rows/s  {rate / theirs:.3f} of pyarrow")
        total = sum(stages.values())
        print(f"probe stages (exact id check, best run, {total:.2f} s):")
        for stage in STAGES:
            print(f"  {stage:<9}{stages[stage]:>7.3f} s  {stages[stage] / total:>5.1%}")
        print(f"target for the pipeline: >= {TARGET_RATIO} of pyarrow")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
