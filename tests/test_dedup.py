"""Identical deterministic requests run once; every row still gets its own row."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batching.adapters import ListSink, ListSupply
from batching.aio import BatchQueue
from batching.config import InputConfig, RunConfig
from batching.dedup import RecentResults, request_key
from batching.engine import EngineOutput
from batching.pipeline import run_rows
from batching.records import Request, Result, Sampling
from batching.report import Report, ReportCollector
from batching.retry import RetryPolicy
from batching.reuse import Reuse
from batching.testing import FakeEngine

GREEDY = Sampling(temperature=0.0, max_tokens=16)


def rows_of(prompts: Sequence[str], sampling: Sampling | None = None) -> list[Request]:
    return [
        Request(
            index=i,
            id=f"row-{i}",
            line=i + 1,
            prompt=prompt,
            sampling=sampling or Sampling(),
            kept={"n": i},
        )
        for i, prompt in enumerate(prompts)
    ]


def run(
    rows: Sequence[Request],
    *,
    dedup: bool = True,
    chunk_size: int = 3,
    engine: FakeEngine | None = None,
    **settings: Any,
) -> tuple[list[Result], Report, FakeEngine]:
    engine = engine or FakeEngine()
    config = RunConfig(InputConfig("-"), sampling=GREEDY, dedup=dedup, **settings)
    sink = ListSink()
    report = run_rows(
        ListSupply(rows, chunk_size=chunk_size),
        sink,
        lambda: engine,
        config,
        place=lambda index, line: f"in.jsonl:{line}",
    )
    return sink.results, report, engine


def without_latency(results: list[Result]) -> list[dict[str, Any]]:
    return [result.to_dict() for result in results]


PROMPTS = ["alpha", "beta", "alpha", "gamma", "beta", "alpha", "delta", "gamma", "alpha"]


def test_each_repeat_runs_once_and_every_row_keeps_its_own_place_id_and_fields() -> None:
    results, report, engine = run(rows_of(PROMPTS))
    assert sorted(engine.added) == [0, 1, 3, 6]  # the first row of each prompt
    assert [r.index for r in results] == list(range(len(PROMPTS)))
    assert [r.id for r in results] == [f"row-{i}" for i in range(len(PROMPTS))]
    assert [r.kept for r in results] == [{"n": i} for i in range(len(PROMPTS))]
    assert report.rows == len(PROMPTS)
    assert report.rows_deduplicated == len(PROMPTS) - 4


def test_the_output_is_the_same_as_running_every_row() -> None:
    deduplicated, _, _ = run(rows_of(PROMPTS))
    every_row, report, engine = run(rows_of(PROMPTS), dedup=False)
    assert len(engine.added) == len(PROMPTS)
    assert report.rows_deduplicated == 0
    assert without_latency(deduplicated) == without_latency(every_row)


def test_a_repeat_after_its_first_row_finished_is_answered_without_the_engine() -> None:
    # One row in flight at a time: "alpha" has finished long before it comes again.
    results, report, engine = run(rows_of(["alpha", "beta", "alpha"]), chunk_size=1,
                                  max_in_flight=1)  # fmt: skip
    assert engine.added == [0, 1]
    assert results[2].output == results[0].output
    assert report.rows_deduplicated == 1


def test_rows_answered_by_another_row_carry_no_latency_of_their_own() -> None:
    results, _, _ = run(rows_of(["alpha", "alpha"]))
    assert results[0].latency_s is not None
    assert results[1].latency_s is None


def test_sampled_rows_all_run_and_seeded_ones_are_merged() -> None:
    _, report, engine = run(rows_of(["a", "a", "a"], Sampling(temperature=0.7)))
    assert len(engine.added) == 3 and report.rows_deduplicated == 0
    _, report, engine = run(rows_of(["a", "a", "a"], Sampling(temperature=0.7, seed=3)))
    assert len(engine.added) == 1 and report.rows_deduplicated == 2
    _, report, engine = run(rows_of(["a", "a"], Sampling(n=2)))
    assert len(engine.added) == 2 and report.rows_deduplicated == 0


def test_a_row_with_other_sampling_is_another_request() -> None:
    rows = rows_of(["a", "a"])
    rows[1].sampling = Sampling(max_tokens=3)
    _, report, engine = run(rows)
    assert len(engine.added) == 2 and report.rows_deduplicated == 0


def test_a_failing_request_gives_its_repeats_the_same_error_at_their_own_place() -> None:
    results, report, engine = run(rows_of(["bad", "ok", "bad", "bad"]), chunk_size=4,
                                  engine=FakeEngine(reject=frozenset({"bad"})))  # fmt: skip
    assert engine.added == [1]
    errors = [None if r.error is None else r.error.to_dict() for r in results]
    assert errors == [
        {"type": "invalid_request", "message": "in.jsonl:1: rejected by the fake engine"},
        None,
        {"type": "invalid_request", "message": "in.jsonl:3: rejected by the fake engine"},
        {"type": "invalid_request", "message": "in.jsonl:4: rejected by the fake engine"},
    ]
    assert report.rows_failed == 3 and report.rows_deduplicated == 2


def test_a_repeat_of_a_request_that_failed_earlier_is_tried_again() -> None:
    # A failure is never kept: the next repeat of a finished failure runs again.
    engine = FakeEngine(reject=frozenset({"bad"}))
    results, report, _ = run(rows_of(["bad", "bad"]), chunk_size=1, max_in_flight=1,
                             engine=engine)  # fmt: skip
    assert [r.error is not None for r in results] == [True, True]
    assert report.rows_deduplicated == 0


def test_a_chat_and_a_prompt_of_the_same_text_are_different_requests() -> None:
    chat = Request(index=0, id="c", line=1, messages=({"role": "user", "content": "Hi"},))
    plain = Request(index=1, id="p", line=2, prompt="Hi")
    assert request_key(chat, GREEDY) != request_key(plain, GREEDY)


def test_temperature_written_as_an_integer_is_the_same_request() -> None:
    row = Request(index=0, id="a", line=1, prompt="Hi")
    assert request_key(row, Sampling(temperature=0)) == request_key(row, Sampling(temperature=0.0))


def test_repeated_chats_run_once() -> None:
    chat = ({"role": "user", "content": "Hi"},)
    rows = [Request(index=i, id=i, line=i + 1, messages=chat) for i in range(3)]
    results, report, engine = run(rows)
    assert len(engine.added) == 1 and report.rows_deduplicated == 2
    assert all(r.chat for r in results)
    assert len({str(r.output) for r in results}) == 1


def test_the_kept_results_stay_under_their_byte_limit() -> None:
    recent = RecentResults(limit_bytes=10_000)
    for n in range(1_000):
        recent.remember(n.to_bytes(4, "big"), Result(index=n, id=n, output="x" * 100))
    assert recent.held_bytes <= 10_000
    assert recent.get((999).to_bytes(4, "big")) is not None
    assert recent.get((0).to_bytes(4, "big")) is None


@dataclass
class SlowFirstEngine(FakeEngine):
    """Finishes nothing for its first `hold_steps` steps; notes how many chunks had
    been read by then."""

    hold_steps: int = 30
    supply: ListSupply | None = None
    chunks_read_while_held: int = 0

    def step(self) -> list[EngineOutput]:
        if self._step_count < self.hold_steps:
            self._step_count += 1
            self.chunks_read_while_held = self.supply.chunks_read if self.supply else 0
            return []
        return super().step()


def test_rows_waiting_on_a_running_request_stop_reading_past_the_reorder_limit() -> None:
    # 2,000 copies of one request: without a bound, every row would be read (and
    # held) while the first one runs.
    rows = rows_of(["the same prompt"] * 2_000)
    supply = ListSupply(rows, chunk_size=10)
    engine = SlowFirstEngine(supply=supply)
    config = RunConfig(InputConfig("-"), sampling=GREEDY, reorder_buffer_bytes=10_000)
    sink = ListSink()
    # Encoded on this thread, so how far reading goes does not depend on timing.
    report = run_rows(supply, sink, lambda: engine, config, encode_ahead=False)
    # ~250 bytes a waiting row: 40 rows, 4 chunks, then one more chunk to notice.
    assert engine.chunks_read_while_held <= 6
    assert engine.added == [0] and report.rows_deduplicated == 1_999
    assert [r.index for r in sink.results] == list(range(2_000))


def test_a_request_failing_in_the_engine_fails_its_repeats_with_the_same_error() -> None:
    rows = rows_of(["poison", "ok", "poison"])
    engine = FakeEngine(poison=frozenset({"poison"}))
    config = RunConfig(InputConfig("-"), sampling=GREEDY)
    sink = ListSink()
    report = run_rows(
        ListSupply(rows, chunk_size=3),
        sink,
        lambda: engine,
        config,
        retry=RetryPolicy(max_retries=1, sleep=lambda _: None),
        place=lambda index, line: f"in.jsonl:{line}",
    )
    messages = [None if r.error is None else r.error.message for r in sink.results]
    why = "failed after 2 attempts: RuntimeError: a poison request crashed the batch"
    assert messages == [f"in.jsonl:1: {why}", None, f"in.jsonl:3: {why}"]
    assert report.rows_deduplicated == 1


def test_a_batch_queue_answers_identical_requests_at_once_with_one_engine_request() -> None:
    engine = FakeEngine()

    async def ask() -> list[Result]:
        async with BatchQueue(lambda: engine, max_wait_ms=10_000, max_batch_size=3) as queue:
            return await asyncio.gather(
                *(queue.submit("same", temperature=0.0, max_tokens=4) for _ in range(3))
            )

    results = asyncio.run(ask())
    assert [r.output for r in results] == ["emas"] * 3
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert len(engine.added) == 1


def test_the_same_prompt_with_another_lora_adapter_is_another_request() -> None:
    rows = rows_of(["a", "a", "a"])
    rows[1].adapter = "sql"
    rows[2].adapter = "sql"
    keys = {request_key(row, GREEDY) for row in rows}
    assert len(keys) == 2


def test_rows_with_images_are_never_merged() -> None:
    image = {"type": "image_pil", "image_pil": object()}  # a decoded image, as read
    chat = ({"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]},)
    rows = [Request(index=i, id=i, line=i + 1, messages=chat) for i in range(2)]
    config = RunConfig(InputConfig("-"), sampling=GREEDY)
    sorted_chunk = Reuse(config, ReportCollector(), place=lambda index, line: str(line)).sort(rows)
    assert [(r.index, repeats) for r, repeats in sorted_chunk.runs] == [(0, None), (1, None)]


def test_pooling_rows_are_never_merged() -> None:
    from batching.tasks import Pooling

    rows = [
        Request(index=i, id=i, line=i + 1, prompt="same", pooling=Pooling("embed", None, None))
        for i in range(2)
    ]
    config = RunConfig(InputConfig("-"), sampling=GREEDY)
    sorted_chunk = Reuse(config, ReportCollector(), place=lambda index, line: str(line)).sort(rows)
    assert [(r.index, repeats) for r, repeats in sorted_chunk.runs] == [(0, None), (1, None)]
