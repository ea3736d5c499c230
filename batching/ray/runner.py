"""The same run on a Ray cluster: Ray Data reads, a pool of engine replicas runs.

The pipeline is Ray Data's, not a scheduler of ours:

    read (one Ray task, our reader)  ->  map_batches(EngineReplica, ActorPoolStrategy)
        ->  iter_batches in the driver, in input order  ->  our writers

Everything around the rows stays the single-process code (`job.run`): the output
lock, the resume check, the errors file, the writers. So the output is the same
file, row for row: one result per input row, in input order, same error records.

Resources: each replica takes `gpus_per_replica` GPUs (its tensor-parallel size)
and a fraction of a CPU. The fraction matters: an actor pool that reserved every
CPU would leave none for the read task, and the run would wait forever for rows.

Order: Ray Data is told to preserve order, and the driver checks that every index
arrives once, in sequence, before it writes a row.

>>> run_on_ray(config, FakeEngine, RayOptions(replicas=2))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batching.config import RunConfig
from batching.engine import EngineFactory
from batching.errors import BatchError, UsageError
from batching.interrupts import protected
from batching.job import run as run_job
from batching.protocols import ProgressSink, ResultSink, RowSupply
from batching.readers import RowPlace
from batching.report import ReplicaThroughput, Report, ReportCollector
from batching.retry import RetryPolicy

if TYPE_CHECKING:
    from batching.ray.replica import BatchStats

__all__ = [
    "RAY_INSTALL_HINT",
    "RayOptions",
    "RayRowsRunner",
    "concurrent_batches",
    "require_ray",
    "run_on_ray",
]

RAY_INSTALL_HINT = (
    "--ray needs Ray Data, which is not installed; install it with pip install 'bizra-batch[ray]'"
)
LOCAL = "local"
_MAX_CONCURRENT_BATCHES = 16
# The driver cannot ask a replica's engine its batch size before it starts: size the
# batches in flight for the largest default window, ceil(1.1 x 1,024) (vLLM's offline
# max_num_seqs on an H100-class GPU), which a smaller engine's window fits in too.
_LARGEST_DEFAULT_WINDOW = 1127
# What Ray Data appends to the message of an error a map task raised: advice on its
# retries, which an engine that failed for good does not need.
_RAY_RETRY_NOTE = re.compile(
    r"\nFailed to [^\n]* after \d+/\d+ attempts \(total backoff [^)\n]*\)\..*\Z", re.DOTALL
)
_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how wide to run.

    `address`: "local" (or None) starts a Ray instance on this machine; "auto"
    joins the cluster `ray start` made here; anything else is passed to `ray.init`
    (`ray://head:10001`). `replicas`: engines in the pool; None is one per
    `gpus_per_replica` GPUs in the cluster (1 without GPUs). `cpus_per_replica`:
    None leaves one CPU (half of a 2-CPU cluster) for reading and splits the rest.
    """

    address: str | None = None
    replicas: int | None = None
    gpus_per_replica: float = 0.0
    cpus_per_replica: float | None = None
    # Extra keyword arguments for ray.init (tests pin num_cpus); local start only.
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    # Ray's own notices on stderr (--debug); off, they are ones a user can do nothing about.
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise UsageError(f"--replicas {self.replicas}: must be at least 1")


def require_ray() -> None:
    """Raise `UsageError` (exit 2) with the install hint unless Ray Data imports."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(RAY_INSTALL_HINT) from None


def run_on_ray(
    config: RunConfig,
    engine_factory: EngineFactory,
    options: RayOptions,
    *,
    progress: ProgressSink | None = None,
    retry: RetryPolicy | None = None,
    report: ReportCollector | None = None,
) -> Report:
    """`job.run`, with the rows run by a pool of replicas on Ray.

    >>> run_on_ray(RunConfig(InputConfig("in.jsonl"), OutputConfig("out.jsonl")),
    ...            FakeEngine, RayOptions(replicas=2))  # doctest: +SKIP
    """
    require_ray()
    if config.input.location.is_stdio:
        raise UsageError(
            "--ray reads the input on the cluster, which cannot see this process's stdin; "
            "pass the input file's path"
        )
    if config.output.is_directory:
        # The cluster reads the input as one stream of rows; an output per input file
        # (and its resume per file) is what `job.run_to_directory` does on one machine.
        raise UsageError(
            f"{config.output.path}: --ray writes one output file; pass -o FILE, or run "
            "without --ray for an output per input file"
        )
    if config.cache is not None:
        # Each replica would open the path on its own node: not one shared cache.
        raise UsageError("--cache is not supported with --ray yet; run without --ray")
    return run_job(
        config,
        engine_factory,
        progress=progress,
        retry=retry,
        report=report,
        rows_runner=RayRowsRunner(options),
    )


class RayRowsRunner:
    """A `job.RowsRunner` that runs the rows on a Ray Data actor pool."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options

    def __call__(
        self,
        supply: RowSupply,
        sink: ResultSink,
        engine_factory: EngineFactory,
        config: RunConfig,
        *,
        progress: ProgressSink | None = None,
        retry: RetryPolicy | None = None,
        report: ReportCollector | None = None,
        start_index: int = 0,
        place: RowPlace | None = None,
    ) -> Report:
        # `place` is not used: the replicas renumber the rows they get, and the
        # spans that say which file an index is in fill on the reader's node, so the
        # replicas name rows as `readers.row_place` does (the same, for one file).
        import ray

        collector = report or ReportCollector()
        collector.start()
        if start_index:
            _check_resumed_prefix(supply)
        connect_started = time.perf_counter()
        started_here = _connect(self.options)
        replicas = _Replicas(connect_seconds=time.perf_counter() - connect_started)
        try:
            rows, replicas.pool_size = self._dataset(engine_factory, config, retry, start_index)
            _write_in_order(rows, sink, collector, replicas, progress, supply, start_index)
        except ray.exceptions.RayError as exc:
            cause = _batch_error(exc)
            if cause is None:
                raise
            raise cause from None
        finally:
            replicas.report_to(collector)
            if started_here:
                stopping = time.perf_counter()
                ray.shutdown()
                # Stopping Ray stops the replicas and their engines: what closing
                # the engine is in the single-process run, and left out of the
                # processing time the same way.
                collector.engine_stopped(time.perf_counter() - stopping)
        return collector.finish()

    def _dataset(
        self,
        engine_factory: EngineFactory,
        config: RunConfig,
        retry: RetryPolicy | None,
        start_index: int,
    ) -> tuple[Any, int]:
        """The dataset of results, and how many replicas its pool starts."""
        import ray.data

        from batching.ray.replica import EngineReplica
        from batching.ray.source import RowsDatasource

        context = ray.data.DataContext.get_current()
        # Ray Data may hand blocks on as they finish; the output must be in input order.
        context.execution_options.preserve_order = True
        # Our own progress bar is on stderr; Ray's would interleave with it.
        context.enable_progress_bars = False
        # A replica's error (an engine that failed for good) reaches the driver as
        # itself, so the run ends with its one-line message; Ray Data's usual
        # wrapper keeps only its text, and the run ended in a Ray traceback.
        context.raise_original_map_exception = True
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        total_cpus = float(resources.get("CPU", 1.0))
        total_gpus = float(resources.get("GPU", 0.0))
        gpus = self.options.gpus_per_replica if total_gpus > 0 else 0.0
        replicas = self.options.replicas or (max(1, int(total_gpus // gpus)) if gpus > 0 else 1)
        reading_cpus = min(1.0, total_cpus / 2)
        cpus = self.options.cpus_per_replica
        if cpus is None:
            cpus = min(1.0, (total_cpus - reading_cpus) / replicas)
        source = RowsDatasource(
            config.input, max_line_bytes=config.max_line_bytes, start=start_index
        )
        # One read task (see `batching.ray.source`). It yields a table a chunk, but Ray Data
        # merges what a task yields into blocks of up to 128 MiB: all of a small
        # input in one block, one map task, one replica, and results only at the
        # end. Cut back into chunks (a streaming repartition, its own light task),
        # each is a block and a task of its own, spread over the replicas, and its
        # results reach the driver as soon as it is done.
        dataset = ray.data.read_datasource(
            source, num_cpus=_units(reading_cpus), override_num_blocks=1
        ).repartition(target_num_rows_per_block=config.input.chunk_size)
        batches = concurrent_batches(config)
        results = dataset.map_batches(
            EngineReplica,
            fn_constructor_args=(engine_factory, config, retry),
            batch_size=config.input.chunk_size,
            batch_format="pyarrow",
            # Several batches at once in each actor, all on its one engine, so it
            # is topped up from the next batch while one ends (as Ray Data LLM's
            # max_concurrent_batches); and as many more queued at the actor, so
            # the next is there when one returns.
            compute=ray.data.ActorPoolStrategy(
                size=replicas,
                max_concurrent_calls_per_actor=batches,
                max_tasks_in_flight_per_actor=2 * batches,
            ),
            num_cpus=_units(cpus),
            num_gpus=gpus,
        )
        return results, replicas


def concurrent_batches(config: RunConfig) -> int:
    """Batches a replica runs at once: enough to fill the engine's window and one
    more, so a batch's rows are queued before the one ahead of it runs out.

    >>> from batching.config import InputConfig
    >>> concurrent_batches(RunConfig(input=InputConfig("in.jsonl", chunk_size=1024)))
    3
    """
    window = config.max_in_flight or _LARGEST_DEFAULT_WINDOW
    per_window = math.ceil(window / max(1, config.input.chunk_size))
    # Bounded: each holds its rows in the actor (and a thread of it).
    return min(_MAX_CONCURRENT_BATCHES, per_window + 1)


def _units(cpus: float) -> float:
    # Ray accepts resource amounts in steps of 0.0001.
    return max(0.0001, math.floor(cpus * 10_000) / 10_000)


def _connect(options: RayOptions) -> bool:
    """Join or start Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = None if options.address in (None, LOCAL) else options.address
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address is None:
        kwargs.update(options.init_kwargs)
    # Ray Data logs each dataset's plan at INFO; the run's own report says enough.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ...and warns that its progress bars are off: ours are on stderr instead.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        with _quiet_ray(not options.verbose):
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UsageError(
            f"--ray {options.address}: cannot connect to a Ray cluster ({exc}); start one "
            "with `ray start --head`, or pass --ray without an address to run locally"
        ) from None
    return True


@contextlib.contextmanager
def _quiet_ray(quiet: bool) -> Iterator[None]:
    """Silence the notices Ray prints on every run that ask nothing of a user (cron
    mails them); errors still surface, as our own one-line errors."""
    if not quiet:
        yield
        return
    # "Token authentication is enabled for this Ray cluster": a local start's
    # default, announced on each start.
    auth = logging.getLogger(_TOKEN_AUTH_LOGGER)
    level = auth.level
    auth.setLevel(logging.ERROR)
    try:
        yield
    finally:
        auth.setLevel(level)
    # Not silenced: the driver's core worker logs an error line for every Ray Data
    # actor pool ("constructor arguments in the object store and max_restarts > 0",
    # ray#57733). Only RAY_BACKEND_LOG_LEVEL turns it off, which would hide real
    # errors and makes every Ray process announce the level it read.


def _check_resumed_prefix(supply: RowSupply) -> None:
    """Read the rows the output already holds, so `ResumedSupply` checks their ids."""
    chunks = supply.chunks()
    try:
        next(chunks, None)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _write_in_order(
    rows: Any,
    sink: ResultSink,
    collector: ReportCollector,
    replicas: _Replicas,
    progress: ProgressSink | None,
    supply: RowSupply,
    start_index: int,
) -> None:
    from batching.ray.replica import BatchStats
    from batching.ray.results import ResultDecoder

    decoder = ResultDecoder()
    expected = start_index
    # Ray Data starts the replicas (their processes and actors) when iteration begins.
    replicas.started_at = time.time()
    for batch in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        results, extras = decoder.decode(batch)
        for stats in extras:
            if isinstance(stats, BatchStats):
                collector.add_engine_work(stats.report)
                replicas.add(stats)
        for result in results:
            if result.index != expected:
                # A lost or repeated row would break one-row-in, one-row-out: a bug
                # in this runner or in Ray, never the user's input.
                raise RuntimeError(f"expected the result of row {expected}, got {result.index}")
            expected += 1
        with protected():
            sink.write(results)
            collector.record_results(results)
            sink.flush(durable=True)
        if progress is not None:
            progress.update(expected, collector.output_tokens, supply.estimated_total_rows())


class _Replicas:
    """Per-replica throughput, keyed by the replica's host:pid, and their start-up."""

    def __init__(self, connect_seconds: float) -> None:
        self.connect_seconds = connect_seconds
        self.pool_size = 0
        # Wall-clock time (comparable across the cluster's processes) when Ray Data
        # began starting the pool.
        self.started_at = 0.0
        self.figures: dict[str, ReplicaThroughput] = {}
        self.startup: dict[str, float] = {}
        self.capacity: dict[str, int] = {}  # each replica's max_num_seqs

    def add(self, stats: BatchStats) -> None:
        name = stats.replica
        seen = self.figures.get(name, ReplicaThroughput(name))
        self.figures[name] = ReplicaThroughput(
            name,
            rows=seen.rows + stats.rows_run,
            output_tokens=seen.output_tokens + stats.output_tokens,
            busy_seconds=seen.busy_seconds + stats.busy_seconds,
        )
        startup = self.startup.get(name, 0.0) + (stats.report.engine_startup_seconds or 0.0)
        if stats.ready_at is not None and len(self.figures) <= self.pool_size:
            # Starting its process and actor is start-up too, as loading a model is;
            # not for a replica Ray started later in place of one that died, whose
            # wait included the run up to that death.
            startup += max(0.0, stats.ready_at - self.started_at)
        self.startup[name] = startup
        if stats.report.engine_capacity:
            self.capacity[name] = stats.report.engine_capacity

    def report_to(self, collector: ReportCollector) -> None:
        # Replicas start side by side: the run waited for the slowest, not the sum.
        collector.engine_started(self.connect_seconds + max(self.startup.values(), default=0.0))
        collector.record_replicas(tuple(self.figures.values()))
        if self.capacity:
            # Occupancy is of every replica's slots: one idle replica halves it.
            collector.record_engine_capacity(sum(self.capacity.values()))


def _batch_error(exc: BaseException) -> BatchError | None:
    """The error of ours a Ray error carries, if any (a failed engine, a bad input)."""
    # The deepest one: Ray's wrappers may also pass as instances of the cause's
    # class, with a traceback in their message.
    found: BatchError | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BatchError):
            found = current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    if found is not None and found.args and isinstance(found.args[0], str):
        found.args = (_RAY_RETRY_NOTE.sub("", found.args[0]), *found.args[1:])
    return found
