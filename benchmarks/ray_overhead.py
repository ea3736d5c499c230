"""What `--ray` costs against the single-process run, on the same machine and data.

    .venv/bin/python benchmarks/ray_overhead.py [--rows 20000] [--engine fake|vllm]
        [--model samples/tiny-model] [--max-tokens 16] [--replicas 1] [--repeats 1]

Alternates, `--repeats` times, the same `bizra-batch run` command with and without
`--ray local --replicas N`, each a child process timed from start to exit, and
prints per side the wall seconds, the processing seconds from the run's own
report (wall minus start-up: for Ray, starting Ray and the replicas), and the
ratios Ray / single-process of both. Both outputs are compared byte for byte; a
benchmark whose two sides disagree exits 1.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bizra-ray-bench-") as tmp:
        folder = Path(tmp)
        prompts = folder / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        sides = {"single": [], "ray": []}  # type: dict[str, list[tuple[float, float]]]
        outputs: dict[str, Path] = {}
        for repeat in range(args.repeats):
            for side in sides:
                out = folder / f"{side}-{repeat}.jsonl"
                report = folder / f"{side}-{repeat}.report.json"
                command = bizra_command(prompts, out, args.model, args.max_tokens)
                command += ["--engine", args.engine, "--report", str(report)]
                if args.engine == "vllm":
                    command += ["--dtype", "float32", "--engine-arg", "enforce_eager=true"]
                if side == "ray":
                    command += ["--ray", "local", "--replicas", str(args.replicas)]
                run = measure(side, command, args.rows, folder / f"{side}-{repeat}.log")
                processing = json.loads(report.read_text())["processing_seconds"]
                sides[side].append((run.wall_s, processing))
                outputs[side] = out
        if outputs["single"].read_bytes() != outputs["ray"].read_bytes():
            raise SystemExit("the Ray output differs from the single-process output")

    print(f"checkout {checkout_description()}; {args.rows} rows, engine {args.engine}, "
          f"{args.replicas} replica(s), median of {args.repeats}")  # fmt: skip
    medians = {}
    for side, runs in sides.items():
        wall = statistics.median(w for w, _ in runs)
        processing = statistics.median(p for _, p in runs)
        medians[side] = (wall, processing)
        print(f"  {side:6}  wall {wall:7.2f} s   processing {processing:7.2f} s   "
              f"{args.rows / processing:10,.0f} rows/s")  # fmt: skip
    print(f"ratio ray/single: wall {medians['ray'][0] / medians['single'][0]:.2f}x, "
          f"processing {medians['ray'][1] / medians['single'][1]:.2f}x")  # fmt: skip
    print("outputs identical: yes")


if __name__ == "__main__":
    main()
