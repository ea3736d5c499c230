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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batching.figures import (
    derive_figures,
    derived,
    figure,
    figure_fields,
    figures_dict,
    list_figures_in_docstring,
    starting_figures,
)
from batching.gpu_monitor import GpuSampler, GpuUsage, open_gpu_sampler
from batching.quantiles import LatencyHistogram
from batching.records import Result

if TYPE_CHECKING:
    from batching.manifest import InputDigest, Manifest
    from batching.model_identity import ModelIdentity

__all__ = [
    "ENGINE_WORK_FIGURES",
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


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


@dataclass(frozen=True, slots=True)
class ReplicaThroughput:
    """One engine replica's share of a distributed run (`--ray`).

    >>> ReplicaThroughput("node-1:42", rows=100, busy_seconds=4.0).requests_per_second
    25.0
    """

    name: str = figure(doc="the replica (node and process)")
    rows: int = figure(0, "rows it ran; invalid input rows never reach a replica's engine")
    output_tokens: int = figure(0, "tokens it generated")
    busy_seconds: float = figure(
        0.0,
        "time it spent running batches, start-up excluded, so its rates say how fast it "
        "went while it had work",
        digits=6,
    )
    requests_per_second: float | None = derived(
        lambda r: _per_second(r.rows, r.rows, r.busy_seconds),
        "rows over busy_seconds; None when it ran no rows",
        digits=3,
    )
    output_tokens_per_second: float | None = derived(
        lambda r: _per_second(r.output_tokens, r.rows, r.busy_seconds),
        "output_tokens over busy_seconds; None when it ran no rows",
        digits=3,
    )

    def __post_init__(self) -> None:
        derive_figures(self)

    def to_dict(self) -> dict[str, Any]:
        return figures_dict(self)


def _processing_seconds(report: Report) -> float:
    engine_s = (report.engine_startup_seconds or 0.0) + (report.engine_shutdown_seconds or 0.0)
    return max(0.0, report.wall_seconds - engine_s)


def _engine_wait_share(report: Report) -> float | None:
    # Without a step the engine never ran, so there was no waiting to measure.
    if not report.batches:
        return None
    return _ratio(report.engine_wait_seconds, report.wall_seconds)


def _between_steps_share(report: Report) -> float | None:
    if not report.batches:
        return None
    inside = _ratio(report.batch_seconds, report.processing_seconds)
    return None if inside is None else max(0.0, 1.0 - inside)


def _engine_occupancy(report: Report) -> float | None:
    if not report.batches or report.sequence_seconds is None or not report.engine_capacity:
        return None
    return _ratio(report.sequence_seconds, report.processing_seconds * report.engine_capacity)


def _gpu(pick: Callable[[GpuUsage], float]) -> Callable[[Report], float | None]:
    return lambda report: None if report.gpu is None else pick(report.gpu)


@dataclass(frozen=True, slots=True)
class Report:
    """What a run did, in figures. Absent figures are None (null in JSON), never 0.

    Each figure is declared once, below: its field's doc says what it means, and
    `to_dict()` has a key per figure in declaration order (new keys go last: readers
    rely on the order), rounded as declared. Derived figures (the rates, the shares)
    are computed when the report is built. The list of keys follows the example.

    >>> report = Report(rows=10, rows_ok=10, wall_seconds=2.0, engine_startup_seconds=1.0)
    >>> report.requests_per_second
    10.0
    """

    rows: int = figure(0, "output rows")
    rows_ok: int = figure(0, "output rows without an error")
    rows_failed: int = figure(0, "output rows that carry an error")
    wall_seconds: float = figure(0.0, "from `ReportCollector.start()` to `finish()`", digits=6)
    engine_startup_seconds: float | None = figure(
        None,
        "time spent starting the engine, summed over restarts; None when never reported",
        digits=6,
    )
    engine_shutdown_seconds: float | None = figure(
        None,
        "time spent closing the engine at the end of the run (freeing the model and KV "
        "cache); None when never reported",
        digits=6,
    )
    processing_seconds: float = derived(
        _processing_seconds,
        "wall_seconds - engine_startup_seconds - engine_shutdown_seconds; every "
        "`*_per_second` figure divides by this, so starting and stopping the engine does "
        "not dilute throughput",
        digits=6,
    )
    requests_per_second: float | None = derived(
        lambda r: _per_second(r.rows, r.rows, r.processing_seconds),
        "rows over processing_seconds; None when no rows ran (an empty input, a `--resume` "
        "of a finished output)",
        digits=3,
    )
    input_tokens_per_second: float | None = derived(
        lambda r: _per_second(r.input_tokens, r.rows, r.processing_seconds),
        "input_tokens over processing_seconds; None when no rows ran",
        digits=3,
    )
    output_tokens_per_second: float | None = derived(
        lambda r: _per_second(r.output_tokens, r.rows, r.processing_seconds),
        "output_tokens over processing_seconds; None when no rows ran",
        digits=3,
    )
    input_tokens: int = figure(0, "sum of the rows' prompt_tokens")
    output_tokens: int = figure(0, "sum of the rows' completion_tokens")
    batches: int = figure(0, "engine steps", engine_work=True)
    batch_requests: int = figure(
        0, "requests running, summed over steps", key=False, engine_work=True
    )
    batch_seconds: float = figure(
        0.0, "time inside engine steps, summed", key=False, engine_work=True
    )
    avg_batch_size: float | None = derived(
        lambda r: _ratio(r.batch_requests, r.batches), "requests running per step", digits=3
    )
    avg_batch_duration_ms: float | None = derived(
        lambda r: _scaled(_ratio(r.batch_seconds, r.batches), 1000.0), "time per step", digits=3
    )
    padding_tokens_avoided: int = figure(
        0, "tokens a padded static batch would have spent", engine_work=True
    )
    latency_p50_ms: float | None = figure(
        None,
        "median per-request latency, within 0.5% (see `batching.quantiles.LatencyHistogram`); "
        "None when no result carried a timing",
        digits=3,
    )
    latency_p95_ms: float | None = figure(
        None, "95th percentile per-request latency, as latency_p50_ms", digits=3
    )
    retries: int = figure(0, "requests run again after a failed engine step", engine_work=True)
    engine_restarts: int = figure(0, "times a dead engine was started again", engine_work=True)
    oom_backoffs: int = figure(
        0, "times the engine's window was halved after running out of memory", engine_work=True
    )
    oom_window: int | None = figure(
        None, "the engine's window after the last OOM back-off (None when there was none)"
    )
    errors_by_type: Mapping[str, int] = figure(
        doc="failed rows per `error.type`, most frequent first", default_factory=dict
    )
    engine_wait_seconds: float = figure(
        0.0,
        "time the engine sat idle, with requests in it, while we read and tokenized the next chunk",
        digits=6,
        engine_work=True,
    )
    engine_wait_share: float | None = derived(
        _engine_wait_share,
        "engine_wait_seconds over wall_seconds: the share of wall time the engine waited on "
        "our code; None when the engine ran no step",
        digits=4,
    )
    between_steps_share: float | None = derived(
        _between_steps_share,
        "1 - (time inside engine steps / processing_seconds): an upper bound of the same, "
        "which also counts submitting requests to the engine (vLLM's own request "
        "processing), reordering and writing between steps",
        digits=4,
    )
    chunks_by_order: Mapping[str, int] = figure(
        doc="chunks per submission order used (`auto` shows its choices)", default_factory=dict
    )
    # The keys from here on came later: after the keys readers already know.
    rows_resumed: int = figure(
        0,
        "rows already in the output from an earlier run (`--resume`); they were not run "
        "again and are not in `rows`, so the output holds rows + rows_resumed",
    )
    interrupted: str | None = figure(
        None,
        'the signal that stopped the run early ("SIGINT", "SIGTERM"; "SIGPIPE" when stdout '
        "was closed), so the output and these figures are partial; None when the run ended "
        "on its own",
    )
    sequence_seconds: float | None = figure(
        None,
        "sequences each step ran times its seconds, summed; None once a step went uncounted",
        key=False,
    )
    engine_occupancy: float | None = derived(
        _engine_occupancy,
        "the mean number of sequences the engine ran, over processing time, divided by "
        "engine_capacity: 1.0 is an engine never below a full batch, whatever the pipeline "
        "did around it. From the engine's own count of what each step ran (`Engine` may "
        "expose `last_step_sequences`: the fake and sim engines do, vLLM where its "
        "scheduler runs in this process); None where the engine does not say, never guessed",
        digits=4,
    )
    engine_capacity: int | None = figure(
        None, "the engine's sequence capacity (`max_num_seqs`, summed over replicas)"
    )
    reorder_peak_bytes: int = figure(
        0,
        "the most bytes that finished rows waiting for an earlier one held (estimated, see "
        "`ordering.result_bytes`)",
    )
    reorder_peak_rows: int = figure(0, "the most finished rows waiting for an earlier one")
    reading_paused_seconds: float = figure(
        0.0,
        "how long reading stopped because those rows held more than `--reorder-buffer-mb` "
        "while the engine had room for more",
        digits=6,
        engine_work=True,
    )
    # Before the optional keys (gpu_*, replicas): where they are absent, readers
    # still find every key after reading_paused_seconds in the same place.
    rows_deduplicated: int = figure(
        0,
        "rows answered by an identical deterministic request of the same run instead of "
        "running again (`--no-dedup` turns this off); each still has its own output row",
    )
    cache_hits: int = figure(
        0, "rows answered from the result cache (`--cache`) without reaching the engine"
    )
    cache_misses: int = figure(
        0,
        "distinct requests looked up in the result cache and not found; each ran in the "
        "engine and was stored",
    )

    gpu: GpuUsage | None = figure(
        None,
        "what the GPUs did, sampled while the engine ran (`batching.gpu_monitor`)",
        key=False,
    )
    gpu_devices: int | None = derived(
        _gpu(lambda g: g.devices), "GPUs sampled; absent where there is no GPU", optional=True
    )
    gpu_samples: int | None = derived(
        _gpu(lambda g: g.samples), "samples taken; absent where there is no GPU", optional=True
    )
    gpu_utilization_avg_pct: float | None = derived(
        _gpu(lambda g: g.utilization_avg_pct),
        "mean GPU utilisation; absent where there is no GPU",
        digits=1,
        optional=True,
    )
    gpu_utilization_max_pct: float | None = derived(
        _gpu(lambda g: g.utilization_max_pct),
        "highest GPU utilisation sampled; absent where there is no GPU",
        digits=1,
        optional=True,
    )
    gpu_memory_peak_mib: float | None = derived(
        _gpu(lambda g: g.memory_peak_mib),
        "most GPU memory in use; absent where there is no GPU",
        digits=1,
        optional=True,
    )
    gpu_memory_total_mib: float | None = derived(
        _gpu(lambda g: g.memory_total_mib),
        "GPU memory in all; absent where there is no GPU",
        digits=1,
        optional=True,
    )
    replicas: tuple[ReplicaThroughput, ...] = figure(
        (),
        "each engine replica's throughput (`ReplicaThroughput`); only in a run on Ray, and "
        "only then a key",
        optional=True,
    )
    manifest: Mapping[str, Any] | None = figure(
        None,
        "what made the output (`batching.manifest.Manifest`): bizra-batch and vLLM "
        "versions, the model and its digest or revision, every engine argument, the "
        "sampling defaults, the template, each input's digest; absent where not recorded",
        optional=True,
    )

    def __post_init__(self) -> None:
        derive_figures(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; floats rounded to what is meaningful (µs, 0.001/s)."""
        return figures_dict(self)


list_figures_in_docstring(ReplicaThroughput)
list_figures_in_docstring(Report)

# The sums a replica's own report adds to the run's (`ReportCollector.add_engine_work`).
ENGINE_WORK_FIGURES = tuple(f.name for f in figure_fields(Report) if f.metadata.get("engine_work"))


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
        self._started_at: float | None = None
        self._latency = LatencyHistogram()
        # The stored figures of `Report` by name, each from its default; the record_*
        # methods count into them and `finish()` fills in the rest. Keyed by the stable
        # error types in `records`, errors_by_type holds a handful of keys, not one per row.
        self._figures: dict[str, Any] = starting_figures(Report)
        self._manifest: Manifest | None = None
        # Occupancy is known until a step goes uncounted (then None for good).
        self._figures["sequence_seconds"] = 0.0

    def start(self) -> None:
        """Start the wall clock; call before the engine is started."""
        self._started_at = self._clock()

    def engine_started(self, seconds: float) -> None:
        """The engine took `seconds` to start; restarts add to the same figure.

        The first start also starts GPU sampling (where there is a GPU), so the
        figures cover the engine running, not loading.
        """
        figures = self._figures
        figures["engine_startup_seconds"] = (figures["engine_startup_seconds"] or 0.0) + seconds
        if self._open_gpu_sampler is not None:
            self._gpu_sampler = self._open_gpu_sampler()
            self._open_gpu_sampler = None
            if self._gpu_sampler is not None:
                self._gpu_sampler.start()

    def record_chunk_order(self, order: str) -> None:
        """A chunk went to the engine in `order` (what `auto` chose, or the fixed one)."""
        orders = self._figures["chunks_by_order"]
        orders[order] = orders.get(order, 0) + 1

    def record_step(self, batch_size: int, duration_s: float, sequences: int | None = None) -> None:
        """One engine step, `batch_size` requests in the engine, took `duration_s`.

        `sequences`: what the engine says the step ran (None where it does not say,
        which leaves the run's occupancy unknown rather than guessed).
        """
        figures = self._figures
        figures["batches"] += 1
        figures["batch_requests"] += batch_size
        figures["batch_seconds"] += duration_s
        self._add_sequence_seconds(None if sequences is None else sequences * duration_s)

    def _add_sequence_seconds(self, seconds: float | None) -> None:
        """Add to the run's sequence-seconds; one part the engine did not count makes
        the whole unknown, so occupancy is never computed from part of the run."""
        figures = self._figures
        if seconds is None:
            figures["sequence_seconds"] = None
        elif figures["sequence_seconds"] is not None:
            figures["sequence_seconds"] += seconds

    def record_engine_capacity(self, sequences: int) -> None:
        """The engines of this run run at most `sequences` sequences a step in all."""
        self._figures["engine_capacity"] = sequences

    def record_reorder(self, peak_bytes: int, peak_rows: int) -> None:
        """The most the reorder buffer held (a later call keeps the larger figures)."""
        figures = self._figures
        figures["reorder_peak_bytes"] = max(figures["reorder_peak_bytes"], peak_bytes)
        figures["reorder_peak_rows"] = max(figures["reorder_peak_rows"], peak_rows)

    def record_reading_paused(self, seconds: float) -> None:
        """Reading stopped `seconds` because the reorder buffer was full."""
        self._figures["reading_paused_seconds"] += seconds

    @property
    def output_tokens(self) -> int:
        """Tokens generated for the rows counted so far (for progress)."""
        tokens: int = self._figures["output_tokens"]
        return tokens

    def record_result(self, result: Result) -> None:
        """Count one output row (ok or failed)."""
        self.record_results((result,))

    def record_results(self, results: Iterable[Result]) -> None:
        """Count output rows (ok or failed); one call per batch the writer takes."""
        figures = self._figures
        errors = figures["errors_by_type"]
        rows = failed = input_tokens = output_tokens = 0
        add_latency = self._latency.add
        for result in results:
            rows += 1
            if result.error is not None:
                failed += 1
                errors[result.error.type] = errors.get(result.error.type, 0) + 1
            if result.prompt_tokens is not None:
                input_tokens += result.prompt_tokens
            if result.completion_tokens is not None:
                output_tokens += result.completion_tokens
            if result.latency_s is not None:
                add_latency(result.latency_s)
        figures["rows"] += rows
        figures["rows_failed"] += failed
        figures["input_tokens"] += input_tokens
        figures["output_tokens"] += output_tokens

    def add_padding_avoided(self, tokens: int) -> None:
        self._figures["padding_tokens_avoided"] += tokens

    def record_retry(self) -> None:
        self._figures["retries"] += 1

    def record_engine_restart(self) -> None:
        self._figures["engine_restarts"] += 1

    def record_oom_backoff(self, new_window: int) -> None:
        """The engine ran out of memory and its window shrank to `new_window`."""
        self._figures["oom_backoffs"] += 1
        self._figures["oom_window"] = new_window

    def record_engine_wait(self, seconds: float) -> None:
        """The engine sat idle `seconds` waiting for our reading/tokenizing."""
        self._figures["engine_wait_seconds"] += seconds

    def add_engine_work(self, part: Report) -> None:
        """Add the engine figures of a run done elsewhere (a replica's batch).

        Rows, tokens and latencies are not added: they are counted here as the
        rows are written, by `record_result`. Start-up is not either: replicas
        start side by side, so the caller reports the longest with `engine_started`.
        """
        figures = self._figures
        for name in ENGINE_WORK_FIGURES:
            figures[name] += getattr(part, name)
        if part.oom_window is not None:
            figures["oom_window"] = part.oom_window
        if part.batches:  # a part with no step has nothing to count
            self._add_sequence_seconds(part.sequence_seconds)
        self.record_reorder(part.reorder_peak_bytes, part.reorder_peak_rows)

    def record_manifest(self, manifest: Manifest) -> None:
        """What made the output (the inputs' digests are added once read)."""
        self._manifest = manifest

    def record_model_identity(self, identity: ModelIdentity) -> None:
        """The model's digest or revision, into the recorded manifest."""
        if self._manifest is not None:
            self._manifest = self._manifest.with_model(identity)

    def record_input_digests(self, inputs: Sequence[InputDigest]) -> None:
        """The inputs' digests, computed while reading, into the recorded manifest."""
        if self._manifest is not None:
            self._manifest = self._manifest.with_inputs(inputs)

    def record_replicas(self, replicas: tuple[ReplicaThroughput, ...]) -> None:
        """Each replica's throughput so far (replaces what was recorded before)."""
        self._figures["replicas"] = replicas

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
        self._figures["rows_resumed"] = rows

    def record_interrupt(self, signal_name: str) -> None:
        """A signal (`"SIGINT"`, `"SIGTERM"`) stopped the run: the report is partial.

        >>> c = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
        >>> c.start()
        >>> c.record_interrupt("SIGTERM")
        >>> c.finish().interrupted
        'SIGTERM'
        """
        self._figures["interrupted"] = signal_name

    def record_reuse(self, *, deduplicated: int = 0, hits: int = 0, misses: int = 0) -> None:
        """Rows answered without the engine: by an identical row of the run
        (`deduplicated`) or from the result cache (`hits`); `misses`: requests the
        cache did not hold.

        >>> c = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
        >>> c.start()
        >>> c.record_reuse(deduplicated=2, hits=3, misses=1)
        >>> report = c.finish()
        >>> report.rows_deduplicated, report.cache_hits, report.cache_misses
        (2, 3, 1)
        """
        figures = self._figures
        figures["rows_deduplicated"] += deduplicated
        figures["cache_hits"] += hits
        figures["cache_misses"] += misses

    def engine_stopped(self, seconds: float) -> None:
        """Closing the engine at the end of the run took `seconds`."""
        figures = self._figures
        figures["engine_shutdown_seconds"] = (figures["engine_shutdown_seconds"] or 0.0) + seconds

    def finish(self) -> Report:
        """The report as of now; may be called more than once.

        The first call ends GPU sampling: the run is over when its report is asked for.
        """
        if self._started_at is None:
            raise RuntimeError("ReportCollector.finish() called before start()")
        if self._gpu_sampler is not None:
            self._gpu = self._gpu_sampler.stop()
            self._gpu_sampler = None
        figures = self._figures
        errors = figures["errors_by_type"]
        return Report(
            **{
                **figures,
                "rows_ok": figures["rows"] - figures["rows_failed"],
                "wall_seconds": max(0.0, self._clock() - self._started_at),
                "latency_p50_ms": _scaled(self._latency.quantile(0.50), 1000.0),
                "latency_p95_ms": _scaled(self._latency.quantile(0.95), 1000.0),
                "errors_by_type": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
                "chunks_by_order": dict(figures["chunks_by_order"]),
                "gpu": self._gpu,
                "sequence_seconds": figures["sequence_seconds"] if figures["batches"] else None,
                "manifest": None if self._manifest is None else self._manifest.to_dict(),
            }
        )
