"""The asyncio API: concurrent submitters share batches, and each gets its own answer.

Every await is bounded by `asyncio.wait_for`, so a request that is never answered
fails the test instead of hanging it; no test sleeps to wait for a result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from batching.adapters import KeptOpen
from batching.aio import BatchQueue, QueueClosedError, RequestError
from batching.errors import UsageError
from batching.records import ERROR_ENGINE, ERROR_INVALID_INPUT, ERROR_PROMPT_TOO_LONG, Sampling
from batching.retry import RetryPolicy
from batching.testing import FakeEngine, FakeEngineFactory, expected_output

if TYPE_CHECKING:
    from batching.engines.vllm import VllmEngine

T = TypeVar("T")
DEADLINE_S = 60.0
NO_SLEEP = RetryPolicy(max_retries=1, sleep=lambda _: None)


def bounded(awaitable: Awaitable[T]) -> Awaitable[T]:
    return asyncio.wait_for(awaitable, DEADLINE_S)


def test_concurrent_submitters_share_batches_and_each_gets_its_own_output() -> None:
    engine = FakeEngine(max_num_seqs=16)

    async def main() -> tuple[list[str | None], dict[str, Any]]:
        async with BatchQueue(lambda: engine, max_batch_size=32, max_wait_ms=20) as batcher:

            async def one(i: int) -> str | None:
                result = await batcher.submit(f"prompt number {i}", max_tokens=8)
                assert result.ok and result.completion_tokens == 8
                return result.output

            outputs = await bounded(asyncio.gather(*(one(i) for i in range(100))))
            return outputs, batcher.health()

    outputs, health = asyncio.run(main())
    assert outputs == [expected_output(f"prompt number {i}", 8) for i in range(100)]
    assert health["total_requests"] == 100
    assert health["queue_depth"] == 0 and health["in_flight"] == 0
    # 100 requests submitted at once went to the engine together, not one by one.
    assert health["total_batches"] == len(engine.steps) < 100
    assert health["avg_batch_size"] > 1
    assert health["avg_batch_duration_ms"] is not None
    assert engine.closed


def test_a_lone_request_is_answered_without_waiting_for_a_full_batch() -> None:
    async def main() -> str | None:
        async with BatchQueue(FakeEngine, max_batch_size=1000, max_wait_ms=5) as batcher:
            return (await bounded(batcher.submit("alone"))).output

    assert asyncio.run(main()) == "enola"


def test_a_failing_request_raises_for_its_caller_alone() -> None:
    factory = FakeEngineFactory([FakeEngine(poison=frozenset({"POISON"}))])

    async def main() -> list[Any]:
        async with BatchQueue(factory, max_batch_size=64, retry=NO_SLEEP) as batcher:
            calls = [
                batcher.submit("fine one"),
                batcher.submit("POISON pill"),  # crashes any batch it runs in
                batcher.submit(""),  # invalid: empty prompt
                batcher.submit("bad temperature", temperature=-1),
                batcher.submit([{"role": "user", "content": "a chat"}], max_tokens=3),
                batcher.submit("fine two", max_tokens=2),
            ]
            return await bounded(asyncio.gather(*calls, return_exceptions=True))

    fine, poison, empty, bad_temperature, chat, short = asyncio.run(main())
    assert fine.output == "eno enif"
    assert chat.output == expected_output("user: a chat", 3)
    assert short.output == "ow"
    assert isinstance(poison, RequestError) and poison.error_type == ERROR_ENGINE
    assert isinstance(empty, RequestError) and empty.error_type == ERROR_INVALID_INPUT
    assert isinstance(bad_temperature, RequestError)
    assert "temperature" in str(bad_temperature)
    # Named alike whether the schema or the engine refused them: by submission order.
    assert str(bad_temperature).startswith("invalid_input: request 3: field 'temperature'")
    assert str(empty).startswith("invalid_input: request 2: field 'prompt'")
    assert str(poison).startswith("engine_error: request 1: failed after")


def test_unknown_sampling_settings_are_a_programming_error() -> None:
    async def main() -> None:
        async with BatchQueue(FakeEngine) as batcher:
            await batcher.submit("x", max_token=3)

    with pytest.raises(TypeError, match="max_token"):
        asyncio.run(main())


def test_an_engine_that_cannot_start_fails_at_start_up() -> None:
    def broken() -> FakeEngine:
        raise OSError("no such model: ./missing")

    async def main() -> None:
        async with BatchQueue(broken):
            pass

    with pytest.raises(OSError, match="missing"):
        asyncio.run(main())


def test_an_engine_that_dies_for_good_fails_waiting_and_later_requests() -> None:
    factory = FakeEngineFactory([FakeEngine(die_at_step=1)])

    async def main() -> tuple[BaseException | None, BaseException | None]:
        async with BatchQueue(factory, max_engine_restarts=1, retry=NO_SLEEP) as batcher:
            first = await bounded(asyncio.gather(batcher.submit("doomed"), return_exceptions=True))
            later: BaseException | None = None
            try:
                await batcher.submit("after")
            except QueueClosedError as exc:
                later = exc
            assert not batcher.health()["running"]
            return first[0], later

    first, later = asyncio.run(main())
    assert isinstance(first, QueueClosedError) and "died" in str(first)
    assert isinstance(later, QueueClosedError)


# -- the tiny model --------------------------------------------------------------


@pytest.mark.vllm
def test_concurrent_submitters_on_the_tiny_model(vllm_engine: VllmEngine) -> None:
    prompts = [f"The number {i} is" for i in range(12)]
    too_long = "word " * (vllm_engine.max_model_len + 10)

    async def main() -> tuple[list[Any], dict[str, Any]]:
        greedy = Sampling(max_tokens=6, temperature=0.0)
        async with BatchQueue(
            lambda: KeptOpen(vllm_engine), max_batch_size=8, max_wait_ms=20, sampling=greedy
        ) as batcher:
            calls = [batcher.submit(p) for p in prompts]
            calls.append(batcher.submit(too_long))
            calls.append(batcher.submit(prompts[3]))  # the same prompt again
            results = await bounded(asyncio.gather(*calls, return_exceptions=True))
            return results, batcher.health()

    results, health = asyncio.run(main())
    *answers, long_error, again = results
    for answer in answers:
        assert answer.ok and answer.completion_tokens and answer.output is not None
    assert isinstance(long_error, RequestError)
    assert long_error.error_type == ERROR_PROMPT_TOO_LONG
    # Greedy decoding: batched with others or not, a prompt gets the same output.
    assert again.output == answers[3].output
    assert health["total_requests"] == 14
    assert health["avg_batch_size"] > 1
    assert not vllm_engine.has_unfinished()


def test_max_batch_size_caps_the_requests_in_the_engine_at_once() -> None:
    # An engine slower than the arrivals (4 per step) makes requests pile up: the
    # queue must still hand the engine at most max_batch_size of them at a time.
    engine = FakeEngine(max_num_seqs=4)

    async def main() -> dict[str, Any]:
        async with BatchQueue(lambda: engine, max_batch_size=8, max_wait_ms=1) as batcher:
            await bounded(
                asyncio.gather(*(batcher.submit(f"p{i}", max_tokens=2) for i in range(200)))
            )
            return batcher.health()

    health = asyncio.run(main())
    assert health["total_requests"] == 200
    assert 1 < health["avg_batch_size"] <= 8


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"n": 0}, "request 0: field 'n': expected an integer >= 1, found integer 0"),
        (
            {"logprobs": -1},
            "request 0: field 'logprobs': expected an integer >= 0 (top tokens per position), "
            "found integer -1",
        ),
        (
            {"json_schema": "[1]"},
            "request 0: field 'json_schema': expected a JSON Schema object (or its JSON text), "
            "found string '[1]'",
        ),
        (
            {"temperature": float("inf")},
            "request 0: field 'temperature': expected a finite number >= 0, found number inf",
        ),
    ],
)
def test_every_sampling_setting_of_a_request_is_checked_as_a_rows_is(
    setting: dict[str, Any], message: str
) -> None:
    # n, logprobs and json_schema used to reach the engine unchecked.
    async def main() -> BaseException:
        async with BatchQueue(FakeEngine) as batcher:
            (refused,) = await bounded(
                asyncio.gather(batcher.submit("x", **setting), return_exceptions=True)
            )
            return refused

    refused = asyncio.run(main())
    assert isinstance(refused, RequestError)
    assert refused.error_type == ERROR_INVALID_INPUT
    assert str(refused) == f"invalid_input: {message}"


def test_a_valid_setting_outside_a_rows_usual_fields_still_reaches_the_engine() -> None:
    async def main() -> Any:
        async with BatchQueue(FakeEngine) as batcher:
            return await bounded(batcher.submit("abc", n=2, stop=("x",), max_tokens=2))

    result = asyncio.run(main())
    assert result.output == ["cb", "cb"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "chunk size must be at least 1, got 0"),
        ({"max_wait_ms": -1}, "max wait must not be negative, got -1 ms"),
        ({"sampling": Sampling(n=0)}, "--n: expected an integer >= 1, found integer 0"),
    ],
)
def test_a_queue_is_refused_a_config_a_run_would_be_refused(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as refused:
        BatchQueue(FakeEngine, **options)
    assert str(refused.value) == message
