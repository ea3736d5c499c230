"""The Redis side of the worker: a stream read through a consumer group, results
written back, acknowledgements, claims and the dead-letter stream.

The only module that imports `redis` (redis-py, the `redis` extra), lazily in
`connect`, so `bizra-batch --help` and every other command run without it.

Writing is ack-gated, in one Lua script per batch of results (one round trip, as a
pipeline would be, and atomic): for each result the script acknowledges the entry
(XACK) and writes the result (XADD, and SET with a TTL under `--result-keys`) only
if that XACK acknowledged it. A result is therefore written at most once per entry,
whoever computed it: a worker whose entry was claimed by another while it was slow,
or whose reply from Redis was lost with the connection and who sends the batch
again, finds the entry acknowledged already and writes nothing (counted as a
duplicate skipped). A pipeline (MULTI: XADD, SET, XACK) cannot make the write depend
on the XACK's answer, so two workers holding the same claimed entry would both
write. The script makes the `result:<id>` keys it sets, undeclared, which is why the
worker needs one Redis server, not a Cluster.

Every call is retried with backoff when the connection is lost (`RetryPolicy`);
messages name the server with its password masked (`redacted_url`).

>>> redacted_url("redis://:s3cret@queue:6379/0")
'redis://:***@queue:6379/0'
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from batching.errors import BatchError, UsageError
from batching.output_format import dumps
from batching.redis_queue.entries import DATA_FIELD, Entry
from batching.retry import RetryPolicy

__all__ = [
    "INSTALL_HINT",
    "QueueCounts",
    "RedisMissingError",
    "RedisQueueError",
    "RedisStream",
    "StreamNames",
    "connect",
    "redacted_url",
]

T = TypeVar("T")

INSTALL_HINT = "pip install 'bizra-batch[redis]'"

# Per result: XACK, and only if it acknowledged the entry, XADD (and SET). KEYS: the
# stream, the results stream; ARGV: the group, the TTL (0: no keys), the key prefix,
# and the results as one JSON array of [entry id, row id, data]. One argument for the
# batch, not three a result: redis-py packs each argument in Python, and with three
# a result the packing cost more than all the rest of the worker's Redis work
# (25 us a result against 8 us, measured on 20,000 results in batches of 256).
_WRITE_RESULTS = """
local group, ttl, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local results = cjson.decode(ARGV[4])
local written = {}
for i, result in ipairs(results) do
  local entry, id, data = result[1], result[2], result[3]
  if redis.call('XACK', KEYS[1], group, entry) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', id, 'entry', entry, 'data', data)
    if ttl > 0 then redis.call('SET', prefix .. id, data, 'EX', ttl) end
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
"""

# Per entry: XACK, and only if it acknowledged it, XADD to the dead-letter stream.
# ARGV: the group, then (entry id, deliveries, error, data) per entry.
_DEAD_LETTER = """
local group = ARGV[1]
local moved = 0
for at = 2, #ARGV, 4 do
  local entry = ARGV[at]
  if redis.call('XACK', KEYS[1], group, entry) == 1 then
    redis.call('XADD', KEYS[2], '*', 'entry', entry, 'deliveries', ARGV[at + 1],
               'error', ARGV[at + 2], 'data', ARGV[at + 3])
    moved = moved + 1
  end
end
return moved
"""


class RedisMissingError(UsageError):
    """redis-py is not installed (exit 2, with the install hint)."""


class RedisQueueError(BatchError):
    """Redis stayed unreachable after every retry, or refused a call (exit 1)."""


def redacted_url(url: str) -> str:
    """`url` with its password masked, for messages and the report.

    >>> redacted_url("redis://user:pw@host:6379/0"), redacted_url("redis://host/1")
    ('redis://user:***@host:6379/0', 'redis://host/1')
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Where the worker reads and writes.

    >>> StreamNames("prompts").results, StreamNames("prompts").dead_letter
    ('prompts:results', 'prompts:dead')
    """

    stream: str
    group: str = "bizra-batch"
    consumer: str = "bizra-batch"
    results_stream: str | None = None
    dead_letter_stream: str | None = None
    result_key_prefix: str = "result:"

    @property
    def results(self) -> str:
        return self.results_stream or f"{self.stream}:results"

    @property
    def dead_letter(self) -> str:
        return self.dead_letter_stream or f"{self.stream}:dead"


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """The group's backlog: entries no worker has taken yet (None when the server
    cannot tell: Redis before 7), and entries taken but not yet acknowledged."""

    waiting: int | None
    pending: int


def connect(url: str, names: StreamNames, *, retry: RetryPolicy | None = None) -> RedisStream:
    """Open the stream at `url` and create the group if it is missing.

    Raises `RedisMissingError` without redis-py, `UsageError` for a URL redis-py
    cannot parse, `RedisQueueError` if the server stays unreachable.

    >>> connect("redis://127.0.0.1:1/0", StreamNames("p"))  # doctest: +SKIP
    """
    try:
        import redis
    except ImportError:
        raise RedisMissingError(
            f"the worker needs redis-py; install it with: {INSTALL_HINT}"
        ) from None
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
    except ValueError as exc:
        raise UsageError(f"{redacted_url(url)}: not a Redis URL ({exc})") from None
    stream = RedisStream(client, names, where=redacted_url(url), retry=retry)
    stream.ensure_group()
    return stream


class RedisStream:
    """Calls on one stream and its consumer group; safe to use from two threads
    (redis-py's client takes a pooled connection per call)."""

    def __init__(
        self,
        client: Any,
        names: StreamNames,
        *,
        where: str,
        retry: RetryPolicy | None = None,
    ) -> None:
        import redis

        self._client = client
        self._errors: tuple[type[Exception], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
        )
        # A wrong password stays wrong: no retrying it for half a minute.
        self._refused: tuple[type[Exception], ...] = (
            redis.AuthenticationError,
            redis.exceptions.AuthorizationError,
        )
        self._response_error: type[Exception] = redis.ResponseError
        self.names = names
        self.where = where
        self._retry = retry or RetryPolicy(max_retries=8, base_delay_s=0.2, max_delay_s=5.0)
        self._write = client.register_script(_WRITE_RESULTS)
        self._dead = client.register_script(_DEAD_LETTER)
        self._claim_cursor = "0-0"
        self._lock = threading.Lock()
        self.reconnects = 0  # calls that had to be sent again after a lost connection

    def _call(self, what: str, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except self._refused as exc:
                raise RedisQueueError(f"{self.where}: {what} refused: {exc}") from None
            except self._response_error as exc:  # NOGROUP, WRONGTYPE: no retry mends them
                raise RedisQueueError(f"{self.where}: {what}: {exc}") from None
            except self._errors as exc:
                attempt += 1
                if not self._retry.should_retry(attempt):
                    raise RedisQueueError(
                        f"{self.where}: {what} failed {attempt} times, the last: {exc}"
                    ) from None
                with self._lock:
                    self.reconnects += 1
                self._retry.wait(attempt)

    def ensure_group(self) -> None:
        """Create the group at the stream's start (a new group takes every entry
        already there), and the stream if it is missing; an existing group is kept."""
        names = self.names

        def create() -> None:
            try:
                self._client.xgroup_create(names.stream, names.group, id="0", mkstream=True)
            except self._response_error as exc:
                if "BUSYGROUP" not in str(exc):  # the group exists: ours to join
                    raise

        self._call("creating the group", create)

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to `count` new entries for this consumer, waiting up to `block_ms` for one
        (None: not at all)."""
        names = self.names
        reply = self._call(
            "reading",
            lambda: self._client.xreadgroup(
                names.group, names.consumer, {names.stream: ">"}, count=count, block=block_ms
            ),
        )
        entries: list[Entry] = []
        for _stream, items in _stream_replies(reply):
            entries.extend(Entry(entry_id, fields or {}) for entry_id, fields in items)
        return entries

    def claim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over up to `count` entries other consumers have held over `min_idle_ms`
        without acknowledging them (a dead worker's), with their delivery counts."""
        names = self.names
        reply = self._call(
            "claiming",
            lambda: self._client.xautoclaim(
                names.stream,
                names.group,
                names.consumer,
                min_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            ),
        )
        self._claim_cursor = reply[0]
        # Entries deleted from the stream meanwhile come with no fields (Redis 6.2) or
        # not at all (7: it names them apart); either way the group drops them.
        items = [(i, f) for i, f in reply[1] if i is not None and f is not None]
        if not items:
            return []
        times = self._deliveries([entry_id for entry_id, _ in items])
        return [Entry(i, fields, times.get(i, 1)) for i, fields in items]

    def touch(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer holds (XCLAIM JUSTID: the
        delivery count stays), so no worker claims them while they wait or run here."""
        if not entry_ids:
            return
        names = self.names
        self._call(
            "renewing held entries",
            lambda: self._client.xclaim(
                names.stream, names.group, names.consumer, 0, list(entry_ids), justid=True
            ),
        )

    def _deliveries(self, entry_ids: Sequence[str]) -> dict[str, int]:
        names = self.names
        reply = self._call(
            "reading delivery counts",
            lambda: self._client.xpending_range(
                names.stream,
                names.group,
                min=min(entry_ids, key=_id_key),
                max=max(entry_ids, key=_id_key),
                count=len(entry_ids) * 2 + 10,
                consumername=names.consumer,
            ),
        )
        return {item["message_id"]: int(item["times_delivered"]) for item in reply}

    def write_results(
        self, results: Sequence[tuple[str, str, str]], *, ttl_s: int | None
    ) -> list[bool]:
        """Acknowledge each (entry id, row id text, data) and write its result, in
        one atomic call; whether each was written (False: acknowledged already)."""
        if not results:
            return []
        names = self.names
        keys = [names.stream, names.results]
        args = [names.group, ttl_s or 0, names.result_key_prefix, orjson.dumps(results)]
        reply = self._call("writing results", lambda: self._write(keys=keys, args=args))
        return [bool(flag) for flag in reply]

    def dead_letter(self, entries: Sequence[tuple[Entry, str]]) -> int:
        """Move each (entry, error) to the dead-letter stream and acknowledge it;
        how many were moved (an entry acknowledged already is not)."""
        if not entries:
            return 0
        names = self.names
        args: list[Any] = [names.group]
        for entry, error in entries:
            data = entry.fields.get(DATA_FIELD)
            if data is None:
                data = _json_fields(entry.fields)
            args.extend((entry.entry_id, entry.deliveries, error, data))
        keys = [names.stream, names.dead_letter]
        return int(self._call("dead-lettering", lambda: self._dead(keys=keys, args=args)))

    def counts(self) -> QueueCounts:
        """Entries waiting for the group and pending in it, as of now."""
        names = self.names

        def ask() -> QueueCounts:
            waiting: int | None = None
            for group in self._client.xinfo_groups(names.stream):
                if group.get("name") == names.group:
                    lag = group.get("lag")
                    waiting = None if lag is None else int(lag)
            pending = self._client.xpending(names.stream, names.group)
            return QueueCounts(waiting=waiting, pending=int(pending.get("pending", 0)))

        return self._call("counting entries", ask)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _stream_replies(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    # RESP2 answers a list of [stream, entries]; RESP3 a dict of stream -> entries.
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(name, items[0] if items and isinstance(items[0], list) else items)
                for name, items in reply.items()]  # fmt: skip
    return [(name, items) for name, items in reply]


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _json_fields(fields: Any) -> str:
    return dumps(dict(fields)).decode()
