"""The fixed cost of a run: a small file, whole processes, this checkout against another.

A cron job or a shell pipeline pays for start-up and exit on every run, and on a
small file they are most of it. This runs `bizra-batch run` on `--rows` rows (100 by
default) from this checkout and from `--before` (a commit, checked out into a
temporary git worktree and run with the same Python), alternately, `--repeats`
times. It prints each run's whole-process wall time, the report's engine start-up
and shut-down, and what lay outside the report's clock (Python starting, imports
before the clock, and the interpreter's exit), then the medians and the ratio
before / after of the whole-process wall time.

The first run of each side compiles the model into torch's caches if they are cold;
`--warm` (default 1) runs each side that many times first, unmeasured.

    .venv/bin/python benchmarks/startup.py --before d0e1c9c
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO_ROOT,
    TINY_MODEL,
    bizra_command,
    format_table,
    measure,
    print_provenance,
    work_folder,
    write_prompt_file,
)

__all__ = ["main"]


@contextmanager
def _checkout(ref: str, work: Path) -> Iterator[Path]:
    """`ref` checked out (detached) in a worktree under `work`, removed afterwards."""
    tree = work / "before"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=REPO_ROOT, check=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", required=True, help="The commit to compare with.")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    args = parser.parse_args(argv)

    print_provenance()
    with work_folder(args.keep, "bizra-startup-") as work, _checkout(args.before, work) as old:
        prompts = work / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        model = str((REPO_ROOT / args.model).resolve())
        sides = {"before": old, "after": REPO_ROOT}
        table: list[list[object]] = []
        wall: dict[str, list[float]] = {side: [] for side in sides}
        for repeat in range(-args.warm, args.repeats):
            for side, tree in sides.items():
                out, report = work / f"{side}.jsonl", work / f"{side}-report.json"
                out.unlink(missing_ok=True)
                command = bizra_command(prompts, out, model, args.max_tokens)
                command += ["--report", str(report)]
                run = measure(side, command, args.rows, work / f"{side}.log", cwd=tree)
                if repeat < 0:
                    continue
                figures = json.loads(report.read_text())
                wall[side].append(run.wall_s)
                table.append(
                    [
                        f"{side} #{repeat + 1}",
                        run.wall_s,
                        figures["engine_startup_seconds"],
                        figures["engine_shutdown_seconds"],
                        run.wall_s - figures["wall_seconds"],
                        run.load_before,
                    ]
                )
        print(
            format_table(
                ["run", "wall s", "start-up s", "shut-down s", "outside clock s", "load"],
                table,
            )
        )
        before, after = statistics.median(wall["before"]), statistics.median(wall["after"])
        print(
            f"\nmedian whole-process wall for {args.rows} rows: before ({args.before}) "
            f"{before:.2f} s, after {after:.2f} s; before / after = {before / after:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
