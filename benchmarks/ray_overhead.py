"""What `--ray` costs against the single-process run, on the same machine and data.

    .venv/bin/python benchmarks/ray_overhead.py [--rows 20000] [--engine fake|vllm]
        [--model samples/tiny-model] [--max-tokens 16] [--replicas 1] [--repeats 1]
        [--before DIR]... [--omp-threads N]

Alternates, `--repeats` times, the same `bizra-batch run` command with and without
`--ray local --replicas N`, each a child process timed from start to exit, and
prints each run's wall seconds, processing seconds from the run's own report
(wall minus start-up: for Ray, starting Ray and the replicas), CPU seconds (the
driver process's own: Ray's workers are not its children) and the 1-minute load
before it; then per side the medians, and the ratios Ray /
single-process of both. Every output is compared byte for byte with the
single-process one; a benchmark whose sides disagree exits 1.

`--before DIR` adds a side `before-1`: `--ray` run from another checkout of
bizra-batch (`git worktree add DIR COMMIT`), alternated with the others, so before
and after a change run on the same box at the same time; repeat it for `before-2`.

`--omp-threads N` sets OMP_NUM_THREADS on every side. A Ray replica's engine gets
OMP_NUM_THREADS = its CPUs (1 on a 2-CPU box) from Ray, while a plain run uses
every core; on a busy box two spinning OpenMP threads made the tiny model's steps
6x slower than one (180 ms against 29 ms), so compare with `--omp-threads 1` for
the Ray path's own cost.

`--engine fake` (the default) needs no model and makes the engine's own time
near zero, so what is left is the Ray path's overhead at its largest: start-up,
pickling rows to and from the replicas, and the driver's in-order writing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO_ROOT,
    TINY_MODEL,
    bizra_command,
    checkout_description,
    measure,
    write_prompt_file,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--engine", choices=("fake", "vllm"), default="fake")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--before", type=Path, action="append", default=[],
        help="another checkout, run with --ray as one more side (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--omp-threads", type=int,
        help="OMP_NUM_THREADS for every side (a Ray replica gets its CPU count, 1 here)",
    )  # fmt: skip
    args = parser.parse_args()
    model = REPO_ROOT / args.model
    if model.exists():  # the same model from every checkout's folder
        args.model = str(model)

    # side -> the checkout it runs from (None: this one) and whether it runs on Ray.
    sides: dict[str, tuple[Path | None, bool]] = {"single": (None, False), "ray": (None, True)}
    for number, checkout in enumerate(args.before):
        sides[f"before-{number + 1}"] = (checkout.resolve(), True)
    threads = [] if args.omp_threads is None else [f"OMP_NUM_THREADS={args.omp_threads}"]
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bizra-ray-bench-") as tmp:
        folder = Path(tmp)
        prompts = folder / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        outputs: dict[str, Path] = {}
        for repeat in range(args.repeats):
            for side, (checkout, on_ray) in sides.items():
                out = folder / f"{side}-{repeat}.jsonl"
                report = folder / f"{side}-{repeat}.report.json"
                command = bizra_command(prompts, out, args.model, args.max_tokens)
                command += ["--engine", args.engine, "--report", str(report)]
                if args.engine == "vllm":
                    command += ["--dtype", "float32", "--engine-arg", "enforce_eager=true"]
                if on_ray:
                    command += ["--ray", "local", "--replicas", str(args.replicas)]
                # Run from the checkout, with it on PYTHONPATH, so the driver and
                # Ray's workers all import its `cli` and `batching` (not an
                # installed copy's); exec keeps the measured pid.
                root = str(checkout or REPO_ROOT)
                in_root = ["sh", "-c", 'cd "$0" && exec "$@"', root]
                command = ["env", f"PYTHONPATH={root}", *threads, *in_root, *command]
                run = measure(side, command, args.rows, folder / f"{side}-{repeat}.log")
                processing = json.loads(report.read_text())["processing_seconds"]
                runs[side].append(Run(repeat, run.wall_s, processing, run.cpu_s, run.load_before))
                outputs[side] = out
        expected = outputs["single"].read_bytes()
        for side, out in outputs.items():
            if out.read_bytes() != expected:
                raise SystemExit(f"the {side} output differs from the single-process output")

    print(f"checkout {checkout_description()}; {args.rows} rows, engine {args.engine}, "
          f"{args.replicas} replica(s), {args.repeats} alternated repeat(s)")  # fmt: skip
    for number, checkout in enumerate(args.before):
        print(f"before-{number + 1}: --ray from {checkout}")
    if args.omp_threads is not None:
        print(f"OMP_NUM_THREADS={args.omp_threads} on every side")
    print(
        f"  {'side':10}  {'#':>2}  {'wall s':>8}  {'processing s':>12}  {'CPU s':>7}  {'load':>5}"
    )
    for side, side_runs in runs.items():
        for r in side_runs:
            print(f"  {side:10}  {r.repeat:2}  {r.wall_s:8.2f}  {r.processing_s:12.2f}  "
                  f"{r.cpu_s:7.2f}  {r.load_before:5.2f}")  # fmt: skip
    print("medians:")
    medians = {}
    for side, side_runs in runs.items():
        wall = statistics.median(r.wall_s for r in side_runs)
        processing = statistics.median(r.processing_s for r in side_runs)
        medians[side] = (wall, processing)
        print(f"  {side:10}  wall {wall:7.2f} s   processing {processing:7.2f} s   "
              f"{args.rows / processing:10,.0f} rows/s")  # fmt: skip
    single_wall, single_processing = medians["single"]
    for side in sides:
        if side != "single":
            wall, processing = medians[side]
            print(f"ratio {side}/single: wall {wall / single_wall:.2f}x, "
                  f"processing {processing / single_processing:.2f}x")  # fmt: skip
    print("outputs identical: yes")


@dataclass(frozen=True, slots=True)
class Run:
    repeat: int
    wall_s: float
    processing_s: float
    cpu_s: float
    load_before: float


if __name__ == "__main__":
    main()
