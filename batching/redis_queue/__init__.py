"""A queue worker over a Redis stream (`bizra-batch worker`); redis-py is the
`redis` extra, imported only when a worker connects.

>>> from batching.redis_queue import StreamNames
>>> StreamNames("prompts").results
'prompts:results'
"""

from __future__ import annotations

from batching.redis_queue.entries import Entry, entry_row, result_fields
from batching.redis_queue.figures import QueueFigures, WorkerReport
from batching.redis_queue.stream import (
    INSTALL_HINT,
    QueueCounts,
    RedisMissingError,
    RedisQueueError,
    RedisStream,
    StreamNames,
    connect,
    redacted_url,
)
from batching.redis_queue.worker import QueueWorker, WorkerSettings

__all__ = [
    "INSTALL_HINT",
    "Entry",
    "QueueCounts",
    "QueueFigures",
    "QueueWorker",
    "RedisMissingError",
    "RedisQueueError",
    "RedisStream",
    "StreamNames",
    "WorkerReport",
    "WorkerSettings",
    "connect",
    "entry_row",
    "redacted_url",
    "result_fields",
]
