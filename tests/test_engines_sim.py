"""The sim engine keeps its published rules exactly: the GPU-pace benchmark's bound
depends on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batching.adapters import ListSink, ListSupply
from batching.config import EngineConfig, InputConfig, RunConfig
from batching.engine import EngineRequest
from batching.engines.sim import SimEngine, bound_seconds, sim_engine_factory
from batching.errors import UsageError
from batching.pipeline import run_rows
from batching.records import Request, Sampling
from cli.app import app


class Clock:
    """Time that passes only when the engine sleeps: runs are exact and instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def request(key: int, prompt: str, max_tokens: int, n: int | None = None) -> EngineRequest:
    return EngineRequest(key, [ord(c) for c in prompt], Sampling(max_tokens=max_tokens, n=n))


def run_to_end(engine: SimEngine) -> list[list[int]]:
    """The keys that finished in each step."""
    finished = []
    while engine.has_unfinished():
        finished.append([out.key for out in engine.step()])
    return finished


def test_a_request_runs_exactly_its_max_tokens_steps_within_the_sequence_limit() -> None:
    clock = Clock()
    engine = SimEngine(max_num_seqs=2, step_ms=10, prefill_us_per_token=0, sleep=clock.sleep)
    for key in range(3):
        engine.add(request(key, "ab", max_tokens=2))
    assert run_to_end(engine) == [[], [0, 1], [], [2]]
    assert clock.sleeps == pytest.approx([0.01] * 4)


def test_admission_stops_at_the_token_budget_but_a_longer_prompt_goes_alone() -> None:
    clock = Clock()
    engine = SimEngine(
        max_num_batched_tokens=5, step_ms=0, prefill_us_per_token=1000, sleep=clock.sleep
    )
    engine.add(request(0, "abc", max_tokens=5))
    engine.add(request(1, "abc", max_tokens=5))
    engine.add(request(2, "x" * 9, max_tokens=5))
    engine.step()
    engine.step()
    engine.step()
    # 3 ms of prefill for each short prompt, in its own step; then 9 ms alone.
    assert clock.sleeps == pytest.approx([0.003, 0.003, 0.009])
    assert engine.last_step_sequences == 3


def test_output_is_the_fake_models_text_with_max_tokens_counted_per_sample() -> None:
    engine = SimEngine(step_ms=0, prefill_us_per_token=0)
    engine.add(request(7, "hello", max_tokens=3, n=2))
    assert engine.step() == engine.step() == []
    (out,) = engine.step()
    assert (out.key, out.prompt_tokens) == (7, 5)
    assert [(s.text, s.finish_reason, s.tokens) for s in out.all_samples()] == [
        ("oll", "length", 3),
        ("oll", "length", 3),
    ]
    assert out.completion_tokens == 6
    assert engine.last_step_sequences == 2


def test_an_aborted_request_frees_its_slots_and_never_finishes() -> None:
    engine = SimEngine(max_num_seqs=1, step_ms=0, prefill_us_per_token=0)
    engine.add(request(0, "a", max_tokens=3))
    engine.add(request(1, "b", max_tokens=1))
    assert engine.step() == []
    engine.abort([0])
    assert run_to_end(engine) == [[1]]
    assert not engine.has_unfinished()


def test_a_prompt_as_long_as_the_model_is_refused() -> None:
    engine = SimEngine(max_model_len=4)
    with pytest.raises(Exception, match="prompt is 4 tokens, the model takes at most 4"):
        engine.add(request(0, "abcd", max_tokens=1))


def test_a_file_whose_longest_answer_dominates_runs_in_exactly_the_bound() -> None:
    clock = Clock()
    max_num_seqs = 8
    engine = SimEngine(max_num_seqs=max_num_seqs, sleep=clock.sleep)
    max_tokens = [80] + [3 + key % 5 for key in range(1, 60)]
    prompts = [5 + key % 7 for key in range(60)]
    for key, (tokens, length) in enumerate(zip(max_tokens, prompts, strict=True)):
        engine.add(request(key, "p" * length, max_tokens=tokens))
    run_to_end(engine)
    bound = bound_seconds(max_tokens, prompts, max_num_seqs=max_num_seqs)
    assert sum(clock.sleeps) == pytest.approx(bound)


def test_through_the_pipeline_occupancy_is_the_time_weighted_share_of_slots() -> None:
    clock = Clock()
    rows = [
        Request(index=i, id=i, line=i + 1, prompt="ab", sampling=Sampling(max_tokens=2))
        for i in range(5)
    ]

    config = RunConfig(input=InputConfig(path="-"))
    engine = SimEngine(max_num_seqs=4, step_ms=10, prefill_us_per_token=0, sleep=clock.sleep)
    sink = ListSink()
    report = run_rows(
        ListSupply(rows), sink, lambda: engine, config, clock=clock, encode_ahead=False
    )
    # Steps 1-2 run four sequences, steps 3-4 one: (4 + 4 + 1 + 1) / (4 steps x 4 slots).
    assert report.engine_occupancy == pytest.approx(10 / 16)
    assert report.engine_capacity == 4
    assert [r.completion_tokens for r in sink.results] == [2] * 5


def test_the_factory_takes_sizes_from_the_engine_options_and_timings_from_engine_args() -> None:
    factory = sim_engine_factory(
        EngineConfig(
            model="sim",
            max_num_seqs=1024,
            max_num_batched_tokens=100,
            extra={"step_ms": 2, "prefill_us_per_token": 0.5},
        )
    )
    engine = factory()
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == (1024, 100)
    assert (engine.step_ms, engine.prefill_us_per_token) == (2.0, 0.5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"steps_ms": 1},
            "--engine-arg steps_ms: the sim engine takes step_ms, prefill_us_per_token",
        ),
        ({"step_ms": -1}, "--engine-arg step_ms=-1: must be a number of at least 0"),
        ({"step_ms": "fast"}, "--engine-arg step_ms=fast: must be a number of at least 0"),
    ],
)
def test_the_factory_refuses_what_the_sim_does_not_take(
    extra: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        sim_engine_factory(EngineConfig(model="sim", extra=extra))
    assert str(caught.value) == message


def test_run_engine_sim_writes_the_fake_output_with_full_length_and_reports_occupancy(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": "abcdef"[: 1 + i % 6], "max_tokens": 3 + i}) + "\n"
            for i in range(40)
        )
    )
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(source),
            "--engine",
            "sim",
            "--max-num-seqs",
            "16",
            "--engine-arg",
            "step_ms=0",
            "--engine-arg",
            "prefill_us_per_token=0",
            "-o",
            str(out),
            "--report",
            str(report),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(40)]
    assert [r["completion_tokens"] for r in rows] == [3 + i for i in range(40)]
    assert rows[5]["output"] == "fedcba"[: 3 + 5][:6]
    figures = json.loads(report.read_text())
    assert figures["engine_capacity"] == 16
    assert 0 < figures["engine_occupancy"] <= 1
    assert math.isfinite(figures["reading_paused_seconds"])
