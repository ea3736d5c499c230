"""bizra-batch against vLLM's own batch runner on the same OpenAI-format file.

Writes `--rows` short `/v1/chat/completions` requests (one user message each) in
the OpenAI batch format (`{"custom_id", "method", "url", "body"}` per line; vLLM
0.32's run-batch takes chat, not `/v1/completions`), then runs, as whole processes:

  run-batch  python -m vllm.entrypoints.launchers.run_batch -i FILE -o OUT
             --model MODEL --dtype float32 --enforce-eager
  bizra      python -m cli run FILE -m MODEL -o OUT --max-tokens N --temperature 0 -q
             --dtype float32 --engine-arg enforce_eager=true

Each child's end-to-end wall time, and its peak memory: the summed RSS of the
child and every process under it (run-batch starts a separate engine-core
process), sampled with psutil every 0.2 s. Summing RSS counts pages two processes
share twice, the same way for both. Both children get the same
VLLM_CPU_KVCACHE_SPACE, so the KV cache does not differ.

bizra reads the OpenAI file itself where this checkout's `run` has
`--input-format openai`; otherwise (`--bizra-input native`, or an older checkout)
the file is first converted to bizra's own JSONL (`{"id", "messages"}`), outside
the timing. The script prints which.

Both tools run on `--small` requests, then on `--rows`. Prints the raw figures
and, at `--rows`, run-batch wall / bizra wall (above 1: bizra finishes sooner) and
bizra peak / run-batch peak (below 1: bizra needs less); then each tool's peak at
`--rows` over its peak at `--small` (bizra's should stay near 1.0, flat, while
run-batch, which reads the whole file and holds every result, grows).

    .venv/bin/python benchmarks/run_batch_compare.py                  # 10k, then 100k
    .venv/bin/python benchmarks/run_batch_compare.py --rows 2000 --small 200   # quick
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO_ROOT,
    TINY_MODEL,
    format_table,
    make_prompt,
    print_provenance,
    work_folder,
)

__all__ = ["main", "write_openai_file"]

SAMPLE_INTERVAL_S = 0.2


def write_openai_file(path: Path, rows: int, model: str, max_tokens: int) -> None:
    """OpenAI batch-format chat requests (the prompts of `common.make_prompt`)."""
    import random

    rng = random.Random(20250303)
    with path.open("wb") as out:
        for i in range(rows):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": make_prompt(i, rng)}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(orjson.dumps({**line, "body": body}) + b"\n")


def to_native(openai_path: Path, native_path: Path) -> None:
    """The same conversations as bizra's own input rows, id = custom_id."""
    with openai_path.open("rb") as lines, native_path.open("wb") as out:
        for line in lines:
            row = orjson.loads(line)
            native = {"id": row["custom_id"], "messages": row["body"]["messages"]}
            out.write(orjson.dumps(native))
            out.write(b"\n")


def bizra_reads_openai() -> bool:
    from cli.options import InputFormatChoice

    return "openai" in {choice.value for choice in InputFormatChoice}


@dataclass(frozen=True, slots=True)
class TreeRun:
    label: str
    wall_s: float
    peak_tree_rss_bytes: int
    peak_processes: int


def _tree_rss(process: object) -> tuple[int, int]:
    import psutil

    assert isinstance(process, psutil.Process)
    total = 0
    count = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total, count


def run_sampled(label: str, command: list[str], log_path: Path, env: dict[str, str]) -> TreeRun:
    """Run `command`; sample its process tree's RSS until it exits."""
    import psutil

    print(f"  {label}: {shlex.join(command)}", file=sys.stderr, flush=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log, env=env)
        process = psutil.Process(child.pid)
        peak = [0, 0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    rss, count = _tree_rss(process)
                except psutil.NoSuchProcess:
                    return
                peak[0] = max(peak[0], rss)
                peak[1] = max(peak[1], count)
                done.wait(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{label} exited {code}: {shlex.join(command)}\n{tail}")
    return TreeRun(label, wall, peak[0], peak[1])


def _count_lines(path: Path) -> tuple[int, int]:
    """Output lines, and how many of them carry an error (either tool's format)."""
    count = failed = 0
    with path.open("rb") as lines:
        for line in lines:
            row = orjson.loads(line)
            count += 1
            response = row.get("response") or {}
            failed += row.get("error") is not None or response.get("status_code", 200) != 200
    return count, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--small",
        type=int,
        default=10_000,
        help="also run this many requests, to show how each peak grows (0: skip)",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument(
        "--bizra-input",
        choices=["auto", "openai", "native"],
        default="auto",
        help="auto: the OpenAI file where `run` reads it, else a converted copy",
    )
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep its files.")
    args = parser.parse_args(argv)

    print_provenance()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    openai = args.bizra_input == "openai" or (args.bizra_input == "auto" and bizra_reads_openai())
    sizes = [args.small, args.rows] if args.small else [args.rows]
    print(
        f"max_tokens {args.max_tokens}, model {args.model}, "
        f"VLLM_CPU_KVCACHE_SPACE={args.kv_cache_gib}; bizra reads "
        + ("the OpenAI file (--input-format openai)" if openai else "a converted native copy")
    )
    runs: dict[tuple[str, int], TreeRun] = {}
    with work_folder(args.keep, "bizra-run-batch-") as work:
        for rows in sizes:
            for label, run in _compare(work, rows, openai, args, env).items():
                runs[label, rows] = run

    print(
        format_table(
            ["", "requests", "wall s", "requests/s", "peak tree RSS MiB", "processes"],
            [
                [
                    label,
                    rows,
                    r.wall_s,
                    rows / r.wall_s,
                    r.peak_tree_rss_bytes / 2**20,
                    r.peak_processes,
                ]
                for (label, rows), r in runs.items()
            ],
        )
    )
    theirs, ours = runs["run-batch", args.rows], runs["bizra", args.rows]
    print(
        f"{args.rows} requests: run-batch wall / bizra wall: {theirs.wall_s / ours.wall_s:.3f} "
        f"(above 1: bizra sooner); bizra peak RSS / run-batch peak RSS: "
        f"{ours.peak_tree_rss_bytes / theirs.peak_tree_rss_bytes:.3f} (below 1: bizra less)"
    )
    if args.small:
        growth = {
            label: runs[label, args.rows].peak_tree_rss_bytes
            / runs[label, args.small].peak_tree_rss_bytes
            for label in ("run-batch", "bizra")
        }
        print(
            f"peak RSS {args.rows} / {args.small} requests: bizra {growth['bizra']:.3f}, "
            f"run-batch {growth['run-batch']:.3f} (1.0 is flat)"
        )
    return 0


def _compare(
    work: Path, rows: int, openai: bool, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, TreeRun]:
    """Both tools on one file of `rows` requests; each output checked row for row."""
    requests = work / f"requests-{rows}.jsonl"
    write_openai_file(requests, rows, args.model, args.max_tokens)
    bizra_input = requests
    if not openai:
        bizra_input = work / f"requests-{rows}-native.jsonl"
        to_native(requests, bizra_input)
    out = {"run-batch": work / f"run-batch-{rows}.jsonl", "bizra": work / f"bizra-{rows}.jsonl"}
    commands = {
        "run-batch": [
            sys.executable, "-m", "vllm.entrypoints.launchers.run_batch",
            "-i", str(requests), "-o", str(out["run-batch"]),
            "--model", args.model, "--dtype", "float32", "--enforce-eager",
        ],
        "bizra": [
            sys.executable, "-m", "cli", "run", str(bizra_input),
            "-m", args.model, "-o", str(out["bizra"]),
            "--max-tokens", str(args.max_tokens), "--temperature", "0", "-q",
            "--dtype", "float32", "--engine-arg", "enforce_eager=true",
            *(["--input-format", "openai"] if openai else []),
        ],
    }  # fmt: skip
    runs: dict[str, TreeRun] = {}
    for label in ("run-batch", "bizra"):
        out[label].unlink(missing_ok=True)
        print(f"{label} command ({rows} requests): {shlex.join(commands[label])}")
        runs[label] = run_sampled(label, commands[label], work / f"{label}-{rows}.log", env)
        lines, failed = _count_lines(out[label])
        print(f"{label} output: {lines} lines for {rows} requests, {failed} errors")
        if lines != rows or failed:
            raise SystemExit(f"{label}: {lines} lines ({failed} errors), expected {rows}")
        if args.keep is None:
            out[label].unlink()
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
