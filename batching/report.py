"""The run report: counters the pipeline feeds during a run, and what they add up to.

`ReportCollector` is fed row by row and step by step; everything it holds is a
counter or a fixed-size histogram, so a 10M-row run costs the same memory as a
10-row one. `finish()` freezes the counts into a `Report`, which
`batching.report_output` renders as a rich table for the user and as JSON for
machines.

Throughput figures are over *processing* time, `wall_seconds -
engine_startup_seconds - engine_shutdown_seconds`: loading weights and capturing
graphs can take minutes, and shutting the engine down seconds, neither scaling with
the input, so folding them in would make a 1k-row run look many times slower than
the same engine on 1M rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batching.gpu_monitor import GpuSampler, GpuUsage, open_gpu_sampler
from batching.quantiles import LatencyHistogram
from batching.records import Result

__all__ = [
    "ReplicaThroughput",
    "Report",
    "ReportCollector",
]


def _ratio(numerator: float, denominator: float | None) -> float | None:
    # No elapsed time means the rate is unknown, not zero.
    if denominator is None or denominator <= 0.0:
        return None
    return numerator / denominator


def _per_second(count: float, rows: int, seconds: float | None) -> float | None:
    # No rows means nothing was timed: "0 req/s" over an empty input or a finished
    # `--resume` would read as a stalled engine.
    if rows == 0:
        return None
    return _ratio(count, seconds)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class ReplicaThroughput:
    """One engine replica's share of a distributed run (`--ray`).

    `rows` counts the rows it ran; invalid input rows never reach a replica's engine.

    `busy_seconds` is the time it spent running batches, start-up excluded, so its
    rates say how fast that replica went while it had work; None when it ran no rows.

    >>> ReplicaThroughput("node-1:42", rows=100, busy_seconds=4.0).rows_per_second
    25.0
    """

    name: str
    rows: int = 0
    output_tokens: int = 0
    busy_seconds: float = 0.0

    @property
    def rows_per_second(self) -> float | None:
        return _per_second(self.rows, self.rows, self.busy_seconds)

    @property
    def output_tokens_per_second(self) -> float | None:
        return _per_second(self.output_tokens, self.rows, self.busy_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "output_tokens": self.output_tokens,
            "busy_seconds": round(self.busy_seconds, 6),
            "requests_per_second": _rounded(self.rows_per_second, 3),
            "output_tokens_per_second": _rounded(self.output_tokens_per_second, 3),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """What a run did, in figures. Absent figures are None (null in JSON), never 0.

    Keys of `to_dict()` (attributes of the same name; the derived ones are properties):

    - rows, rows_ok, rows_failed: output rows, and how many carry an error.
    - wall_seconds: from `ReportCollector.start()` to `finish()`.
    - engine_startup_seconds: time spent starting the engine, summed over restarts;
      None when never reported.
    - engine_shutdown_seconds: time spent closing the engine at the end of the run
      (freeing the model and KV cache); None when never reported.
    - processing_seconds: wall_seconds - engine_startup_seconds -
      engine_shutdown_seconds; every `*_per_second` figure divides by this, so
      starting and stopping the engine does not dilute throughput.
    - requests_per_second, input_tokens_per_second, output_tokens_per_second; None
      when no rows ran (an empty input, a `--resume` of a finished output).
    - input_tokens, output_tokens: sums of prompt_tokens and completion_tokens.
    - batches: engine steps; avg_batch_size: requests running per step;
      avg_batch_duration_ms: time per step.
    - padding_tokens_avoided: tokens a padded static batch would have spent.
    - latency_p50_ms, latency_p95_ms: per-request latency, within 0.5% (see
      `LatencyHistogram`); None when no result carried a timing.
    - retries, engine_restarts, oom_backoffs; oom_window: the engine's window after
      the last OOM back-off (None when there was none).
    - errors_by_type: failed rows per `error.type`, most frequent first.
    - engine_wait_seconds: time the engine sat idle, with requests in it, while we
      read and tokenized the next chunk; engine_wait_share: that over wall_seconds:
      the share of wall time the engine waited on our code; None when the engine
      ran no step.
    - between_steps_share: 1 - (time inside engine steps / processing_seconds): an
      upper bound of the same, which also counts submitting requests to the engine
      (vLLM's own request processing), reordering and writing between steps.
    - chunks_by_order: chunks per submission order used (`auto` shows its choices).
    - rows_resumed: rows already in the output from an earlier run (`--resume`); they
      were not run again and are not in `rows`, so the output holds rows +
      rows_resumed.
    - interrupted: the signal that stopped the run early ("SIGINT", "SIGTERM"; "SIGPIPE"
      when stdout was closed), so the output and these figures are partial; None when
      the run ended on its own.
    - gpu_devices, gpu_samples, gpu_utilization_avg_pct, gpu_utilization_max_pct,
      gpu_memory_peak_mib, gpu_memory_total_mib: sampled while the engine ran (see
      `batching.gpu_monitor`); absent from `to_dict()` where there is no GPU.
    - replicas: each engine replica's throughput (`ReplicaThroughput`); only in a
      run on Ray, and only then a key of `to_dict()`.
    - engine_occupancy: the mean number of sequences the engine ran, over processing
      time, divided by its sequence capacity (`max_num_seqs`, summed over replicas):
      1.0 is an engine never below a full batch, whatever the pipeline did around it.
      From the engine's own count of what each step ran (`Engine` may expose
      `last_step_sequences`: the fake and sim engines do, vLLM where its scheduler
      runs in this process); None where the engine does not say, never guessed.
    - reorder_peak_bytes, reorder_peak_rows: the most that finished rows waiting for
      an earlier one held (bytes estimated, see `ordering.result_bytes`);
      reading_paused_seconds: how long reading stopped because they held more than
      `--reorder-buffer-mb` while the engine had room for more.

    >>> report = Report(rows=10, rows_ok=10, wall_seconds=2.0, engine_startup_seconds=1.0)
    >>> report.requests_per_second
    10.0
    """

    rows: int = 0
    rows_ok: int = 0
    rows_failed: int = 0
    wall_seconds: float = 0.0
    engine_startup_seconds: float | None = None
    engine_shutdown_seconds: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    batches: int = 0
    batch_requests: int = 0
    batch_seconds: float = 0.0
    padding_tokens_avoided: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    retries: int = 0
    engine_restarts: int = 0
    oom_backoffs: int = 0
    oom_window: int | None = None
    errors_by_type: Mapping[str, int] = field(default_factory=dict)
    engine_wait_seconds: float = 0.0
    chunks_by_order: Mapping[str, int] = field(default_factory=dict)
    gpu: GpuUsage | None = None
    replicas: tuple[ReplicaThroughput, ...] = ()
    rows_resumed: int = 0
    interrupted: str | None = None
    # Sum over steps of sequences run x step seconds; None once a step went uncounted.
    sequence_seconds: float | None = None
    engine_capacity: int | None = None
    reorder_peak_bytes: int = 0
    reorder_peak_rows: int = 0
    reading_paused_seconds: float = 0.0

    @property
    def processing_seconds(self) -> float:
        engine_s = (self.engine_startup_seconds or 0.0) + (self.engine_shutdown_seconds or 0.0)
        return max(0.0, self.wall_seconds - engine_s)

    @property
    def requests_per_second(self) -> float | None:
        return _per_second(self.rows, self.rows, self.processing_seconds)

    @property
    def input_tokens_per_second(self) -> float | None:
        return _per_second(self.input_tokens, self.rows, self.processing_seconds)

    @property
    def output_tokens_per_second(self) -> float | None:
        return _per_second(self.output_tokens, self.rows, self.processing_seconds)

    @property
    def avg_batch_size(self) -> float | None:
        return _ratio(self.batch_requests, self.batches)

    @property
    def avg_batch_duration_ms(self) -> float | None:
        avg = _ratio(self.batch_seconds, self.batches)
        return None if avg is None else avg * 1000.0

    @property
    def engine_wait_share(self) -> float | None:
        # Without a step the engine never ran, so there was no waiting to measure.
        if not self.batches:
            return None
        return _ratio(self.engine_wait_seconds, self.wall_seconds)

    @property
    def engine_occupancy(self) -> float | None:
        if not self.batches or self.sequence_seconds is None or not self.engine_capacity:
            return None
        return _ratio(self.sequence_seconds, self.processing_seconds * self.engine_capacity)

    @property
    def between_steps_share(self) -> float | None:
        if not self.batches:
            return None
        inside = _ratio(self.batch_seconds, self.processing_seconds)
        return None if inside is None else max(0.0, 1.0 - inside)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; floats rounded to what is meaningful (µs, 0.001/s)."""
        data: dict[str, Any] = {
            "rows": self.rows,
            "rows_ok": self.rows_ok,
            "rows_failed": self.rows_failed,
            "wall_seconds": round(self.wall_seconds, 6),
            "engine_startup_seconds": _rounded(self.engine_startup_seconds, 6),
            "engine_shutdown_seconds": _rounded(self.engine_shutdown_seconds, 6),
            "processing_seconds": round(self.processing_seconds, 6),
            "requests_per_second": _rounded(self.requests_per_second, 3),
            "input_tokens_per_second": _rounded(self.input_tokens_per_second, 3),
            "output_tokens_per_second": _rounded(self.output_tokens_per_second, 3),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "batches": self.batches,
            "avg_batch_size": _rounded(self.avg_batch_size, 3),
            "avg_batch_duration_ms": _rounded(self.avg_batch_duration_ms, 3),
            "padding_tokens_avoided": self.padding_tokens_avoided,
            "latency_p50_ms": _rounded(self.latency_p50_ms, 3),
            "latency_p95_ms": _rounded(self.latency_p95_ms, 3),
            "retries": self.retries,
            "engine_restarts": self.engine_restarts,
            "oom_backoffs": self.oom_backoffs,
            "oom_window": self.oom_window,
            "errors_by_type": dict(self.errors_by_type),
            "engine_wait_seconds": round(self.engine_wait_seconds, 6),
            "engine_wait_share": _rounded(self.engine_wait_share, 4),
            "between_steps_share": _rounded(self.between_steps_share, 4),
            "chunks_by_order": dict(self.chunks_by_order),
            # Last, after the keys readers already know.
            "rows_resumed": self.rows_resumed,
            "interrupted": self.interrupted,
            "engine_occupancy": _rounded(self.engine_occupancy, 4),
            "engine_capacity": self.engine_capacity,
            "reorder_peak_bytes": self.reorder_peak_bytes,
            "reorder_peak_rows": self.reorder_peak_rows,
            "reading_paused_seconds": round(self.reading_paused_seconds, 6),
        }
        if self.gpu is not None:
            # Only where a GPU was sampled: on CPU the keys are absent, not 0.
            data.update(
                gpu_devices=self.gpu.devices,
                gpu_samples=self.gpu.samples,
                gpu_utilization_avg_pct=round(self.gpu.utilization_avg_pct, 1),
                gpu_utilization_max_pct=round(self.gpu.utilization_max_pct, 1),
                gpu_memory_peak_mib=round(self.gpu.memory_peak_mib, 1),
                gpu_memory_total_mib=round(self.gpu.memory_total_mib, 1),
            )
        if self.replicas:
            data["replicas"] = [replica.to_dict() for replica in self.replicas]
        return data


class ReportCollector:
    """Counts what happens during a run; `finish()` turns the counts into a `Report`.

    >>> clock = iter([0.0, 3.0]).__next__
    >>> c = ReportCollector(clock=clock)
    >>> c.start()
    >>> c.engine_started(1.0)
    >>> c.record_result(Result(index=0, id="a", output="hi", completion_tokens=4))
    >>> c.finish().output_tokens_per_second
    2.0
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        gpu_sampler: Callable[[], GpuSampler | None] = open_gpu_sampler,
    ) -> None:
        self._clock = clock
        self._open_gpu_sampler: Callable[[], GpuSampler | None] | None = gpu_sampler
        self._gpu_sampler: GpuSampler | None = None
        self._gpu: GpuUsage | None = None
        self._chunk_orders: dict[str, int] = {}
        self._started_at: float | None = None
        self._startup_s: float | None = None
        self._shutdown_s: float | None = None
        self._rows = 0
        self._rows_failed = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._batches = 0
        self._batch_requests = 0
        self._batch_seconds = 0.0
        self._padding_avoided = 0
        self._latency = LatencyHistogram()
        self._retries = 0
        self._restarts = 0
        self._oom_backoffs = 0
        self._oom_window: int | None = None
        # Keyed by the stable error types in `records`: a handful of keys, not one per row.
        self._errors: dict[str, int] = {}
        self._engine_wait_s = 0.0
        self._replicas: tuple[ReplicaThroughput, ...] = ()
        self._rows_resumed = 0
        self._interrupted: str | None = None
        self._sequence_seconds: float | None = 0.0
        self._engine_capacity: int | None = None
        self._reorder_peak_bytes = 0
        self._reorder_peak_rows = 0
        self._reading_paused_s = 0.0

    def start(self) -> None:
        """Start the wall clock; call before the engine is started."""
        self._started_at = self._clock()

    def engine_started(self, seconds: float) -> None:
        """The engine took `seconds` to start; restarts add to the same figure.

        The first start also starts GPU sampling (where there is a GPU), so the
        figures cover the engine running, not loading.
        """
        self._startup_s = (self._startup_s or 0.0) + seconds
        if self._open_gpu_sampler is not None:
            self._gpu_sampler = self._open_gpu_sampler()
            self._open_gpu_sampler = None
            if self._gpu_sampler is not None:
                self._gpu_sampler.start()

    def record_chunk_order(self, order: str) -> None:
        """A chunk went to the engine in `order` (what `auto` chose, or the fixed one)."""
        self._chunk_orders[order] = self._chunk_orders.get(order, 0) + 1

    def record_step(self, batch_size: int, duration_s: float, sequences: int | None = None) -> None:
        """One engine step, `batch_size` requests in the engine, took `duration_s`.

        `sequences`: what the engine says the step ran (None where it does not say,
        which leaves the run's occupancy unknown rather than guessed).
        """
        self._batches += 1
        self._batch_requests += batch_size
        self._batch_seconds += duration_s
        if sequences is None:
            self._sequence_seconds = None
        elif self._sequence_seconds is not None:
            self._sequence_seconds += sequences * duration_s

    def record_engine_capacity(self, sequences: int) -> None:
        """The engines of this run run at most `sequences` sequences a step in all."""
        self._engine_capacity = sequences

    def record_reorder(self, peak_bytes: int, peak_rows: int) -> None:
        """The most the reorder buffer held (a later call keeps the larger figures)."""
        self._reorder_peak_bytes = max(self._reorder_peak_bytes, peak_bytes)
        self._reorder_peak_rows = max(self._reorder_peak_rows, peak_rows)

    def record_reading_paused(self, seconds: float) -> None:
        """Reading stopped `seconds` because the reorder buffer was full."""
        self._reading_paused_s += seconds

    @property
    def output_tokens(self) -> int:
        """Tokens generated for the rows counted so far (for progress)."""
        return self._output_tokens

    def record_result(self, result: Result) -> None:
        """Count one output row (ok or failed)."""
        self.record_results((result,))

    def record_results(self, results: Iterable[Result]) -> None:
        """Count output rows (ok or failed); one call per batch the writer takes."""
        rows = input_tokens = output_tokens = 0
        add_latency = self._latency.add
        for result in results:
            rows += 1
            if result.error is not None:
                self._rows_failed += 1
                self._errors[result.error.type] = self._errors.get(result.error.type, 0) + 1
            if result.prompt_tokens is not None:
                input_tokens += result.prompt_tokens
            if result.completion_tokens is not None:
                output_tokens += result.completion_tokens
            if result.latency_s is not None:
                add_latency(result.latency_s)
        self._rows += rows
        self._input_tokens += input_tokens
        self._output_tokens += output_tokens

    def add_padding_avoided(self, tokens: int) -> None:
        self._padding_avoided += tokens

    def record_retry(self) -> None:
        self._retries += 1

    def record_engine_restart(self) -> None:
        self._restarts += 1

    def record_oom_backoff(self, new_window: int) -> None:
        """The engine ran out of memory and its window shrank to `new_window`."""
        self._oom_backoffs += 1
        self._oom_window = new_window

    def record_engine_wait(self, seconds: float) -> None:
        """The engine sat idle `seconds` waiting for our reading/tokenizing."""
        self._engine_wait_s += seconds

    def add_engine_work(self, part: Report) -> None:
        """Add the engine figures of a run done elsewhere (a replica's batch).

        Rows, tokens and latencies are not added: they are counted here as the
        rows are written, by `record_result`. Start-up is not either: replicas
        start side by side, so the caller reports the longest with `engine_started`.
        """
        self._batches += part.batches
        self._batch_requests += part.batch_requests
        self._batch_seconds += part.batch_seconds
        self._padding_avoided += part.padding_tokens_avoided
        self._retries += part.retries
        self._restarts += part.engine_restarts
        self._oom_backoffs += part.oom_backoffs
        if part.oom_window is not None:
            self._oom_window = part.oom_window
        self._engine_wait_s += part.engine_wait_seconds
        if part.sequence_seconds is None or not part.batches:
            if part.batches:
                self._sequence_seconds = None
        elif self._sequence_seconds is not None:
            self._sequence_seconds += part.sequence_seconds
        self.record_reorder(part.reorder_peak_bytes, part.reorder_peak_rows)
        self._reading_paused_s += part.reading_paused_seconds

    def record_replicas(self, replicas: tuple[ReplicaThroughput, ...]) -> None:
        """Each replica's throughput so far (replaces what was recorded before)."""
        self._replicas = replicas

    def record_resumed_rows(self, rows: int) -> None:
        """`rows` were already in the output from an earlier run (`--resume`).

        They are reported apart from `rows`, which counts what this run did, so the
        rates stay this run's own. May be called before `start()` (the caller knows
        the count before the runner starts the clock).

        >>> c = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
        >>> c.start()
        >>> c.record_resumed_rows(25)
        >>> c.finish().rows_resumed
        25
        """
        if rows < 0:
            raise ValueError(f"resumed rows must not be negative, got {rows}")
        self._rows_resumed = rows

    def record_interrupt(self, signal_name: str) -> None:
        """A signal (`"SIGINT"`, `"SIGTERM"`) stopped the run: the report is partial.

        >>> c = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
        >>> c.start()
        >>> c.record_interrupt("SIGTERM")
        >>> c.finish().interrupted
        'SIGTERM'
        """
        self._interrupted = signal_name

    def engine_stopped(self, seconds: float) -> None:
        """Closing the engine at the end of the run took `seconds`."""
        self._shutdown_s = (self._shutdown_s or 0.0) + seconds

    def finish(self) -> Report:
        """The report as of now; may be called more than once.

        The first call ends GPU sampling: the run is over when its report is asked for.
        """
        if self._started_at is None:
            raise RuntimeError("ReportCollector.finish() called before start()")
        if self._gpu_sampler is not None:
            self._gpu = self._gpu_sampler.stop()
            self._gpu_sampler = None
        p50 = self._latency.quantile(0.50)
        p95 = self._latency.quantile(0.95)
        return Report(
            rows=self._rows,
            rows_ok=self._rows - self._rows_failed,
            rows_failed=self._rows_failed,
            wall_seconds=max(0.0, self._clock() - self._started_at),
            engine_startup_seconds=self._startup_s,
            engine_shutdown_seconds=self._shutdown_s,
            input_tokens=self._input_tokens,
            output_tokens=self._output_tokens,
            batches=self._batches,
            batch_requests=self._batch_requests,
            batch_seconds=self._batch_seconds,
            padding_tokens_avoided=self._padding_avoided,
            latency_p50_ms=None if p50 is None else p50 * 1000.0,
            latency_p95_ms=None if p95 is None else p95 * 1000.0,
            retries=self._retries,
            engine_restarts=self._restarts,
            oom_backoffs=self._oom_backoffs,
            oom_window=self._oom_window,
            errors_by_type=dict(sorted(self._errors.items(), key=lambda kv: (-kv[1], kv[0]))),
            engine_wait_seconds=self._engine_wait_s,
            chunks_by_order=dict(self._chunk_orders),
            gpu=self._gpu,
            replicas=self._replicas,
            rows_resumed=self._rows_resumed,
            interrupted=self._interrupted,
            sequence_seconds=self._sequence_seconds if self._batches else None,
            engine_capacity=self._engine_capacity,
            reorder_peak_bytes=self._reorder_peak_bytes,
            reorder_peak_rows=self._reorder_peak_rows,
            reading_paused_seconds=self._reading_paused_s,
        )
