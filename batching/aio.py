"""Prompts submitted one at a time from asyncio code, run in batches on one engine.

The live-pipe machinery, fed by `submit()` instead of a pipe: requests wait in a
queue until `max_batch_size` of them are there or the first has waited
`max_wait_ms`, then go to the engine together, and each caller's awaitable
resolves as soon as its own request finishes. The engine loop is the pipeline's
(`pipeline.run_rows`), run in one background thread by `live_engine.LiveEngine`,
so requests get everything a file's rows get: grouping by length, retries,
isolation of a request that fails its batch, engine restarts. A request that
fails raises `RequestError` for its caller alone; the requests batched with it
are unaffected.

>>> from batching import FakeEngine
>>> async def main() -> None:
...     async with BatchQueue(FakeEngine, max_batch_size=64, max_wait_ms=20) as batcher:
...         result = await batcher.submit("Hello", max_tokens=16)
...         print(result.output, batcher.health()["total_requests"])
>>> asyncio.run(main())
olleH 1
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from batching.config import InputConfig, RunConfig
from batching.engine import EngineFactory
from batching.errors import BatchError
from batching.grouping import Order
from batching.live_engine import LiveEngine, health_figures
from batching.records import SAMPLING_FIELDS, Result, Row, Sampling
from batching.report import ReportCollector
from batching.retry import RetryPolicy
from batching.schema import parse_row

__all__ = ["BatchQueue", "QueueClosedError", "RequestError"]

_FIELDS = InputConfig(path="<submit>")


class RequestError(Exception):
    """One request ended in an error; `result.error` holds its type and message.

    >>> from batching import FakeEngine
    >>> async def ask(prompt: str) -> None:
    ...     async with BatchQueue(FakeEngine) as batcher:
    ...         try:
    ...             await batcher.submit(prompt, max_tokens=4)
    ...         except RequestError as exc:
    ...             print(exc.error_type)
    >>> asyncio.run(ask(""))
    invalid_input
    """

    def __init__(self, result: Result) -> None:
        assert result.error is not None
        super().__init__(f"{result.error.type}: {result.error.message}")
        self.result = result
        self.error_type = result.error.type


class QueueClosedError(BatchError):
    """The queue is closed, or its engine failed for good; nothing more can be run."""


class BatchQueue:
    """An asyncio front to one engine: `await submit(prompt, **sampling)` -> `Result`.

    `max_batch_size` requests at most are in the engine at once (new ones wait in
    the queue until running ones finish), after waiting at most `max_wait_ms` for
    others to join them; `max_in_flight`, if smaller, lowers that cap.
    `sampling` holds the defaults a request's own settings override.
    Use it as `async with`, or call `start()` and `aclose()`.
    """

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        max_batch_size: int = 256,
        max_wait_ms: float = 50.0,
        max_in_flight: int = 512,
        sampling: Sampling | None = None,
        order: Order = "auto",
        max_retries: int = 3,
        max_engine_restarts: int = 3,
        retry: RetryPolicy | None = None,
    ) -> None:
        # Checked as any run's config is (UsageError): a batch size below 1 is a chunk
        # size below 1, a default sampling setting is held to a row's rules.
        config = RunConfig(
            input=dataclasses.replace(_FIELDS, chunk_size=max_batch_size),
            sampling=sampling or Sampling(max_tokens=256),
            order=order,
            max_retries=max_retries,
            max_engine_restarts=max_engine_restarts,
            # The pipeline tops the engine up to max_in_flight from several chunks;
            # without the min, max_batch_size capped a chunk, not the engine's batch.
            max_in_flight=min(max_in_flight, max_batch_size),
            max_wait_ms=max_wait_ms,
        )
        self._report = ReportCollector()
        self._report.start()  # health() may be asked before the first request
        self._engine = LiveEngine(
            engine_factory,
            config,
            on_result=self._answer,
            on_failure=self._fail,
            retry=retry,
            report=self._report,
            place=_place,
            max_wait_s=max_wait_ms / 1000.0,
            # A wrong model path fails in start(), and the first caller does not
            # wait for weights to load.
            eager_start=True,
        )
        self._lock = threading.Lock()  # new requests and their waiters, taken in order
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Result]]] = {}
        self._submitted = 0
        self._finished = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> BatchQueue:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the engine in the background thread; raises what starting it raised.

        Starting here rather than on the first request means a wrong model path
        fails at start-up, and the first caller does not wait for weights to load.
        """
        if self._started:
            raise RuntimeError("the queue was started already")
        self._started = True
        await asyncio.wrap_future(self._engine.start())

    async def aclose(self) -> None:
        """Finish every request submitted so far, then stop the engine."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._engine.close()
        if self._started:
            await asyncio.to_thread(self._engine.join)

    # -- requests --------------------------------------------------------------------

    async def submit(self, prompt: str | Sequence[Mapping[str, Any]], **sampling: Any) -> Result:
        """Run one prompt (a string, or chat messages) and return its result.

        `sampling` takes `Sampling`'s fields (max_tokens, temperature, top_p, top_k,
        seed, stop, n, logprobs, json_schema); unset ones take the queue's defaults.
        Raises `RequestError` if this request fails, `QueueClosedError` if the
        queue is closed or its engine failed for good.
        """
        unknown = set(sampling) - set(SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"submit() got unknown sampling settings: {', '.join(sorted(unknown))}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        with self._lock:
            if not self._started:
                raise QueueClosedError("the queue is not started; use `async with BatchQueue(...)`")
            if self._failure is not None:
                raise QueueClosedError(f"the engine failed: {self._failure}") from self._failure
            if self._closing:
                raise QueueClosedError("the queue is closed")
            index = self._submitted
            self._submitted += 1
            self._waiters[index] = (loop, future)
            # Under the lock: rows must reach the pipeline in index order.
            self._engine.put([_row(index, prompt, sampling)])
        result = await future
        if result.error is not None:
            raise RequestError(result)
        return result

    def health(self) -> dict[str, Any]:
        """Figures for a health check, as of now (`live_engine.health_figures`)."""
        return health_figures(
            self._report.finish(),
            put=self._submitted,
            handed_over=self._engine.handed_over,
            left_engine=self._finished,
            finished=self._finished,
            running=self._started and not self._closing and self._failure is None,
        )

    # -- the engine thread -----------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._failure = exc
            waiting = list(self._waiters.values())
            self._waiters.clear()
        error = QueueClosedError(f"the engine failed: {exc}")
        error.__cause__ = exc
        for waiter_loop, future in waiting:
            _resolve(waiter_loop, future, error=error)

    def _answer(self, result: Result) -> None:
        with self._lock:
            waiter = self._waiters.pop(result.index, None)
            self._finished += 1
        if waiter is not None:
            _resolve(*waiter, value=result)


def _place(index: int, line: int) -> str:
    """A request as `_row` names it in messages (its index), not as a file's line."""
    return f"request {index}"


def _row(index: int, prompt: str | Sequence[Mapping[str, Any]], sampling: Mapping[str, Any]) -> Row:
    """The request as a row, every setting checked as a file's row would be (an
    error is its result): `submit(..., n=0)` fails as a row with `"n": 0` does."""
    obj: dict[str, Any] = dict(sampling)
    if isinstance(prompt, str):
        obj["prompt"] = prompt
    else:
        obj["messages"] = list(prompt)
    return parse_row(
        obj, index=index, line=index + 1, fields=_FIELDS, where=_place(index, index + 1)
    )


def _resolve(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    *,
    value: Any = None,
    error: BaseException | None = None,
) -> None:
    """Settle `future` from another thread, unless its caller gave up on it."""

    def settle() -> None:
        if future.done():  # cancelled by its caller
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    # A loop closed meanwhile has no one left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
