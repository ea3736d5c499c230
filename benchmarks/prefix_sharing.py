"""Shared preambles: bizra-batch (`--order auto`) against one `LLM.generate` in input order.

Real batches repeat system prompts and few-shot preambles. This writes `--rows` rows,
each a preamble drawn at random from `--preambles` distinct ones of about
`--preamble-tokens` tokens, followed by a short question; rows are randomly
interleaved. Both sides run with prefix caching on and the same KV cache, sized
(`--kv-blocks`, default computed) to hold only a fraction of the distinct
preambles: in input order vLLM's LRU cache evicts a preamble before its next row
comes round, while bizra groups each chunk's rows by prefix and prefills each
preamble once per chunk.

  bizra  python -m cli run FILE -m MODEL -o OUT --max-tokens N --temperature 0 -q
         --enable-prefix-caching --engine-arg num_gpu_blocks_override=B ...
  raw    this file with --raw: orjson-read every row, vllm.LLM with the same engine
         arguments and environment, one LLM.generate over all prompts, write JSONL.

Both are whole processes, timed start to exit (engine start-up included), run
alternately; it prints both raw figures and bizra/raw (target >= 1.3).

    .venv/bin/python benchmarks/prefix_sharing.py                    # 5000 rows, 300 preambles
    .venv/bin/python benchmarks/prefix_sharing.py --rows 800 --preambles 60   # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
from pathlib import Path
from typing import Any

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
    work_folder,
)

__all__ = ["main", "write_shared_prefix_file"]

TARGET_RATIO = 1.3
SEED = 20250202
# vLLM's CPU backend's default KV block; on a GPU it is 16. Only full blocks are cached.
BLOCK_SIZE = 128
# The cache holds this share of the distinct preambles' blocks: too few for all of
# them, enough that a chunk's worth of running requests fits.
CACHE_SHARE = 0.4

_WORDS = (
    "policy", "account", "customer", "refund", "shipping", "warranty", "invoice",
    "support", "product", "order", "return", "delivery", "payment", "service",
    "always", "never", "politely", "briefly", "explain", "answer", "check", "confirm",
    "the", "a", "of", "to", "and", "in", "for", "with", "when", "if",
)  # fmt: skip
_QUESTIONS = (
    "Where is my order?", "Can I return a gift?", "Why was I charged twice?",
    "How long is the warranty?", "Do you ship abroad?", "Cancel my subscription.",
)  # fmt: skip


def _token_counter(model: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text).ids)


def write_shared_prefix_file(
    path: Path, rows: int, preambles: int, preamble_tokens: int, count_tokens: Any
) -> float:
    """Write the rows; return the mean preamble length in tokens.

    Each preamble opens with its own number, so preambles share no leading block.
    """
    rng = random.Random(SEED)
    texts: list[str] = []
    lengths: list[int] = []
    for k in range(preambles):
        words = [f"System prompt {k}: you are agent {k} of the help desk."]
        text = " ".join(words)
        while count_tokens(text) < preamble_tokens:
            words.extend(rng.choice(_WORDS) for _ in range(16))
            text = " ".join(words)
        texts.append(text)
        lengths.append(count_tokens(text))
    with path.open("wb") as out:
        for i in range(rows):
            preamble = rng.randrange(preambles)
            prompt = f"{texts[preamble]}\n\nCustomer {i}: {rng.choice(_QUESTIONS)}\nAgent:"
            out.write(orjson.dumps({"id": i, "prompt": prompt}) + b"\n")
    return sum(lengths) / len(lengths)


def _engine_args(model: str, kv_blocks: int) -> dict[str, Any]:
    return {
        "model": model,
        "dtype": "float32",
        "enable_prefix_caching": True,
        "enforce_eager": True,
        "block_size": BLOCK_SIZE,
        "num_gpu_blocks_override": kv_blocks,
    }


def raw_generate(input_path: Path, output_path: Path, kwargs_json: str, max_tokens: int) -> None:
    """The baseline: every row in memory, one `LLM.generate` in input order, write all."""
    from batching.engines.vllm import apply_vllm_env_defaults

    apply_vllm_env_defaults()  # bizra's environment for vLLM, so both match
    import vllm

    with input_path.open("rb") as lines:
        rows = [orjson.loads(line) for line in lines]
    kwargs = json.loads(kwargs_json)
    kwargs["use_tqdm_on_load"] = False
    llm = vllm.LLM(**kwargs)
    params = vllm.SamplingParams(max_tokens=max_tokens, temperature=0)
    outputs = llm.generate([row["prompt"] for row in rows], params, use_tqdm=False)
    with output_path.open("wb") as out:
        for row, result in zip(rows, outputs, strict=True):
            out.write(orjson.dumps({"id": row["id"], "output": result.outputs[0].text}) + b"\n")


def _bizra(prompts: Path, out: Path, args: argparse.Namespace, kv_blocks: int) -> list[str]:
    command = bizra_command(prompts, out, args.model, args.max_tokens)
    engine = _engine_args(args.model, kv_blocks)
    command += ["--dtype", engine.pop("dtype"), "--enable-prefix-caching"]
    del engine["model"], engine["enable_prefix_caching"]
    for key, value in engine.items():
        command += ["--engine-arg", f"{key}={json.dumps(value)}"]
    command += ["--order", args.order, "--chunk-size", str(args.chunk_size)]
    return command


def _mismatches(a: Path, b: Path) -> int:
    return sum(
        x["id"] != y["id"] or x["output"] != y["output"]
        for x, y in zip(iter_output_rows(a), iter_output_rows(b), strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--preambles", type=int, default=300)
    parser.add_argument("--preamble-tokens", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--kv-blocks",
        type=int,
        help=f"KV cache blocks of {BLOCK_SIZE} tokens for both runs (default: "
        f"{CACHE_SHARE * 100:.0f}%% of the distinct preambles' blocks)",
    )
    parser.add_argument("--order", default="auto", help="bizra's --order (default auto)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="bizra's --chunk-size")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    parser.add_argument(
        "--raw", nargs=3, metavar=("INPUT", "OUTPUT", "KWARGS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.raw:
        raw_generate(Path(args.raw[0]), Path(args.raw[1]), args.raw[2], args.max_tokens)
        return 0

    print_provenance()
    with work_folder(args.keep, "bizra-prefix-") as work:
        prompts = work / "prompts.jsonl"
        mean_tokens = write_shared_prefix_file(
            prompts, args.rows, args.preambles, args.preamble_tokens, _token_counter(args.model)
        )
        full_blocks = math.floor(mean_tokens / BLOCK_SIZE)
        kv_blocks = args.kv_blocks or max(64, round(CACHE_SHARE * args.preambles * full_blocks))
        print(
            f"{args.rows} rows from {args.preambles} preambles of {mean_tokens:.0f} tokens on "
            f"average ({full_blocks} cacheable blocks each, {args.preambles * full_blocks} "
            f"in all); KV cache {kv_blocks} blocks of {BLOCK_SIZE} tokens in both runs"
        )
        kwargs = json.dumps(_engine_args(args.model, kv_blocks))
        runs: dict[str, list[Measurement]] = {"bizra": [], "raw": []}
        outputs: dict[str, Path] = {}
        for repeat in range(1, args.repeats + 1):
            for label in ("bizra", "raw"):
                out = work / f"{label}-{repeat}.jsonl"
                out.unlink(missing_ok=True)
                if label == "bizra":
                    command = _bizra(prompts, out, args, kv_blocks)
                else:
                    command = [
                        sys.executable, str(Path(__file__).resolve()), "--raw",
                        str(prompts), str(out), kwargs, "--max-tokens", str(args.max_tokens),
                    ]  # fmt: skip
                if repeat == 1:
                    print(f"{label} command: {shlex.join(command)}")
                runs[label].append(measure(label, command, args.rows, work / f"{label}.log"))
                outputs.setdefault(label, out)

        print(
            format_table(
                ["run", "wall s", "rows/s", "CPU s", "peak RSS MiB", "load before"],
                [
                    [
                        f"{r.label} #{i + 1}",
                        r.wall_s,
                        r.rows_per_s,
                        r.cpu_s,
                        r.peak_rss_bytes / 2**20,
                        r.load_before,
                    ]
                    for label in ("bizra", "raw")
                    for i, r in enumerate(runs[label])
                ],
            )
        )
        best = {label: min(r.wall_s for r in measured) for label, measured in runs.items()}
        ratio = best["raw"] / best["bizra"]
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"bizra {best['bizra']:.2f} s, raw LLM.generate {best['raw']:.2f} s (best of "
            f"{args.repeats}); bizra/raw throughput: {ratio:.3f} (target >= {TARGET_RATIO}: "
            f"{verdict})"
        )
        print(
            f"greedy mismatches bizra vs raw: {_mismatches(outputs['bizra'], outputs['raw'])} "
            f"of {args.rows}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
