"""Retry policy: how often, how long to wait, and which failures deserve a retry."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from batching.engine import EngineDeadError, EngineOutOfMemoryError, PermanentRequestError

__all__ = ["Failure", "RetryPolicy", "classify"]


class Failure(Enum):
    """What kind of failure an engine error is, which decides what the pipeline does."""

    PERMANENT = "permanent"  # the request itself is bad: error record, no retry
    ENGINE_DEAD = "engine_dead"  # start a new engine and resubmit what was in flight
    OUT_OF_MEMORY = "out_of_memory"  # fewer requests in flight, then resubmit
    TRANSIENT = "transient"  # retry; bisect the batch to isolate a poison row


def classify(exc: BaseException) -> Failure:
    """Map an exception raised by an engine to the pipeline's response.

    >>> classify(EngineDeadError("gone"))
    <Failure.ENGINE_DEAD: 'engine_dead'>
    """
    if isinstance(exc, PermanentRequestError):
        return Failure.PERMANENT
    if isinstance(exc, EngineDeadError):
        return Failure.ENGINE_DEAD
    if isinstance(exc, (EngineOutOfMemoryError, MemoryError)):
        return Failure.OUT_OF_MEMORY
    return Failure.TRANSIENT


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `sleep` is injectable so tests take no time.

    Attempt 1 is the first retry. The wait before it is drawn from
    [0, base_delay_s], before attempt k from [0, min(max_delay_s, base * 2**(k-1))]
    ("full jitter": retries from many rows spread out instead of colliding).

    >>> policy = RetryPolicy(max_retries=3, sleep=lambda s: None)
    >>> policy.should_retry(3), policy.should_retry(4)
    (True, False)
    """

    max_retries: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def should_retry(self, attempt: int) -> bool:
        """Whether retry number `attempt` (1-based) is allowed."""
        return attempt <= self.max_retries

    def backoff_s(self, attempt: int) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** max(attempt - 1, 0))
        return self.rng.uniform(0.0, cap)

    def wait(self, attempt: int) -> float:
        """Sleep before retry `attempt`; return the seconds waited."""
        delay = self.backoff_s(attempt)
        if delay > 0:
            self.sleep(delay)
        return delay
