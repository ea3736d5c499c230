"""The queue worker's throughput against `run` on the same rows, with the fake engine.

`run` reads the rows from a JSONL file and writes a JSONL file; the worker reads the
same rows from a Redis stream (pushed before the clock starts, as the file is
written before `run` starts) and writes each result to the results stream and
acknowledges its entry, until `--drain` finds the stream empty. Both run in this
process on the same `RunConfig` (batch size, max wait, order) and the same fake
engine, so what differs is the queue: a batch of entries per
XREADGROUP, and one Lua call per batch of finished results (XACK + XADD, and SET
with `--result-keys`), against a file. Repeats alternate the two, so a machine
busy with something else slows both alike; every repeat's figures are printed raw.
Target: the worker at least 0.8x `run`'s rows per second.

    .venv/bin/python benchmarks/worker_throughput.py                 # 100k rows, 3 repeats
    .venv/bin/python benchmarks/worker_throughput.py --rows 20000 --result-keys

Needs redis-server (scripts/setup installs it) and redis-py (the `redis` extra); it
starts its own server on a free port and stops it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.job import run
from batching.records import Sampling
from batching.redis_queue import QueueWorker, StreamNames, WorkerSettings, connect
from batching.testing import FakeEngine
from benchmarks.common import checkout_description, write_prompt_file
from tests.redis_server import redis_server

TARGET_RATIO = 0.8
STREAM = "prompts"


def _config(path: str, chunk_size: int, output: str | None = None) -> RunConfig:
    return RunConfig(
        InputConfig(path=path, chunk_size=chunk_size),
        output=OutputConfig(path=output, overwrite=True),
        sampling=Sampling(max_tokens=16),
        max_wait_ms=50.0,
    )


def _engine(max_num_seqs: int) -> FakeEngine:
    return FakeEngine(max_num_seqs=max_num_seqs)


class Timed:
    """Wall and CPU seconds of this process (every thread; not redis-server's)."""

    def __enter__(self) -> Timed:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    server_cpu: float | None = None  # redis-server's CPU seconds, for the worker

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def time_run(prompts: Path, out: Path, chunk_size: int, max_num_seqs: int) -> tuple[Timed, int]:
    config = _config(str(prompts), chunk_size, str(out))
    with Timed() as timed:
        report = run(config, lambda: _engine(max_num_seqs))
    return timed, report.rows


def time_worker(
    url: str, prompts: Path, chunk_size: int, max_num_seqs: int, ttl_s: int | None
) -> tuple[Timed, int]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    lines = prompts.read_bytes().splitlines()
    for start in range(0, len(lines), 1000):
        pipe = client.pipeline(transaction=False)
        for line in lines[start : start + 1000]:
            pipe.xadd(STREAM, {"data": line})
        pipe.execute()
    server_cpu_s = _server_cpu_s(client)
    stream = connect(url, StreamNames(STREAM, consumer="bench"))
    worker = QueueWorker(
        stream,
        lambda: _engine(max_num_seqs),
        _config("<redis>", chunk_size),
        WorkerSettings(drain=True, result_ttl_s=ttl_s),
    )
    with Timed() as timed:
        report = worker.run()
    stream.close()
    timed.server_cpu = _server_cpu_s(client) - server_cpu_s
    client.close()
    assert report.queue.results_written == len(lines), report.queue
    return timed, report.run.rows


def _server_cpu_s(client: redis.Redis) -> float:
    # redis-server shares the cores with this process: its CPU is part of the cost.
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=256, help="the worker's default")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--result-keys", action="store_true", help="also SET result:<id>")
    args = parser.parse_args(argv)
    ttl_s = 3600 if args.result_keys else None
    print(f"checkout: {checkout_description()}")
    print(
        f"rows: {args.rows}, batch (chunk) size {args.chunk_size}, fake engine "
        f"max_num_seqs {args.max_num_seqs}, max_tokens 16, result keys: {args.result_keys}"
    )
    rates: dict[str, list[float]] = {"run": [], "worker": []}
    cpu_us: dict[str, list[float]] = {"run": [], "worker": []}
    server_us: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prompts = work / "prompts.jsonl"
        write_prompt_file(prompts, args.rows)
        with redis_server(work) as url:
            for repeat in range(1, args.repeats + 1):
                for side in ("run", "worker"):
                    load = os.getloadavg()[0]
                    if side == "run":
                        timed, rows = time_run(prompts, work / "out.jsonl", args.chunk_size,
                                               args.max_num_seqs)  # fmt: skip
                    else:
                        timed, rows = time_worker(url, prompts, args.chunk_size,
                                                  args.max_num_seqs, ttl_s)  # fmt: skip
                    rates[side].append(rows / timed.wall)
                    cpu_us[side].append(timed.cpu / rows * 1e6)
                    server = ""
                    if timed.server_cpu is not None:
                        server_us.append(timed.server_cpu / rows * 1e6)
                        server = f", redis-server cpu {timed.server_cpu:.3f} s"
                    print(f"repeat {repeat} {side:6}: {rows} rows in {timed.wall:.3f} s "
                          f"(cpu {timed.cpu:.3f} s{server}) = {rows / timed.wall:,.0f} rows/s; "
                          f"load {load:.2f}")  # fmt: skip
    run_rate = statistics.median(rates["run"])
    worker_rate = statistics.median(rates["worker"])
    ratio = worker_rate / run_rate
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(
        f"median cpu per row (this process): run {statistics.median(cpu_us['run']):.1f} us, "
        f"worker {statistics.median(cpu_us['worker']):.1f} us "
        f"(+ redis-server {statistics.median(server_us):.1f} us)"
    )
    print(
        f"median: run {run_rate:,.0f} rows/s, worker {worker_rate:,.0f} rows/s; "
        f"worker/run = {ratio:.2f} ({verdict} the {TARGET_RATIO}x target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
