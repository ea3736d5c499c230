"""Retry policy and failure classification."""

from __future__ import annotations

import random

from batching.engine import EngineDeadError, EngineOutOfMemoryError, PermanentRequestError
from batching.retry import Failure, RetryPolicy, classify


def test_failures_are_classified_by_what_the_pipeline_must_do() -> None:
    assert classify(PermanentRequestError("too long")) is Failure.PERMANENT
    assert classify(EngineDeadError("gone")) is Failure.ENGINE_DEAD
    assert classify(EngineOutOfMemoryError("full")) is Failure.OUT_OF_MEMORY
    assert classify(MemoryError()) is Failure.OUT_OF_MEMORY
    assert classify(RuntimeError("hiccup")) is Failure.TRANSIENT


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_retries=2, sleep=lambda _: None)
    assert [policy.should_retry(n) for n in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy(max_retries=0).should_retry(1)


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap() -> None:
    slept: list[float] = []
    policy = RetryPolicy(
        base_delay_s=1.0, max_delay_s=5.0, sleep=slept.append, rng=random.Random(7)
    )
    caps = {1: 1.0, 2: 2.0, 3: 4.0, 4: 5.0, 9: 5.0}
    for attempt, cap in caps.items():
        delays = [policy.backoff_s(attempt) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap  # jitter spans the whole range
    waited = policy.wait(3)
    assert slept == [waited] and 0.0 <= waited <= 4.0
