"""The result cache across runs: a full run with `--cache`, 1% of the rows edited, a rerun.

Both runs are the real CLI on the tiny model (greedy, so every row is cached),
with `--report`; it prints each run's processing time (wall time less engine
start-up and shut-down, from the report), their ratio (target: the rerun at most a
tenth of the first), the rows the rerun's engine reached (target: only the edited
ones), and whether every unedited row's output is the first run's.

    .venv/bin/python benchmarks/cache.py                 # 20k rows
    .venv/bin/python benchmarks/cache.py --rows 3000     # a quick check
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    TINY_MODEL,
    bizra_command,
    iter_output_rows,
    measure,
    print_provenance,
    work_folder,
    write_prompt_file,
)

__all__ = ["main"]

TARGET_SHARE = 0.1


def _edit(source: Path, target: Path, share: float, seed: int) -> set[int]:
    """Copy `source` with `share` of its rows' prompts changed; the ids of those rows."""
    rows = [orjson.loads(line) for line in source.read_bytes().splitlines()]
    edited = set(random.Random(seed).sample(range(len(rows)), max(1, round(share * len(rows)))))
    with target.open("wb") as out:
        for row in rows:
            if row["id"] in edited:
                row["prompt"] += " (edited)"
            out.write(orjson.dumps(row) + b"\n")
    return edited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--edit-share", type=float, default=0.01)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    args = parser.parse_args(argv)

    print_provenance()
    with work_folder(args.keep, "bizra-cache-") as work:
        first_input, second_input = work / "prompts.jsonl", work / "edited.jsonl"
        write_prompt_file(first_input, args.rows)
        edited = _edit(first_input, second_input, args.edit_share, seed=7)
        cache = work / "cache.sqlite"
        cache.unlink(missing_ok=True)
        reports = {}
        for label, source in (("first", first_input), ("rerun", second_input)):
            out, report = work / f"{label}.jsonl", work / f"{label}-report.json"
            out.unlink(missing_ok=True)
            command = bizra_command(source, out, args.model, args.max_tokens)
            command += ["--cache", str(cache), "--report", str(report)]
            print(f"{label} command: {shlex.join(command)}")
            run = measure(label, command, args.rows, work / f"{label}.log")
            reports[label] = json.loads(report.read_text())
            figures = reports[label]
            print(
                f"  {label}: wall {run.wall_s:.2f} s (process), processing "
                f"{figures['processing_seconds']:.2f} s, engine start-up "
                f"{figures['engine_startup_seconds']} s, cache hits {figures['cache_hits']}, "
                f"misses {figures['cache_misses']}, deduplicated {figures['rows_deduplicated']}"
            )
        first, rerun = reports["first"], reports["rerun"]
        reached = rerun["rows"] - rerun["cache_hits"] - rerun["rows_deduplicated"]
        share = rerun["processing_seconds"] / first["processing_seconds"]
        changed = sum(
            a["id"] not in edited and a["output"] != b["output"]
            for a, b in zip(iter_output_rows(work / "first.jsonl"),
                            iter_output_rows(work / "rerun.jsonl"), strict=True)
        )  # fmt: skip
        print(
            f"\n{args.rows} rows, {len(edited)} edited; rerun processing / first = "
            f"{share:.3f} (target <= {TARGET_SHARE}); rows the rerun's engine reached: "
            f"{reached} (target {len(edited)}); unedited rows whose output changed: "
            f"{changed} (target 0)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
