"""The pipeline at an accelerator's pace: `run --engine sim` against the shortest time
that engine allows.

    .venv/bin/python benchmarks/gpu_pace.py [--rows 20000] [--repeats 1]
        [--cases tail,even,ray1,ray2,ray4] [--extra "--max-in-flight 1126"]

The sim engine (`batching/engines/sim.py`) keeps a GPU's time: 15 ms a step, 30 µs
a prompt token, up to `--max-num-seqs` sequences a step. From its rules a file
cannot run faster than

    max(ceil(sum max_tokens / (replicas * max_num_seqs)), max(max_tokens)) * step_ms
        + sum prompt tokens * prefill_us_per_token / replicas

so every gap between that bound and the measured time is the pipeline's: the engine
waiting for rows, running below capacity, or draining. Cases, each a child process:

- tail: 20k rows whose `max_tokens` have a long tail (lognormal, median 40, at most
  400), and one 1,500-token answer at row 5; one process, 1,024 sequences. The long
  answer takes 1,500 steps and everything else fits beside it (1,075 full steps, and
  no row admitted after that needs more than 400), so the bound is reachable, but
  only if reading never stops while that one row runs. (With a tail up to 1,000,
  rows read late could not finish by step 1,500 in any first-come order: measured,
  1,686 steps.)
- even: 20k rows, `max_tokens` spread evenly over 24..72; one process, 1,024
  sequences.
- rayN: the even file on Ray, N replicas of 256 sequences each.

Prompts are 10..50 characters (one character is one sim token). Prints per case the
processing seconds from the run's report, the process's wall seconds less a one-row
run's (start-up, imports), the bound, both ratios and `engine_occupancy`; medians
over `--repeats`, cases alternated. `--extra` adds flags to every run (to measure
a setting, or the code before a change).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import checkout_description, format_table, measure

from batching.engines.sim import bound_seconds

SEED = 13
LONG_ANSWER = 1500
LONG_ROW = 5
TAIL_CAP = 400


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    file: str  # "tail" or "even"
    replicas: int  # 0: one process, no Ray
    max_num_seqs: int


CASES = {
    "tail": Case("tail", "tail", 0, 1024),
    "even": Case("even", "even", 0, 1024),
    "ray1": Case("ray1", "even", 1, 256),
    "ray2": Case("ray2", "even", 2, 256),
    "ray4": Case("ray4", "even", 4, 256),
}


def write_file(path: Path, kind: str, rows: int) -> tuple[list[int], list[int]]:
    """Write the rows; return their max_tokens and prompt lengths (sim tokens)."""
    rng = random.Random(f"{SEED}-{kind}")
    max_tokens: list[int] = []
    prompts: list[int] = []
    with path.open("wb") as out:
        for i in range(rows):
            prompt = f"Row {i}. " + "x" * rng.randint(2, 42)
            prompt = prompt[: max(10, min(50, len(prompt)))]
            if kind == "tail":
                tokens = LONG_ANSWER if i == LONG_ROW else min(TAIL_CAP, round(rng.lognormvariate(
                    math.log(40), 0.8)))  # fmt: skip
            else:
                tokens = rng.randint(24, 72)
            tokens = max(1, tokens)
            max_tokens.append(tokens)
            prompts.append(len(prompt))
            out.write(orjson.dumps({"id": i, "prompt": prompt, "max_tokens": tokens}) + b"\n")
    return max_tokens, prompts


def command(case: Case, input_path: Path, out_dir: Path, extra: Sequence[str]) -> list[str]:
    command = [
        sys.executable, "-m", "cli", "run", str(input_path), "--engine", "sim",
        "--max-num-seqs", str(case.max_num_seqs), "-o", str(out_dir / f"{case.name}.out.jsonl"),
        "--overwrite", "--report", str(out_dir / f"{case.name}.report.json"), "-q",
    ]  # fmt: skip
    if case.replicas:
        command += ["--ray", "local", "--replicas", str(case.replicas)]
    return command + list(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", default="tail,even,ray1,ray2,ray4")
    parser.add_argument("--extra", default="", help="flags added to every run")
    args = parser.parse_args()
    cases = [CASES[name] for name in args.cases.split(",")]
    extra = shlex.split(args.extra)

    with tempfile.TemporaryDirectory(prefix="gpu-pace-") as tmp:
        folder = Path(tmp)
        files = {}
        for kind in sorted({case.file for case in cases}):
            files[kind] = (folder / f"{kind}.jsonl", *write_file(folder / f"{kind}.jsonl",
                                                                  kind, args.rows))  # fmt: skip
        one_row = folder / "one.jsonl"
        write_file(one_row, "even", 1)
        print(f"checkout {checkout_description()}; extra flags: {args.extra or '(none)'}")
        results: dict[str, list[tuple[float, float, float | None]]] = {c.name: [] for c in cases}
        start_walls: dict[str, list[float]] = {c.name: [] for c in cases}
        for repeat in range(args.repeats):
            for case in cases:
                path = files[case.file][0]
                log = folder / f"{case.name}.log"
                small = measure(
                    f"{case.name} one row #{repeat + 1}",
                    command(case, one_row, folder, extra),
                    1,
                    log,
                )
                start_walls[case.name].append(small.wall_s)
                run = measure(
                    f"{case.name} #{repeat + 1}", command(case, path, folder, extra), args.rows, log
                )
                report = json.loads((folder / f"{case.name}.report.json").read_text())
                results[case.name].append(
                    (report["processing_seconds"], run.wall_s, report.get("engine_occupancy"))
                )
        rows = []
        for case in cases:
            _, max_tokens, prompts = files[case.file]
            bound = bound_seconds(
                max_tokens, prompts, max_num_seqs=case.max_num_seqs, replicas=case.replicas or 1
            )
            processing = statistics.median(r[0] for r in results[case.name])
            wall = statistics.median(r[1] for r in results[case.name])
            less_start = wall - statistics.median(start_walls[case.name])
            occupancies = [r[2] for r in results[case.name] if r[2] is not None]
            occupancy = f"{statistics.median(occupancies):.3f}" if occupancies else "-"
            rows.append(
                [
                    case.name,
                    case.replicas or "-",
                    case.max_num_seqs,
                    round(processing, 2),
                    round(less_start, 2),
                    round(bound, 2),
                    f"{processing / bound:.3f}",
                    f"{less_start / bound:.3f}",
                    occupancy,
                ]
            )
        print(
            format_table(
                [
                    "case",
                    "replicas",
                    "seqs",
                    "processing s",
                    "wall-1row s",
                    "bound s",
                    "processing/bound",
                    "wall-1row/bound",
                    "occupancy",
                ],
                rows,
            )
        )


if __name__ == "__main__":
    main()
