"""`bench`: the sweep's arithmetic on a fake engine and clock, its output files, the
CLI's errors, `--vs-generate` against a fake generate call, and short runs on the
real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from batching.bench.sweep import (
    ALL,
    as_requests,
    encode_prompts,
    pipeline_config,
    run_bench,
    run_static_batches,
    sweep_sizes,
    synthetic_prompts,
)
from batching.bench.vs_generate import WARMUP_PROMPTS, run_vs_generate
from batching.engine import Engine, EngineOutput, EngineRequest
from batching.records import Request, Sampling
from batching.testing import FakeEngine
from cli.app import app

if TYPE_CHECKING:
    from batching.engines.vllm import VllmEngine

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
    from batching.bench.sweep import pipeline_config

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


@pytest.mark.slow  # draws the plot with matplotlib
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


def test_cli_measures_the_sim_engine_as_run_would_start_it(tmp_path: Path) -> None:
    # The engine choice run has: --engine sim with its timings from --engine-arg.
    out_json = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        ["bench", "-m", "sim", "--engine", "sim", "--prompts", "4", "--batch-sizes", "all",
         "--engine-arg", "step_ms=0", "--engine-arg", "prefill_us_per_token=0",
         "--json", str(out_json)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert [r["label"] for r in data["rows"]] == ["serial", "batch 4", "run pipeline"]
    assert data["settings"]["engine"] == "sim"


def test_cli_refuses_a_model_path_that_is_not_there(tmp_path: Path) -> None:
    # As run does: before vLLM loads for seconds and calls it a bad repo id.
    missing = str(tmp_path / "no-model")
    result = runner.invoke(app, ["bench", "-m", missing])
    assert result.exit_code == 2
    assert result.stderr == f"bizra-batch: error: --model {missing}: no such file or directory\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,zero"],
         "--batch-sizes '1,zero': 'zero' is not a positive number or all"),
        (["--prompt-tokens", "0"], "--prompt-tokens '0': expected positive numbers, e.g. 32,128"),
    ],
)  # fmt: skip
def test_cli_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", "-m", "fake", "--engine", "fake", *args])
    assert result.exit_code == 2
    assert result.stderr == f"bizra-batch: error: {message}\n"


@pytest.mark.slow
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
    assert [r["batch_size"] for r in rows] == [1, 8, None]
    # The speed-up is the batch's rate over the serial one, as the table says. (Not a
    # bound on it: a timed assertion failed on a box busy with other work, 0.45.)
    serial, batched = rows[0], rows[1]
    assert batched["speedup"] == pytest.approx(
        batched["requests_per_second"] / serial["requests_per_second"], rel=0.01
    )


# -- --vs-generate ----------------------------------------------------------------------


class FakeGenerate:
    """LLM.generate's part on a fake engine: every prompt in one go, calls recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[object], list[Sampling]]] = []

    def __call__(
        self, engine: Engine, prompts: Sequence[object], samplings: Sequence[Sampling]
    ) -> list[EngineOutput]:
        self.calls.append((list(prompts), list(samplings)))
        ids = encode_prompts(engine, prompts)  # type: ignore[arg-type]
        for key, (prompt_ids, sampling) in enumerate(zip(ids, samplings, strict=True)):
            engine.add(EngineRequest(key, prompt_ids, sampling))
        outputs: dict[int, EngineOutput] = {}
        while engine.has_unfinished():
            outputs.update((out.key, out) for out in engine.step())
        return [outputs[key] for key in range(len(prompts))]


def test_vs_generate_runs_the_same_rows_and_settings_on_both_sides() -> None:
    engine = FakeEngine(max_num_seqs=4)
    rows = as_requests([f"prompt number {i}" for i in range(12)])
    rows[3] = Request(index=3, id=3, line=4, prompt="short", sampling=Sampling(max_tokens=2))
    generate = FakeGenerate()
    result = run_vs_generate(
        engine, rows, Sampling(max_tokens=5, temperature=0.0), pipeline_config(chunk_size=4),
        generate=generate, clock=StepClock(),
    )  # fmt: skip
    # A warm-up over the first rows, then one call over every row.
    warm, measured = generate.calls
    assert len(warm[0]) == WARMUP_PROMPTS and result.warmup_prompts == WARMUP_PROMPTS
    assert measured[0] == [row.prompt for row in rows]
    assert measured[1][3] == Sampling(max_tokens=2, temperature=0.0)  # the row's own
    assert measured[1][0] == Sampling(max_tokens=5, temperature=0.0)
    # The fake engine makes min(len(prompt), max_tokens) tokens: equal on both sides.
    assert result.generate.output_tokens == result.pipeline.output_tokens == 11 * 5 + 2
    assert (result.generate.label, result.pipeline.label) == ("LLM.generate", "run pipeline")
    assert result.generate.wall_seconds == 1.0  # the step clock: one read either side
    assert result.rows_ratio == pytest.approx(
        result.generate.wall_seconds / result.pipeline.wall_seconds
    )
    data = result.to_dict()
    assert [row["label"] for row in data["rows"]] == ["LLM.generate", "run pipeline"]
    assert data["pipeline_over_generate"]["requests_per_second"] == round(result.rows_ratio, 4)
    assert not engine.closed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "fake"],
         "--vs-generate compares with vLLM's LLM.generate, which --engine fake does not "
         "have; use --engine vllm"),
        (["--engine", "sim"],
         "--vs-generate compares with vLLM's LLM.generate, which --engine sim does not "
         "have; use --engine vllm"),
        (["--no-pipeline"], "--vs-generate runs the pipeline; leave out --no-pipeline"),
        (["--plot", "b.png"],
         "--plot draws the batch-size sweep, which --vs-generate skips; leave out --plot"),
        (["--batch-sizes", "1,8"],
         "--batch-sizes sets the sweep, which --vs-generate skips; leave out --batch-sizes"),
    ],
)  # fmt: skip
def test_vs_generate_usage_errors_exit_2_before_the_engine_starts(
    args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["bench", "-m", "some/model", "--vs-generate", *args])
    assert result.exit_code == 2
    assert result.stderr == f"bizra-batch: error: {message}\n"


@pytest.mark.vllm
def test_generate_all_matches_the_engine_row_by_row(vllm_engine: VllmEngine) -> None:
    from batching.engines.vllm import generate_all

    prompts: list[str | list[dict[str, str]]] = [
        "The river", [{"role": "user", "content": "Name a bird."}], "A quiet garden",
    ]  # fmt: skip
    samplings = [Sampling(max_tokens=4, temperature=0.0), Sampling(max_tokens=3, temperature=0.0),
                 Sampling(max_tokens=5, temperature=0.0, seed=1)]  # fmt: skip
    raw = generate_all(vllm_engine, prompts, samplings)
    encoded = encode_prompts(vllm_engine, prompts)
    for key, (ids, sampling) in enumerate(zip(encoded, samplings, strict=True)):
        vllm_engine.add(EngineRequest(100 + key, ids, sampling))
    ours: dict[int, EngineOutput] = {}
    while vllm_engine.has_unfinished():
        ours.update((out.key - 100, out) for out in vllm_engine.step())
    for key, out in enumerate(raw):
        assert (out.key, out.text, out.completion_tokens, out.prompt_tokens) == (
            key, ours[key].text, ours[key].completion_tokens, ours[key].prompt_tokens,
        )  # fmt: skip


@pytest.mark.vllm
def test_vs_generate_on_the_real_engine(tiny_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"prompt": f"Request {i}. Tell me about rivers and gardens."} for i in range(10)]
    rows[2] = {"messages": [{"role": "user", "content": "Name a bird."}], "max_tokens": 2}
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out_json = tmp_path / "vs.json"
    # A child process, as in test_bench_on_the_real_engine.
    child = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "-m", str(tiny_model), "--dtype", "float32",
         "--engine-arg", "enforce_eager=true", "--input", str(source), "--max-tokens", "4",
         "--vs-generate", "--json", str(out_json)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=600, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert lines[0].startswith("bizra-batch bench --vs-generate: 10 prompts, ")
    assert lines[1] == (
        "one engine, loaded once: LLM.generate runs on the vllm.LLM the pipeline drives; "
        "each side warmed up on 8 prompts, untimed"
    )
    table = [line.split("│") for line in lines if line.startswith("│")]
    assert [cells[1].strip() for cells in table] == ["LLM.generate", "run pipeline"]
    assert lines[-1].startswith("pipeline/generate: ")
    data = json.loads(out_json.read_text())
    generate, pipeline = data["rows"]
    assert generate["requests"] == pipeline["requests"] == 10
    # Random weights rarely stop early; the chat row asks for 2 tokens.
    assert generate["output_tokens"] == pipeline["output_tokens"] == 9 * 4 + 2
    # The table shows the same token counts as the JSON.
    assert [int(cells[4].replace(",", "")) for cells in table] == [38, 38]
