"""Probe vLLM throughput: LLM.generate vs our add/step loop, and submission order.

Each measurement runs in a fresh process (same engine settings), so compile caches,
allocator state and prefix caches of one run never help the next. The driver runs
them all and prints one table; a single measurement prints one JSON line.

    python benchmarks/order_probe.py                       # everything, table on stdout
    python benchmarks/order_probe.py --repeat 3 --compile  # torch.compile, 3 runs each
    python benchmarks/order_probe.py --one loop --prompts mixed --order ascending

Questions it answers:
  * start-up: seconds to import vLLM and to construct the engine;
  * does driving `llm.llm_engine` with add/step (all requests added up front) match
    `LLM.generate` on the same prompts (short prompts, max_tokens 16, greedy)?
  * does the order we submit mixed-length prompts in (input, ascending or descending
    length) change rows/s? `--in-flight N` tops the engine up to N requests at a time,
    as the pipeline does, instead of adding everything up front.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "samples"))

from batching.config import EngineConfig  # noqa: E402
from batching.engine import EngineRequest  # noqa: E402
from batching.records import Sampling  # noqa: E402

__all__ = ["main"]

SEED = 99


def _prompts(kind: str, count: int) -> list[str]:
    from make_prompts import SHORT_TASKS, SUBJECTS, make_rows

    rng = random.Random(SEED)
    if kind == "short":
        subjects = [s for group in SUBJECTS.values() for s in group]
        return [
            f"{rng.choice(SHORT_TASKS).format(subject=rng.choice(subjects))} ({i})"
            for i in range(count)
        ]
    rows = make_rows(count, seed=SEED)
    return [row.get("prompt") or row["messages"][-1]["content"] for row in rows]


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process."""
    from batching.engines.vllm import VllmEngine, create_vllm_engine

    started = time.perf_counter()
    import vllm

    imported = time.perf_counter()
    extra: dict[str, Any] = {} if args.compile else {"enforce_eager": True}
    config = EngineConfig(model=args.model, dtype=args.dtype, extra=extra)
    engine = create_vllm_engine(config)
    assert isinstance(engine, VllmEngine)
    ready = time.perf_counter()

    prompts = _prompts(args.prompts, args.count)
    sampling = Sampling(max_tokens=args.max_tokens, temperature=0.0)
    # Same warm-up for every mode: first steps pay one-off allocation costs.
    engine.llm.generate(prompts[:8], vllm.SamplingParams(max_tokens=4), use_tqdm=False)

    result: dict[str, Any] = {
        "mode": args.one,
        "prompts": args.prompts,
        "order": args.order,
        "in_flight": args.in_flight,
        "count": len(prompts),
        "max_tokens": args.max_tokens,
        "import_s": round(imported - started, 2),
        "engine_start_s": round(ready - imported, 2),
    }
    load_before = os.getloadavg()[0]
    # CPU seconds as well as wall seconds: on a shared machine other processes stretch
    # the wall time, while the work this process does (all its threads) stays put.
    c0 = time.process_time()
    t0 = time.perf_counter()
    if args.one == "generate":
        params = vllm.SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        completion_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        encode_s = 0.0
    else:
        encoded = engine.encode(prompts)
        ids = [e for e in encoded if isinstance(e, list)]
        assert len(ids) == len(prompts)
        encode_s = time.perf_counter() - t0
        order = list(range(len(ids)))
        if args.order == "ascending":
            order.sort(key=lambda i: len(ids[i]))
        elif args.order == "descending":
            order.sort(key=lambda i: -len(ids[i]))
        pending = deque(EngineRequest(i, ids[i], sampling) for i in order)
        limit = args.in_flight or len(pending)
        in_flight = 0
        completion_tokens = 0
        while pending or engine.has_unfinished():
            while pending and in_flight < limit:
                engine.add(pending.popleft())
                in_flight += 1
            for output in engine.step():
                in_flight -= 1
                completion_tokens += output.completion_tokens
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    engine.close()
    result.update(
        seconds=round(elapsed, 2),
        encode_s=round(encode_s, 3),
        rows_per_s=round(len(prompts) / elapsed, 1),
        cpu_s=round(cpu, 2),
        rows_per_cpu_s=round(len(prompts) / cpu, 1),
        load_avg=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        completion_tokens=completion_tokens,
        output_tokens_per_s=round(completion_tokens / elapsed, 1),
    )
    return result


def _spawn(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    options = {**vars(args), **overrides}
    command = [sys.executable, __file__, "--one", options["one"]]
    for name in ("prompts", "order", "count", "max_tokens", "in_flight", "model", "dtype"):
        command += [f"--{name.replace('_', '-')}", str(options[name])]
    if options["compile"]:
        command.append("--compile")
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"measurement failed: {' '.join(command)}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def _drive(args: argparse.Namespace) -> None:
    plans: list[tuple[str, str, str, int]] = []
    if args.plans in ("all", "generate"):
        plans += [("generate", "short", "input", 16), ("loop", "short", "input", 16)]
    if args.plans in ("all", "orders"):
        plans += [
            ("loop", "mixed", order, args.mixed_max_tokens)
            for order in ("input", "ascending", "descending")
        ]
    runs: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {p: [] for p in plans}
    # Interleaved (a, b, c, a, b, c, ...) so drift in machine load spreads evenly.
    for _ in range(args.repeat):
        for plan in plans:
            mode, prompts, order, max_tokens = plan
            runs[plan].append(
                _spawn(args, one=mode, prompts=prompts, order=order, max_tokens=max_tokens)
            )
    print(
        f"# {args.count} prompts, dtype={args.dtype}, compile={args.compile}, "
        f"in_flight={args.in_flight or 'all'}, {args.repeat} fresh process(es) each"
    )
    print(
        "| mode | prompts | order | max_tokens | rows/s (median) | rows/s runs "
        "| rows per CPU-s (median) | start s (import+engine) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for plan, results in runs.items():
        rates = [r["rows_per_s"] for r in results]
        cpu_rates = [r["rows_per_cpu_s"] for r in results]
        starts = [f"{r['import_s']}+{r['engine_start_s']}" for r in results]
        print(
            f"| {' | '.join(map(str, plan))} | {statistics.median(rates):.1f} | "
            f"{', '.join(map(str, rates))} | {statistics.median(cpu_rates):.1f} | "
            f"{', '.join(starts)} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=("generate", "loop"), help="run one measurement")
    parser.add_argument("--prompts", choices=("short", "mixed"), default="mixed")
    parser.add_argument("--order", choices=("input", "ascending", "descending"), default="input")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--mixed-max-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=0, help="0: add all up front")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--plans", choices=("all", "generate", "orders"), default="all")
    parser.add_argument("--model", default=str(REPO_ROOT / "samples" / "tiny-model"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile (no eager)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_measure(args)))
    else:
        _drive(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
