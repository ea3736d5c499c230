"""`run --task embed` end to end against one raw `LLM.embed` call over the same file.

Writes N prompts of mixed lengths to a temporary folder, then runs, as whole
processes and alternating (bizra, raw, bizra, raw, ...):

  bizra  `python -m cli run FILE -m MODEL -o OUT --task embed -q` (plus the engine
         settings below)
  raw    this file with `--raw`: read the file with orjson, start vLLM as bizra
         starts it (`create_vllm_engine(EngineConfig(model, task="embed"))`: the same
         environment and engine arguments), call `LLM.embed` once over every prompt,
         write JSONL (id, embedding, prompt_tokens).

Each is timed from process start to exit (imports, engine start-up and writing
included), with its CPU seconds and peak RSS. It prints every run's figures, the
bizra/raw rows/s ratio of the medians (target >= 0.95), and the largest difference
between the two outputs' embeddings.

Both sides run float32 and eager by default: on a CPU without AVX-512 BF16 the
tiny model runs 2.7x faster in float32 than in the bfloat16 "auto" picks, and
eager mode skips torch.compile's start-up, which would only add the same seconds
to both sides. `--dtype auto --no-eager` runs vLLM's defaults.

    .venv/bin/python benchmarks/embed_vs_raw.py                      # 20000 rows
    .venv/bin/python benchmarks/embed_vs_raw.py --rows 5000 --repeats 3
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
    iter_output_rows,
    measure,
    print_provenance,
    runs_table,
    summarize,
    work_folder,
    write_prompt_file,
)

__all__ = ["main", "raw_embed"]

TARGET_RATIO = 0.95


def _engine_extra(eager: bool) -> dict[str, object]:
    return {"enforce_eager": True} if eager else {}


def raw_embed(input_path: Path, output_path: Path, model: str, dtype: str, eager: bool) -> None:
    """The baseline: every prompt in memory, one `LLM.embed`, then write it all."""
    from batching.config import EngineConfig
    from batching.engines.vllm import VllmEngine, create_vllm_engine

    with input_path.open("rb") as lines:
        rows = [orjson.loads(line) for line in lines]
    config = EngineConfig(model=model, dtype=dtype, task="embed", extra=_engine_extra(eager))
    engine = create_vllm_engine(config)
    assert isinstance(engine, VllmEngine)
    outputs = engine.llm.embed([row["prompt"] for row in rows], use_tqdm=False)
    with output_path.open("wb") as out:
        for row, result in zip(rows, outputs, strict=True):
            line = {
                "id": row["id"],
                "embedding": result.outputs.embedding,
                "prompt_tokens": len(result.prompt_token_ids),
            }
            out.write(orjson.dumps(line) + b"\n")
    engine.close()


def _bizra_command(input_path: Path, out: Path, model: str, dtype: str, eager: bool) -> list[str]:
    command = [
        sys.executable, "-m", "cli", "run", str(input_path), "-m", model, "-o", str(out),
        "--task", "embed", "--dtype", dtype, "-q",
    ]  # fmt: skip
    return command + (["--engine-arg", "enforce_eager=true"] if eager else [])


def _raw_command(input_path: Path, out: Path, model: str, dtype: str, eager: bool) -> list[str]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--raw", str(input_path), str(out),
        "--model", model, "--dtype", dtype,
    ]  # fmt: skip
    return command + ([] if eager else ["--no-eager"])


def _largest_difference(output: Path, reference: Path, rows: int) -> float:
    """The largest absolute difference between two outputs' embeddings; ids must match."""
    largest = 0.0
    seen = 0
    for got, want in zip(iter_output_rows(output), iter_output_rows(reference), strict=True):
        if got["id"] != want["id"] or got.get("error") is not None:
            raise SystemExit(f"{output}: row {seen} is {got!r:.200}, expected id {want['id']!r}")
        ours, theirs = got["embedding"], want["embedding"]
        assert isinstance(ours, list) and isinstance(theirs, list)
        largest = max(largest, max(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
        seen += 1
    if seen != rows:
        raise SystemExit(f"{output}: {seen} rows, expected {rows}")
    return largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    parser.add_argument(
        "--raw", nargs=2, type=Path, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.raw:
        raw_embed(args.raw[0], args.raw[1], args.model, args.dtype, args.eager)
        return 0

    print_provenance()
    with work_folder(args.keep, "bizra-embed-vs-raw-") as work:
        prompts = work / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        runs: dict[str, list[Measurement]] = {"bizra": [], "raw": []}
        outputs: dict[str, list[Path]] = {"bizra": [], "raw": []}
        for repeat in range(1, args.repeats + 1):
            for label in ("bizra", "raw"):
                out = work / f"{label}-{repeat}.jsonl"
                out.unlink(missing_ok=True)
                make = _bizra_command if label == "bizra" else _raw_command
                command = make(prompts, out, args.model, args.dtype, args.eager)
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

        print(
            f"\n{args.rows} rows, model {args.model}, dtype {args.dtype}, "
            f"eager {args.eager}, {args.repeats} repeats (alternating)"
        )
        print(runs_table(runs))
        stats = {label: summarize(measured) for label, measured in runs.items()}
        ratio = stats["bizra"]["median_rows_per_s"] / stats["raw"]["median_rows_per_s"]
        print(
            f"\nmedian rows/s: bizra {stats['bizra']['median_rows_per_s']:.1f}, "
            f"raw {stats['raw']['median_rows_per_s']:.1f}; ratio {ratio:.3f} "
            f"(target >= {TARGET_RATIO})"
        )
        difference = _largest_difference(outputs["bizra"][0], outputs["raw"][0], args.rows)
        print(f"largest embedding difference, bizra vs raw: {difference:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
