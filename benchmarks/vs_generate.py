"""bizra-batch end to end against one `LLM.generate` call over the same file.

Writes N independent prompts of mixed lengths (no shared prefixes) to a temporary
folder, then runs, as whole processes and alternating (bizra, raw, bizra, raw, ...):

  bizra  `python -m cli run FILE -m MODEL -o OUT --max-tokens N --temperature 0 -q`
  raw    this file with `--raw`: read the file with orjson, start `vllm.LLM` with the
         engine arguments and environment bizra uses, call `LLM.generate` once over
         every prompt (the call `bench --vs-generate` makes), write JSONL.

Each is timed from process start to exit (imports, engine start-up and writing
included) with its CPU seconds and peak RSS from `wait4`. It prints the tables, the
bizra/raw throughput ratio (target >= 0.98), and how many rows' greedy outputs differ.

bizra submits each chunk shortest prompt first (`--order auto` picks length order
for these prompts, which share no prefix), and on vLLM's
CPU backend a step costs more when its sequences differ in length, so by default
the ratio includes that gain; `--order input` submits in file order, as
`LLM.generate` does, and leaves bizra's own overhead alone in the ratio.

    .venv/bin/python benchmarks/vs_generate.py                       # 20000 rows
    .venv/bin/python benchmarks/vs_generate.py --rows 2000 --repeats 3 --order input
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    TINY_MODEL,
    Measurement,
    bizra_command,
    format_table,
    iter_output_rows,
    measure,
    print_provenance,
    runs_table,
    summarize,
    work_folder,
    write_prompt_file,
)

__all__ = ["main", "raw_generate"]

TARGET_RATIO = 0.98


def raw_generate(input_path: Path, output_path: Path, model: str, max_tokens: int) -> None:
    """The baseline: everything in memory, one `LLM.generate`, then write it all.

    The call is `bench --vs-generate`'s (`batching.bench.vs_generate.raw_generate`): the
    engine started as bizra starts it (environment, `EngineConfig(model)`'s engine
    arguments), and each prompt's SamplingParams built as bizra builds them, so the
    two processes differ only in what runs around the engine.
    """
    from batching.bench.vs_generate import raw_generate as generate_once
    from batching.config import EngineConfig
    from batching.engines.vllm import create_vllm_engine
    from batching.records import Sampling

    with input_path.open("rb") as lines:
        rows = [orjson.loads(line) for line in lines]
    engine = create_vllm_engine(EngineConfig(model=model))
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    outputs = generate_once(engine, [row["prompt"] for row in rows], [sampling] * len(rows))
    with output_path.open("wb") as out:
        for row, result in zip(rows, outputs, strict=True):
            out.write(
                orjson.dumps(
                    {
                        "id": row["id"],
                        "output": result.text,
                        "finish_reason": result.finish_reason,
                        "completion_tokens": result.completion_tokens,
                    }
                )
                + b"\n"
            )


def _raw_command(input_path: Path, output_path: Path, model: str, max_tokens: int) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--raw",
        str(input_path), str(output_path), "--model", model, "--max-tokens", str(max_tokens),
    ]  # fmt: skip


def _mismatches(output: Path, reference: Path, rows: int) -> tuple[int, list[str]]:
    """Rows whose output text differs (or whose id is out of place), and a few examples."""
    count = 0
    examples: list[str] = []
    seen = 0
    for index, (got, want) in enumerate(
        zip(iter_output_rows(output), iter_output_rows(reference), strict=True)
    ):
        seen += 1
        if got["id"] != index or want["id"] != index or got["output"] != want["output"]:
            count += 1
            if len(examples) < 3:
                examples.append(
                    f"row {index}: id {got['id']!r} vs {want['id']!r}, "
                    f"{got['output']!r} vs {want['output']!r}"
                )
    if seen != rows:
        raise SystemExit(f"{output}: {seen} rows, expected {rows}")
    return count, examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    parser.add_argument(
        "--order",
        choices=["auto", "input", "length", "prefix", "ascending", "descending"],
        help="Pass --order to bizra (default: bizra's own, auto). `input` submits in "
        "file order as LLM.generate does, which isolates bizra's own overhead.",
    )
    parser.add_argument(
        "--raw", nargs=2, type=Path, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.raw:
        raw_generate(args.raw[0], args.raw[1], args.model, args.max_tokens)
        return 0

    print_provenance()
    with work_folder(args.keep, "bizra-vs-generate-") as work:
        prompts = work / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        runs: dict[str, list[Measurement]] = {"bizra": [], "raw": []}
        outputs: dict[str, list[Path]] = {"bizra": [], "raw": []}
        for repeat in range(1, args.repeats + 1):
            for label in ("bizra", "raw"):
                out = work / f"{label}-{repeat}.jsonl"
                out.unlink(missing_ok=True)
                if label == "bizra":
                    command = bizra_command(prompts, out, args.model, args.max_tokens)
                    command += ["--order", args.order] if args.order else []
                else:
                    command = _raw_command(prompts, out, args.model, args.max_tokens)
                if repeat == 1:
                    print(f"{label} command: {shlex.join(command)}")
                run = measure(label, command, args.rows, work / f"{label}-{repeat}.log")
                print(
                    f"  {label} #{repeat}: {run.wall_s:.2f} s, {run.rows_per_s:.1f} rows/s, "
                    f"{run.cpu_s:.1f} CPU s, peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB, "
                    f"load before {run.load_before:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
                runs[label].append(run)
                outputs[label].append(out)

        reference = outputs["raw"][0]
        print(
            f"\n{args.rows} rows, max_tokens {args.max_tokens}, model {args.model}, "
            f"{args.repeats} repeats (alternating)"
        )
        print(runs_table(runs))
        stats = {label: summarize(measured) for label, measured in runs.items()}
        print()
        print(
            format_table(
                [
                    "",
                    "best s",
                    "median s",
                    "best rows/s",
                    "median rows/s",
                    "median CPU s",
                    "peak RSS MiB",
                ],
                [
                    [
                        label,
                        stats[label]["best_wall_s"],
                        stats[label]["median_wall_s"],
                        stats[label]["best_rows_per_s"],
                        stats[label]["median_rows_per_s"],
                        stats[label]["median_cpu_s"],
                        stats[label]["max_rss_mib"],
                    ]
                    for label in ("bizra", "raw")
                ],
            )
        )
        best_ratio = stats["bizra"]["best_rows_per_s"] / stats["raw"]["best_rows_per_s"]
        median_ratio = stats["bizra"]["median_rows_per_s"] / stats["raw"]["median_rows_per_s"]
        cpu_ratio = stats["raw"]["median_cpu_s"] / stats["bizra"]["median_cpu_s"]
        verdict = "met" if median_ratio >= TARGET_RATIO else "MISSED"
        print(
            f"bizra/raw throughput: best {best_ratio:.3f}, median {median_ratio:.3f} "
            f"(target >= {TARGET_RATIO}: {verdict}); rows per CPU second: {cpu_ratio:.3f}"
        )
        for label in ("bizra", "raw"):
            for repeat, out in enumerate(outputs[label], 1):
                if out == reference:
                    continue
                count, examples = _mismatches(out, reference, args.rows)
                print(f"greedy mismatches, {label} #{repeat} vs raw #1: {count} of {args.rows}")
                for example in examples:
                    print(f"    {example}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
