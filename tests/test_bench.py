"""`bench`: the sweep's arithmetic on a fake engine and clock, its output files, the
CLI's errors, and one short run on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batching.bench import (
    ALL,
    encode_prompts,
    run_bench,
    run_static_batches,
    sweep_sizes,
    synthetic_prompts,
)
from batching.records import Sampling
from batching.testing import FakeEngine
from cli.app import app

runner = CliRunner()


class StepClock:
    """Advances one second on every read: timings count clock reads, not real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_sweep_sizes_clip_to_the_prompt_count_and_drop_repeats() -> None:
    assert sweep_sizes([1, 2, 4, 8, 16, 32, 64, 256, ALL], prompts=10) == [1, 2, 4, 8, 10]
    assert sweep_sizes([ALL, 1], prompts=3) == [3, 1]


def test_static_batches_run_batch_by_batch_and_time_each_request_from_its_batch() -> None:
    engine = FakeEngine(max_num_seqs=8)
    prompts = encode_prompts(engine, ["aaaa", "bb", "c", "ddd", "ee"])
    row = run_static_batches(engine, prompts, Sampling(max_tokens=2), 2, clock=StepClock())
    # Each batch is added whole before the engine steps, and the next waits for it.
    assert engine.steps == [[0, 1], [2, 3], [4]]
    assert row.requests == 5 and row.output_tokens == 2 + 2 + 1 + 2 + 2
    assert row.label == "batch 2"
    # Reads per batch: its start, then one per result; a request's latency is the
    # number of reads between its batch's start and its own result.
    assert row.latency_p50_ms == 1000.0 and row.latency_p95_ms == 2000.0


def test_speedup_and_efficiency_are_against_the_serial_run() -> None:
    engine = FakeEngine(max_num_seqs=4)
    result = run_bench(
        engine,
        [f"prompt {i}" for i in range(8)],
        Sampling(max_tokens=3),
        batch_sizes=[4, ALL],
        pipeline=None,
        clock=StepClock(),
    )
    labels = [r.label for r in result.rows]
    assert labels == ["serial", "batch 4", "batch 8"]
    serial, four, eight = result.rows
    assert serial.speedup == 1.0 and serial.efficiency == 1.0
    # Serial: 1 start + 8 results + 8 batch starts + 1 end read -> fewer reads per
    # request as batches grow; the ratio of rates is the speed-up.
    assert four.speedup == pytest.approx(serial.wall_seconds / four.wall_seconds)
    assert four.efficiency == pytest.approx(four.speedup / 4)  # type: ignore[operator]
    assert eight.efficiency == pytest.approx(eight.speedup / 8)  # type: ignore[operator]
    assert result.to_dict()["rows"][1]["batch_size"] == 4


def test_the_pipeline_row_runs_every_prompt_and_leaves_the_engine_open() -> None:
    engine = FakeEngine(max_num_seqs=4)
    from batching.bench import pipeline_config

    result = run_bench(
        engine, ["x" * n for n in range(1, 11)], Sampling(max_tokens=5), batch_sizes=[],
        pipeline=pipeline_config(chunk_size=4),
    )  # fmt: skip
    pipeline = result.rows[-1]
    assert pipeline.label == "run pipeline" and pipeline.batch_size is None
    assert pipeline.requests == 10
    assert pipeline.output_tokens == sum(min(n, 5) for n in range(1, 11))
    assert pipeline.efficiency is None and pipeline.speedup is not None
    assert not engine.closed  # the bench, not the pipeline, owns the engine


def test_synthetic_prompts_have_the_asked_lengths_and_no_shared_prefix() -> None:
    engine = FakeEngine()  # one token per character
    texts = synthetic_prompts(engine, 6, [20, 60], seed=1)
    lengths = [len(ids) for ids in encode_prompts(engine, texts)]
    for i, n in enumerate(lengths):
        target = [20, 60][i % 2]
        assert target - 8 <= n <= target  # whole words: at most one word short
    assert len({t[:10] for t in texts}) == 6
    with pytest.raises(ValueError):
        synthetic_prompts(engine, 1, [0])


def test_cli_prints_the_table_and_writes_json_and_a_plot(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    result = runner.invoke(
        app,
        ["bench", "-m", "fake", "--engine", "fake", "--prompts", "12", "--batch-sizes", "1,4,all",
         "--json", str(out_json), "--plot", str(plot)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "requests/s" in result.stdout and "batch 12" in result.stdout
    data = json.loads(out_json.read_text())
    assert [r["label"] for r in data["rows"]] == ["serial", "batch 4", "batch 12", "run pipeline"]
    assert data["prompts"] == 12
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_prompts_from_a_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    out_json = tmp_path / "b.json"
    result = runner.invoke(
        app,
        ["bench", "-m", "fake", "--engine", "fake", "--input", str(source), "--prompts", "3",
         "--batch-sizes", "all", "--no-pipeline", "--json", str(out_json)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out_json.read_text())["prompts"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,zero"], "'zero' is not a positive number"),
        (["--prompt-tokens", "0"], "expected positive numbers"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", "-m", "fake", "--engine", "fake", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_plot_without_matplotlib_exits_2_with_the_install_hint(tmp_path: Path) -> None:
    # A child process whose import of matplotlib fails, as on an install without
    # the plot extra; it must stop before starting the engine.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from cli.app import app\n"
        "app(['bench', '-m', 'fake', '--engine', 'fake', '--plot', sys.argv[1]])\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True
    )
    assert child.returncode == 2
    assert "pip install 'bizra-batch[plot]'" in child.stderr
    assert "starting" not in child.stderr


@pytest.mark.vllm
def test_bench_on_the_real_engine(tiny_model: Path, tmp_path: Path) -> None:
    # A child process, as a user runs it: an engine started and closed inside the
    # test process would tear down the process group the session's engine uses.
    out_json = tmp_path / "bench.json"
    child = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "-m", str(tiny_model), "--dtype", "float32",
         "--engine-arg", "enforce_eager=true", "--prompts", "8", "--prompt-tokens", "16",
         "--max-tokens", "4", "--batch-sizes", "1,all", "--json", str(out_json)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=600, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["label"] for r in rows] == ["serial", "batch 8", "run pipeline"]
    assert all(r["output_tokens"] == 8 * 4 for r in rows)  # random weights rarely stop early
    # Batching 8 requests beats running them one at a time on any real engine.
    assert rows[1]["speedup"] > 1.5
