"""One run: reader -> grouping -> engine -> reorder buffer -> writer, with a report.

The engine is fed through its streaming interface and topped up after every step,
so it never drains between chunks, and the next chunk is tokenized in an encoder
thread while the engine runs, so nothing of ours runs between its steps but handing
requests over and taking results. Memory is bounded by three numbers, none of which
grows with the input: the chunk size (rows read ahead), the in-flight window (rows
inside the engine; by default 10% above the engine's batch) and the reorder limit
(the bytes finished rows waiting for an earlier one may hold, with the rows waiting
on an identical request still running).

Rows are matched before they are tokenized (`batching.reuse`): a repeat of a
deterministic request waits for the first one's answer instead of running again, and
with a result cache, the rows it holds are answered from it without the engine.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from batching.config import RunConfig
from batching.engine import (
    CountsSequences,
    Engine,
    EngineFactory,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
    multimodal_of,
)
from batching.errors import BatchError
from batching.grouping import ChunkOrder, padding_tokens, plan_order
from batching.interrupts import protected
from batching.ordering import ReorderBuffer
from batching.prefetch import LiveChunks, ReadAhead
from batching.protocols import ProgressSink, ResultSink, RowSupply
from batching.readers import RowPlace, row_place
from batching.records import (
    ERROR_ENGINE,
    ERROR_INVALID_INPUT,
    InvalidRow,
    Request,
    Result,
    Row,
    RowError,
)
from batching.report import Report, ReportCollector
from batching.retry import Failure, RetryPolicy, classify
from batching.reuse import Repeats, Reuse
from batching.tasks import Rerank, task_values

__all__ = ["EngineFailedError", "run_rows"]


class EngineFailedError(BatchError):
    """The engine kept dying after every allowed restart; the run stops (exit 1)."""


@dataclass(slots=True)
class _Pending:
    request: Request
    token_ids: list[int]
    attempts: int = 0
    submitted_at: float = 0.0
    repeats: Repeats | None = None  # rows it answers too, and its cache key


@dataclass(slots=True)
class _Chunk:
    """A chunk as read, its rows that failed before the engine, and the rest encoded
    in submission order (`order` is None when there are none)."""

    rows: list[Row]
    failed: list[Result]
    ready: list[_Pending] = field(default_factory=list)
    order: ChunkOrder | None = None
    padding_avoided: int = 0
    served: list[Result] = field(default_factory=list)  # from the result cache
    failed_repeats: dict[int, Repeats] = field(default_factory=dict)  # by row index


class _NullProgress:
    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        pass


def run_rows(
    supply: RowSupply,
    sink: ResultSink,
    engine_factory: EngineFactory,
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    retry: RetryPolicy | None = None,
    report: ReportCollector | None = None,
    start_index: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    on_result: Callable[[Result], None] | None = None,
    encode_ahead: bool = True,
    place: RowPlace | None = None,
) -> Report:
    """Run every row of `supply` through an engine and write one result per row, in order.

    Pass your own `report` collector to read a partial report after an interrupt.
    `start_index` is the first row `supply` yields (a resumed run skips the rest).
    `on_result` sees each row's result as soon as it is known, before it waits for
    the rows ahead of it (`batching.aio` answers each caller that way).
    `encode_ahead=False` encodes every chunk on this thread, between engine steps:
    slower, but what each step runs no longer depends on thread timing.
    `place` names a row by its index and line at the start of the messages of rows
    that fail here (the engine refused them); `job` passes the source's own
    (`readers.rows_place`), which knows each row's file; by default as
    `readers.row_place` names `config.input`'s.

    >>> import io
    >>> from batching import FakeEngine, InputConfig, OutputConfig, Request, RunConfig
    >>> from batching.writers import open_writer
    >>> class Rows:  # a RowSupply: chunks of rows, and how many to expect
    ...     def chunks(self):
    ...         yield [Request(index=0, id="a", line=1, prompt="Hi"),
    ...                Request(index=1, id="b", line=2, prompt="there")]
    ...     def estimated_total_rows(self):
    ...         return 2
    >>> out = io.BytesIO()
    >>> with open_writer(OutputConfig(), stdout=out) as writer:
    ...     report = run_rows(Rows(), writer, FakeEngine, RunConfig(InputConfig(path="-")))
    >>> report.rows_ok, out.getvalue().count(b"\\n")
    (2, 2)
    """
    collector = report or ReportCollector(clock=clock)
    collector.start()
    place = place or row_place(config.input)
    reuse = Reuse.open(config, collector, place=place)
    runner = _Runner(
        supply=supply,
        sink=sink,
        engine_factory=engine_factory,
        config=config,
        progress=progress or _NullProgress(),
        retry=retry or RetryPolicy(max_retries=config.max_retries),
        report=collector,
        start_index=start_index,
        clock=clock,
        on_result=on_result,
        encode_ahead=encode_ahead,
        place=place,
        reuse=reuse,
    )
    try:
        with _prompt_thread_switches():
            runner.run()
    finally:
        runner.close()
    return collector.finish()


# While an engine step waits on the device, the reader and encoder threads parse and
# tokenize; when the step's wait ends the engine loop needs the GIL back, and Python
# hands it over only every switch interval (5 ms by default). With the sim engine at
# 15 ms a step, steps took 0.9 ms longer than their sleep on average (1.4 s over
# 1,500 steps, 3% of the run); at 0.5 ms that fell to 0.5 ms a step.
_SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def _prompt_thread_switches() -> Iterator[None]:
    """A shorter GIL switch interval for the run, as long as it is not shorter already."""
    before = sys.getswitchinterval()
    if before <= _SWITCH_INTERVAL_S:
        yield
        return
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Runner:
    def __init__(
        self,
        *,
        supply: RowSupply,
        sink: ResultSink,
        engine_factory: EngineFactory,
        config: RunConfig,
        progress: ProgressSink,
        retry: RetryPolicy,
        report: ReportCollector,
        start_index: int,
        clock: Callable[[], float],
        on_result: Callable[[Result], None] | None = None,
        encode_ahead: bool = True,
        place: RowPlace,
        reuse: Reuse | None = None,
    ) -> None:
        self.supply = supply
        self.sink = sink
        self.engine_factory = engine_factory
        self.config = config
        self.progress = progress
        self.retry = retry
        self.report = report
        self.clock = clock
        self.on_result = on_result
        self.encode_ahead = encode_ahead
        self.place = place
        self.reuse = reuse
        # The requests running for their identical rows too, by row index.
        self._leads: dict[int, Repeats] = {}
        # One request until the engine starts and says its batch size (see
        # `RunConfig.max_in_flight`); the first chunk starts it.
        self.window = max(1, config.max_in_flight or 1)
        self._window_from_engine = config.max_in_flight is None
        # Results may wait for one slow early row; past this many bytes we stop
        # reading ahead and let the engine catch up, so the buffer stays bounded.
        self.reorder_limit_bytes = config.reorder_buffer_bytes
        self.reorder = ReorderBuffer(start=start_index)
        self._paused_since: float | None = None  # reading stopped by the reorder limit
        self._sequence_counter: CountsSequences | None = None  # the engine, if it counts
        self.pending: deque[_Pending] = deque()
        self.in_flight: dict[int, _Pending] = {}
        self.chunk_ends: deque[int] = deque()
        self.restarts = 0
        self.deaths_in_a_row = 0  # engine deaths since a row last finished
        self.lethal_in_a_row = 0  # rows found killing the engine since one last finished
        self.default_n = config.sampling.n or 1
        # Started when first needed: a run whose rows are all invalid, or a resume
        # with nothing left to do, never waits for a model to load.
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()  # held to encode aside, and to restart
        self._ahead: ReadAhead[_Chunk] | None = None  # chunks encoded in a thread

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._start_engine()
        return self._engine

    # -- the main loop -------------------------------------------------------------

    def run(self) -> None:
        chunks = self.supply.chunks()
        exhausted = False
        try:
            while True:
                exhausted = self._top_up(chunks, exhausted)
                self._emit()
                if not self.in_flight:
                    if exhausted and not self.pending:
                        break
                    continue
                self._step()
                self._emit()
        finally:
            self._resume_reading()
            self.report.record_reorder(self.reorder.peak_bytes, self.reorder.peak_rows)
            if isinstance(chunks, LiveChunks):
                chunks.close()  # first: it wakes an encoder thread waiting for rows
            if self._ahead is not None:
                self._ahead.close()  # waits for the encoder thread

    def _top_up(self, chunks: Iterator[list[Row]], exhausted: bool) -> bool:
        while len(self.in_flight) < self.window:
            if not self.pending:
                if exhausted:
                    break
                if self._held_bytes() > self.reorder_limit_bytes:
                    if self._paused_since is None:
                        self._paused_since = self.clock()
                    break
                self._resume_reading()
                waited_from = self.clock()
                engine_idle = not self.in_flight
                chunk = self._read(chunks)
                if chunk is None:
                    return True
                if not chunk.rows:
                    break  # nothing ready yet: step what the engine holds
                self._load(chunk)
                # The engine waited on our code: paused mid-batch, or idle while the
                # encoder thread caught up (not while a live pipe was quiet).
                caught_up = self._ahead is not None and not isinstance(chunks, LiveChunks)
                if not engine_idle or caught_up:
                    self.report.record_engine_wait(self.clock() - waited_from)
                continue
            self._submit(self.pending.popleft())
        return exhausted

    def _held_bytes(self) -> int:
        """What finished rows waiting for an earlier one hold, and rows waiting on an
        identical request in flight: one file of one repeated prompt must not be read
        into memory while its first row runs."""
        waiting = 0 if self.reuse is None else self.reuse.waiting_bytes
        return self.reorder.held_bytes + waiting

    def _resume_reading(self) -> None:
        if self._paused_since is not None:
            self.report.record_reading_paused(self.clock() - self._paused_since)
            self._paused_since = None

    def _read(self, chunks: Iterator[list[Row]]) -> _Chunk | None:
        """The next chunk, encoded and ordered; None at the end, and an empty chunk
        when none is ready yet while the engine has work (step it meanwhile).

        Once the engine is running, chunks are encoded a chunk ahead in a thread,
        so tokenizing never happens between engine steps; live input is waited for
        there too, each chunk handed over when full or after `--max-wait-ms`. The
        first chunk is encoded here: it starts the engine, and only if it holds a
        valid row. The run waits for rows only while the engine has nothing to do,
        so results keep coming out.
        """
        if self._ahead is None and self._engine is not None and self.encode_ahead:
            self._ahead = ReadAhead(
                lambda: (self._prepare_aside(rows) for rows in chunks),
                depth=1,
                name="bizra-batch-encoder",
            )
        if self._ahead is not None:
            if self.in_flight and not self._ahead.ready():
                return _Chunk([], [])
            return next(self._ahead, None)
        if isinstance(chunks, LiveChunks):
            rows = chunks.poll(wait=not self.in_flight)
        else:
            rows = next(chunks, None)
        return None if rows is None else self._prepare(rows, lambda: self.engine)

    def _prepare_aside(self, rows: list[Row]) -> _Chunk:
        # In the encoder thread. The lock keeps a restart from closing the engine
        # under an encode; `Engine.encode` is safe beside `step` by contract.
        with self._engine_lock:
            engine = self._engine
            if engine is None:
                raise EngineFailedError("the engine did not restart")
            return self._prepare(rows, lambda: engine)

    def _prepare(self, rows: list[Row], engine: Callable[[], Engine]) -> _Chunk:
        """Encode a chunk and choose its order; touches nothing of the run's state.

        `engine()` is called only when the chunk holds a row for it.
        """
        failed: list[Result] = []
        requests: list[Request] = []
        for row in rows:
            if isinstance(row, InvalidRow):
                failed.append(Result.failed(row, row.error))
            else:
                requests.append(row)
        chunk = _Chunk(rows, failed)
        runs: list[tuple[Request, Repeats | None]] = [(r, None) for r in requests]
        if self.reuse is not None and requests:
            # Before tokenizing: repeats and cached rows are never encoded, and a run
            # whose rows are all in the cache starts no engine.
            sorted_chunk = self.reuse.sort(requests)
            runs, chunk.served = sorted_chunk.runs, sorted_chunk.served
        if not runs:
            return chunk  # nothing for the engine: do not start one for it
        encoder = engine()
        prompts = [r.prompt if r.prompt is not None else (r.messages or ()) for r, _ in runs]
        prepared: list[_Pending] = []
        for (request, repeats), encoded in zip(runs, encoder.encode(prompts), strict=True):
            if isinstance(encoded, PermanentRequestError):
                failed.append(self._failed(request, encoded.error_type, str(encoded)))
            elif not encoded:
                failed.append(self._failed(request, ERROR_INVALID_INPUT, "the prompt is empty"))
            else:
                prepared.append(_Pending(request, encoded, repeats=repeats))
                continue
            if repeats is not None:
                chunk.failed_repeats[request.index] = repeats
        lengths = [len(p.token_ids) for p in prepared]
        chunk.order, order = plan_order(
            [p.token_ids for p in prepared],
            self.config.order,
            adapters=[p.request.adapter for p in prepared],
        )
        # Against input-order static batches of the engine's own batch size.
        chunk.padding_avoided = padding_tokens(lengths, encoder.max_num_seqs) - padding_tokens(
            [lengths[i] for i in order], encoder.max_num_seqs
        )
        chunk.ready = [prepared[i] for i in order]
        return chunk

    def _load(self, chunk: _Chunk) -> None:
        """Record the rows that failed up front; queue the rest in submission order."""
        if not chunk.rows:
            return
        for result in chunk.served:
            self._finish(result)
        self._leads.update(chunk.failed_repeats)
        for result in chunk.failed:
            self._finish(result)
        if chunk.served:
            self.report.record_reuse(hits=len(chunk.served))
        self.chunk_ends.append(chunk.rows[-1].index + 1)
        if chunk.order is None:
            return
        self.report.record_chunk_order(chunk.order)
        self.report.add_padding_avoided(chunk.padding_avoided)
        if self.reuse is None:
            self.pending.extend(chunk.ready)
            return
        for item in chunk.ready:
            if item.repeats is None:
                self.pending.append(item)
                continue
            answered = self.reuse.join(item.repeats)
            if answered is None:
                self._leads[item.request.index] = item.repeats
                self.pending.append(item)
            else:
                for result in answered:
                    self._finish(result)

    def _submit(self, item: _Pending) -> None:
        request = item.request
        engine_request = EngineRequest(
            request.index,
            item.token_ids,
            request.sampling.over(self.config.sampling),
            request.prompt if request.prompt is not None else request.messages,
            request.adapter,
            multimodal_of(item.token_ids),
            request.pooling,
        )
        while True:
            try:
                self.engine.add(engine_request)
            except PermanentRequestError as exc:
                self._finish(self._failed(request, exc.error_type, str(exc)))
                return
            except Exception as exc:
                if classify(exc) is Failure.ENGINE_DEAD:
                    for lost in self._restart_engine():
                        self._submit(lost)
                    continue
                self._fail_or_retry_alone(item, exc)
                return
            item.submitted_at = self.clock()
            self.in_flight[request.index] = item
            return

    def _step(self) -> None:
        try:
            self._step_engine()
        except Exception as exc:
            self._on_step_failure(exc)

    def _step_engine(self) -> None:
        """One engine step, timed for the report; its finished rows completed."""
        started = self.clock()
        outputs = self.engine.step()
        duration = self.clock() - started
        counter = self._sequence_counter
        sequences = counter.last_step_sequences if counter is not None else None
        self.report.record_step(len(self.in_flight), duration, sequences)
        for output in outputs:
            self._complete(output)

    def _complete(self, output: EngineOutput) -> None:
        item = self.in_flight.pop(output.key, None)
        if item is None:  # finished after we aborted it for a retry: already resubmitted
            return
        self.deaths_in_a_row = self.lethal_in_a_row = 0
        request = item.request
        if output.error is not None:
            self._finish(self._failed(request, output.error.type, output.error.message))
            return
        latency_s = self.clock() - item.submitted_at
        if output.pooled is not None and request.pooling is not None:
            values = task_values(
                request.pooling.task, output.pooled, rerank=isinstance(request.messages, Rerank)
            )
            result = Result.pooled(
                request, values, prompt_tokens=output.prompt_tokens, latency_s=latency_s
            )
            self._finish(result)
            return
        multiple = (request.sampling.n or self.default_n) > 1
        # No samples: one without logprobs (see EngineOutput.of_samples), the usual
        # row, whose fields are the output's own.
        if multiple or output.samples:
            result = Result.completed(
                request,
                output.all_samples(),
                prompt_tokens=output.prompt_tokens,
                completion_tokens=output.completion_tokens,
                multiple=multiple,
                latency_s=latency_s,
            )
        else:
            result = Result.completed_one(
                request,
                output.text,
                output.finish_reason,
                prompt_tokens=output.prompt_tokens,
                completion_tokens=output.completion_tokens,
                latency_s=latency_s,
            )
        self._finish(result)

    def _failed(self, request: Request, error_type: str, message: str) -> Result:
        """The record of a row that fails here, its message led by the row's place.

        The schema's messages start with the place, so every error record says
        which row it is; vLLM's own text ("This model's maximum context length...")
        does not.
        """
        return Result.failed(
            request, RowError(error_type, f"{self.place(request.index, request.line)}: {message}")
        )

    def _finish(self, result: Result) -> None:
        self.reorder.push(result)
        if self.on_result is not None:
            self.on_result(result)
        if self._leads and self.reuse is not None:
            repeats = self._leads.pop(result.index, None)
            if repeats is not None:
                for answer in self.reuse.settle(result, repeats):
                    self._finish(answer)

    def _emit(self) -> None:
        # Rows are counted in the report when written, not when finished: after an
        # interrupt the report describes exactly what the output holds.
        with protected():
            ready = self.reorder.pop_ready()
            if not ready:
                return
            self.sink.write(ready)
            self.report.record_results(ready)
            if self.reuse is not None:
                self.reuse.flush()  # one cache transaction per batch written
            durable = False
            while self.chunk_ends and self.reorder.next_index >= self.chunk_ends[0]:
                self.chunk_ends.popleft()
                durable = True
            # At each chunk boundary: flushed and fsynced, so a crash loses only the
            # rows still in flight (and resume picks up after the last whole row).
            self.sink.flush(durable=durable)
        self.progress.update(
            self.reorder.next_index, self.report.output_tokens, self.supply.estimated_total_rows()
        )

    # -- failures ------------------------------------------------------------------

    def _on_step_failure(self, exc: Exception) -> None:
        failure = classify(exc)
        if failure is Failure.ENGINE_DEAD:
            lost = self._restart_engine()
            if self.deaths_in_a_row >= 2:
                # It died again before finishing a single row: one of the rows in
                # flight may be what kills it. Find it instead of feeding it again.
                self._isolate(lost, exc)
            else:
                for item in lost:
                    self._submit(item)
            return
        suspects = self._recall_in_flight()
        if failure is Failure.OUT_OF_MEMORY and self.window > 1:
            self.window = max(1, self.window // 2)
            self.report.record_oom_backoff(self.window)
            self.pending.extendleft(reversed(suspects))
            return
        self._isolate(suspects, exc)

    def _recall_in_flight(self) -> list[_Pending]:
        """Take every in-flight request back out of the engine, in submission order."""
        suspects = list(self.in_flight.values())
        self.in_flight.clear()
        try:
            self.engine.abort(item.request.index for item in suspects)
        except Exception as exc:
            if classify(exc) is not Failure.ENGINE_DEAD:
                raise
            self._restart_engine()  # nothing is in flight in it any more
        return suspects

    def _isolate(self, group: list[_Pending], exc: Exception) -> None:
        """Bisect a failing batch until the rows that fail it are alone.

        Good rows in the batch succeed in the halves that do not hold a bad one; a
        row that fails alone is retried with backoff, then gets an error record.
        Splitting costs no wait: a poison row fails the same way every time, and
        waiting only helps the transient faults the single-row retries cover.
        """
        stack: list[tuple[list[_Pending], Exception]] = [(group, exc)]
        while stack:
            members, error = stack.pop()
            if len(members) == 1:
                self._fail_or_retry_alone(members[0], error)
                continue
            middle = len(members) // 2
            for half in (members[middle:], members[:middle]):
                failed = self._run_group(half)
                if failed is not None:
                    stack.append(failed)

    def _fail_or_retry_alone(self, item: _Pending, error: Exception) -> None:
        deaths_alone = 0  # only deaths with this row alone in the engine convict it
        while True:
            item.attempts += 1
            if deaths_alone >= 2:
                self._record_lethal_row(item, error)
                return
            if not self.retry.should_retry(item.attempts):
                message = f"failed after {item.attempts} attempts: {type(error).__name__}: {error}"
                self._finish(self._failed(item.request, ERROR_ENGINE, message))
                return
            self.report.record_retry()
            self.retry.wait(item.attempts)
            failed = self._run_group([item])
            if failed is None:
                return
            error = failed[1]
            deaths_alone += classify(error) is Failure.ENGINE_DEAD

    def _run_group(self, members: list[_Pending]) -> tuple[list[_Pending], Exception] | None:
        """Run only `members` to completion; on failure return those left unfinished."""
        for item in members:
            self._submit(item)
        while any(m.request.index in self.in_flight for m in members):
            try:
                self._step_engine()
            except Exception as exc:
                if classify(exc) is Failure.ENGINE_DEAD:
                    # Bounded without the restart limit: every death here narrows
                    # the suspects, and _record_lethal_row stops a hopeless engine.
                    return self._restart_engine(counted=False), exc
                return self._recall_in_flight(), exc
            self._emit()
        return None

    def _start_engine(self) -> Engine:
        started = self.clock()
        engine = self.engine_factory()
        self.report.engine_started(self.clock() - started)
        self.report.record_engine_capacity(engine.max_num_seqs)
        self._sequence_counter = engine if isinstance(engine, CountsSequences) else None
        if self._window_from_engine:
            # Once: a restart keeps the window an out-of-memory back-off left.
            self._window_from_engine = False
            self.window = max(1, math.ceil(1.1 * engine.max_num_seqs))
        return engine

    def _record_lethal_row(self, item: _Pending, error: Exception) -> None:
        """A row that kills the engine every time it runs alone gets an error record.

        Several such rows in a row mean the engine is failing, not the rows: stop
        rather than restart the engine once for every row of the input.
        """
        self.lethal_in_a_row += 1
        limit = self.config.max_engine_restarts
        if self.lethal_in_a_row > limit:
            raise EngineFailedError(
                f"the engine died on {self.lethal_in_a_row} rows in a row, each run alone: "
                "it is failing, not the rows; completed rows are saved, rerun with --resume "
                "to continue"
            )
        message = (
            f"the engine died each time this row ran alone ({item.attempts} attempts): "
            f"{type(error).__name__}: {error}"
        )
        self._finish(self._failed(item.request, ERROR_ENGINE, message))

    def _restart_engine(self, counted: bool = True) -> list[_Pending]:
        """Replace a dead engine; return the rows that were in flight in it.

        `--max-engine-restarts` bounds deaths in a row with no row finished between
        them, so a long run survives occasional crashes but not a broken engine.
        """
        self.restarts += 1
        self.report.record_engine_restart()
        if counted:
            self.deaths_in_a_row += 1
        limit = self.config.max_engine_restarts
        if self.deaths_in_a_row > limit:
            raise EngineFailedError(
                f"the engine died {self.deaths_in_a_row} times in a row without finishing a "
                f"row (limit {limit}); completed rows are saved, rerun with --resume to continue"
            )
        lost = list(self.in_flight.values())
        self.in_flight.clear()
        with self._engine_lock:
            # It is dead already; a failing close must not stop the restart.
            if self._engine is not None:
                with contextlib.suppress(Exception):
                    self._engine.close()
            self._engine = None
            self._engine = self._start_engine()
        return lost

    def close(self) -> None:
        try:
            self._emit()
        finally:
            try:
                if self.reuse is not None:
                    self.reuse.close()
            finally:
                if self._engine is not None:
                    started = self.clock()
                    self._engine.close()
                    # Seconds for vLLM to free the model and KV cache: not processing.
                    self.report.engine_stopped(self.clock() - started)
