"""The encoder thread against encoding on the main thread, in one process, one engine.

Issue 5 asks that tokenizing never happen between engine steps. Since the change,
`run_rows` encodes each chunk after the first in a thread while the engine runs the
chunk before; `run_rows(encode_ahead=False)` keeps the old way. This starts one
vLLM engine, then runs the same prompt file through `batching.job.run` with each,
alternating, and prints both processing times and the report's `engine_wait_share`
(the share of wall time the engine waited on our code) for every run.

Whole processes would add ~30 s of engine start-up to both sides; one engine shared
by every run leaves only the part the change can move. The main-thread side runs
with the tokenizer's thread pool on (`TOKENIZERS_PARALLELISM=true`, as before the
change), the encoder side with it off (bizra's default on vLLM's CPU backend).

    .venv/bin/python benchmarks/encode_aside.py                  # 20000 rows, 3 each
    .venv/bin/python benchmarks/encode_aside.py --rows 5000 --repeats 6
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batching.adapters import KeptOpen
from batching.config import EngineConfig, InputConfig, OutputConfig, RunConfig
from batching.job import run
from batching.pipeline import run_rows
from batching.records import Sampling
from batching.report import ReportCollector
from benchmarks.common import REPO_ROOT, TINY_MODEL, format_table, write_prompt_file

__all__ = ["main"]

TARGET_WAIT_SHARE = 0.02


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default=str(REPO_ROOT / TINY_MODEL))
    args = parser.parse_args(argv)

    from batching.engines.vllm import create_vllm_engine

    engine = create_vllm_engine(EngineConfig(model=args.model))
    times: dict[bool, list[float]] = {False: [], True: []}
    waits: dict[bool, list[float]] = {False: [], True: []}
    table: list[list[object]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bizra-encode-aside-") as scratch:
            path = Path(scratch) / "prompts.jsonl"
            write_prompt_file(path, args.rows)
            for repeat in range(1, args.repeats + 1):
                for ahead in (False, True):
                    # Read by the tokenizers library at each batch call.
                    os.environ["TOKENIZERS_PARALLELISM"] = "false" if ahead else "true"
                    config = RunConfig(
                        input=InputConfig(path=str(path)),
                        output=OutputConfig(path=f"{scratch}/out-{ahead}.jsonl", overwrite=True),
                        sampling=Sampling(max_tokens=args.max_tokens, temperature=0.0),
                    )
                    started = time.perf_counter()
                    report = run(
                        config,
                        lambda: KeptOpen(engine),
                        report=ReportCollector(gpu_sampler=lambda: None),
                        rows_runner=functools.partial(run_rows, encode_ahead=ahead),
                    )
                    elapsed = time.perf_counter() - started
                    if report.rows_failed:
                        raise SystemExit(f"{report.rows_failed} rows failed")
                    share = float(report.to_dict()["engine_wait_share"] or 0.0)
                    times[ahead].append(elapsed)
                    waits[ahead].append(share)
                    label = "encoder thread" if ahead else "main thread"
                    table.append([f"{label} #{repeat}", f"{elapsed:.2f}", f"{share:.2%}"])
                    print(f"  {table[-1][0]}: {elapsed:.2f} s", file=sys.stderr, flush=True)
            same = (Path(scratch) / "out-False.jsonl").read_bytes() == (
                Path(scratch) / "out-True.jsonl"
            ).read_bytes()
    finally:
        engine.close()

    print(f"{args.rows} rows, max_tokens {args.max_tokens}, one engine, alternating")
    print(format_table(["run", "seconds", "engine_wait_share"], table))
    main_s, aside_s = statistics.mean(times[False]), statistics.mean(times[True])
    print(f"mean seconds: main thread {main_s:.2f}, encoder thread {aside_s:.2f}")
    print(
        f"main/encoder time ratio: {main_s / aside_s:.3f} (above 1: the encoder thread is faster)"
    )
    worst = max(waits[True])
    verdict = "met" if worst < TARGET_WAIT_SHARE else "MISSED"
    print(f"engine_wait_share with the encoder thread, worst run: {worst:.2%} "
          f"(target < {TARGET_WAIT_SHARE:.0%}: {verdict})")  # fmt: skip
    print(f"outputs of the last two runs identical: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
