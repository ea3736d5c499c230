"""Does bizra-batch's peak memory stay flat as the input grows?

Runs `python -m cli run FILE -m MODEL -o OUT --max-tokens N --temperature 0 -q` on a
small and a large prompt file (the same generator, so the same length mix; the small
file is the first rows of the large one), each as a whole process with its peak RSS
from `wait4`. Checks that each output has exactly one row per input row, in input
order (ids 0..N-1) and without error records, then prints both peaks and the
large/small ratio (target <= 1.10: reading, reordering and writing are bounded, so
only the engine's fixed start-up cost should show). One output token per row by
default, so a million rows take minutes of engine time rather than hours.

    .venv/bin/python benchmarks/memory_scaling.py                    # 100k vs 1M rows
    .venv/bin/python benchmarks/memory_scaling.py --small 10000 --large 100000
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    TINY_MODEL,
    Measurement,
    bizra_command,
    format_table,
    iter_output_rows,
    measure,
    print_provenance,
    work_folder,
    write_prompt_file,
)

__all__ = ["main"]

TARGET_RATIO = 1.10


def _check_output(path: Path, rows: int) -> list[str]:
    """Problems with a results file: missing or extra rows, ids out of order, errors."""
    problems: list[str] = []
    count = 0
    errors = 0
    for index, row in enumerate(iter_output_rows(path)):
        count += 1
        if row["id"] != index and len(problems) < 3:
            problems.append(f"line {index + 1}: id {row['id']!r}, expected {index}")
        if row.get("error") is not None:
            errors += 1
    if count != rows:
        problems.append(f"{count} rows, expected {rows}")
    if errors:
        problems.append(f"{errors} error records")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    args = parser.parse_args(argv)

    print_provenance()
    ok = True
    runs: list[Measurement] = []
    with work_folder(args.keep, "bizra-memory-") as work:
        for label, rows in (("small", args.small), ("large", args.large)):
            prompts = work / f"{label}.jsonl"
            out = work / f"{label}-out.jsonl"
            write_prompt_file(prompts, rows)
            out.unlink(missing_ok=True)
            command = bizra_command(prompts, out, args.model, args.max_tokens)
            print(f"{label} command: {shlex.join(command)}")
            run = measure(label, command, rows, work / f"{label}.log")
            runs.append(run)
            problems = _check_output(out, rows)
            verdict = "ok" if not problems else "; ".join(problems)
            print(f"{label} output: {rows} rows expected, ids 0..{rows - 1} in order: {verdict}")
            ok = ok and not problems
            # The large output would otherwise sit in /tmp for the rest of the run.
            if args.keep is None:
                out.unlink()

    small, large = runs
    print(f"\nmax_tokens {args.max_tokens}, model {args.model}")
    print(
        format_table(
            ["", "rows", "wall s", "rows/s", "CPU s", "peak RSS MiB", "load before"],
            [
                [
                    r.label,
                    r.rows,
                    r.wall_s,
                    r.rows_per_s,
                    r.cpu_s,
                    r.peak_rss_bytes / 2**20,
                    r.load_before,
                ]
                for r in runs
            ],
        )
    )
    ratio = large.peak_rss_bytes / small.peak_rss_bytes
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"peak RSS large/small: {ratio:.3f} (target <= {TARGET_RATIO}: {verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
