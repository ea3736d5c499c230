"""`bizra-batch worker`: serve a Redis stream of requests (`batching.redis_queue`).

Options -> RunConfig, WorkerSettings and an engine factory; the worker core, and
redis-py with it, are imported only once the options are good. The shared options
(fields, template, sampling, engine, batching) are `run`'s own declarations.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from batching.config import EngineConfig, RunConfig
from batching.engine import EngineFactory
from batching.engines.choice import EngineChoice, checked_model, engine_factory, remote_config
from batching.errors import BatchError
from batching.interrupts import Interrupted
from batching.lora import LoraAdapters
from batching.records import Sampling
from cli.config_file import ConfigOption
from cli.console import make_progress, print_error, stderr_console
from cli.exit_codes import FAILED, OK, exit_code_for, exit_on_error
from cli.options import (
    DEFAULT_MAX_LINE_BYTES,
    AllowedMediaPath,
    AllowRemoteMedia,
    ChatOption,
    DtypeOption,
    EngineArgOption,
    IdField,
    LoraOption,
    MaxLineBytes,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MessagesField,
    PromptField,
    SystemOption,
    TemplateFileOption,
    TemplateOption,
    input_config,
    panel_option,
    parse_engine_args,
)
from cli.run_options import (
    ApiKeyEnv,
    BaseUrl,
    ChunkSize,
    Concurrency,
    Debug,
    EnablePrefixCaching,
    EngineOption,
    GpuMemoryUtilization,
    KeepFields,
    Logprobs,
    MaxEngineRestarts,
    MaxInFlight,
    MaxNumBatchedTokens,
    MaxRetries,
    MaxTokens,
    MaxWaitMs,
    OrderChoice,
    OrderOption,
    Quiet,
    ReportPath,
    RequestTimeout,
    RunModel,
    Samples,
    Seed,
    Stop,
    Temperature,
    TensorParallelSize,
    TopK,
    TopP,
    TrustRemoteCode,
)

if TYPE_CHECKING:
    from batching.redis_queue import QueueWorker, StreamNames, WorkerReport, WorkerSettings

__all__ = ["worker"]

QUEUE = "Queue (a Redis stream read through a consumer group)"
_queue = panel_option(QUEUE)

RedisUrl = Annotated[
    str,
    typer.Argument(
        metavar="REDIS_URL",
        # From the environment, a password stays out of the process list.
        envvar="BIZRA_BATCH_REDIS_URL",
        help="The Redis server, e.g. redis://127.0.0.1:6379/0 (a password in it is never printed).",
    ),
]
StreamOption = Annotated[str, _queue("The stream producers XADD requests to.", "--stream")]
GroupOption = Annotated[str, _queue("Consumer group the workers share (created if missing).")]
ConsumerOption = Annotated[
    str | None, _queue("This worker's name in the group. Default: HOST-PID.")
]
ResultsOption = Annotated[
    str | None, _queue("Stream results are written to. Default: <stream>:results.")
]
DeadLetterOption = Annotated[
    str | None,
    _queue(
        "Stream entries delivered more than --max-deliveries times go to. Default: <stream>:dead."
    ),
]
ResultKeysOption = Annotated[
    bool, _queue("Also write each result as SET result:<id>, expiring after --result-ttl.")
]
ResultTtlOption = Annotated[int, _queue("Seconds a result:<id> key lives.", min=1)]
ClaimIdleMsOption = Annotated[
    int,
    _queue(
        "Claim entries another worker has held this long without acknowledging them "
        "(it died) and run them here.",
        min=0,
    ),
]
MaxDeliveriesOption = Annotated[
    int,
    _queue(
        "An entry delivered more times (it stopped every worker that took it) goes to "
        "the dead-letter stream.",
        min=1,
    ),
]
DrainOption = Annotated[
    bool,
    _queue("Exit 0 once the stream has nothing new and nothing pending (for cron jobs)."),
]


def worker(
    url: RedisUrl,
    stream: StreamOption,
    group: GroupOption = "bizra-batch",
    consumer: ConsumerOption = None,
    results: ResultsOption = None,
    dead_letter: DeadLetterOption = None,
    result_keys: ResultKeysOption = False,
    result_ttl: ResultTtlOption = 86_400,
    claim_idle_ms: ClaimIdleMsOption = 60_000,
    max_deliveries: MaxDeliveriesOption = 3,
    drain: DrainOption = False,
    prompt_field: PromptField = "prompt",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
    keep_fields: KeepFields = "",
    template: TemplateOption = None,
    template_file: TemplateFileOption = None,
    chat: ChatOption = False,
    system: SystemOption = None,
    max_line_bytes: MaxLineBytes = DEFAULT_MAX_LINE_BYTES,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    stop: Stop = None,
    seed: Seed = None,
    n: Samples = None,
    logprobs: Logprobs = None,
    model: RunModel = None,
    engine: EngineOption = EngineChoice.vllm,
    tensor_parallel_size: TensorParallelSize = 1,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    max_num_seqs: MaxNumSeqsOption = None,
    max_num_batched_tokens: MaxNumBatchedTokens = None,
    enable_prefix_caching: EnablePrefixCaching = None,
    trust_remote_code: TrustRemoteCode = False,
    engine_arg: EngineArgOption = None,
    lora: LoraOption = None,
    allowed_media_path: AllowedMediaPath = None,
    allow_remote_media: AllowRemoteMedia = False,
    chunk_size: ChunkSize = 256,
    order: OrderOption = OrderChoice.auto,
    max_in_flight: MaxInFlight = None,
    max_wait_ms: MaxWaitMs = 50.0,
    max_retries: MaxRetries = 3,
    max_engine_restarts: MaxEngineRestarts = 3,
    report: ReportPath = None,
    quiet: Quiet = False,
    debug: Debug = False,
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = None,
    concurrency: Concurrency = 16,
    request_timeout: RequestTimeout = 600.0,
    config_file: ConfigOption = None,
) -> None:
    """Serve requests from a Redis stream: results to a results stream, entries acked.

    Run one per GPU on the same stream to scale out. Exit codes: 0 stopped by
    --drain with the queue empty (requests that failed got error results); 1 the
    engine or Redis failed for good (entries held stay pending for another worker);
    2 usage error, or redis-py missing; 130/143 stopped by SIGINT/SIGTERM after
    finishing and acknowledging the entries it held.
    """
    from batching.redis_queue.worker import WorkerSettings  # no redis import

    with exit_on_error():
        model = checked_model(model, engine)
        loras = LoraAdapters.parse(lora)
        fields = input_config(
            "<redis>", None, prompt_field, messages_field, id_field,
            keep_fields=keep_fields, chunk_size=chunk_size,
            template=template, template_file=template_file, chat=chat, system=system,
            adapter_names=loras.names,
            allowed_media_path=allowed_media_path, allow_remote_media=allow_remote_media,
        )  # fmt: skip
        config = RunConfig(
            input=fields,
            sampling=Sampling(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                seed=seed, stop=tuple(stop) if stop else None, n=n, logprobs=logprobs,
            ),
            order=order.value,
            max_retries=max_retries,
            max_engine_restarts=max_engine_restarts,
            max_in_flight=max_in_flight,
            max_wait_ms=max_wait_ms,
            report_path=report,
            max_line_bytes=max_line_bytes,
        )  # fmt: skip
        settings = WorkerSettings(
            drain=drain,
            claim_idle_ms=claim_idle_ms,
            max_deliveries=max_deliveries,
            result_ttl_s=result_ttl if result_keys else None,
        )
        engine_config = EngineConfig(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            trust_remote_code=trust_remote_code,
            extra=parse_engine_args(engine_arg),
            loras=loras,
        )
        remote = remote_config(
            engine, base_url, api_key_env, model=model, concurrency=concurrency,
            timeout_s=request_timeout, max_retries=max_retries, max_model_len=max_model_len,
        )  # fmt: skip
        factory = engine_factory(engine, engine_config, remote=remote, verbose=debug)
        names = _stream_names(stream, group, consumer, results, dead_letter)
    raise typer.Exit(_serve(url, names, factory, config, settings, quiet=quiet, debug=debug))


def _stream_names(
    stream: str, group: str, consumer: str | None, results: str | None, dead_letter: str | None
) -> StreamNames:
    from batching.redis_queue.stream import StreamNames

    return StreamNames(
        stream=stream,
        group=group,
        consumer=consumer or f"{socket.gethostname()}-{os.getpid()}",
        results_stream=results,
        dead_letter_stream=dead_letter,
    )


def _serve(
    url: str,
    names: StreamNames,
    factory: EngineFactory,
    config: RunConfig,
    settings: WorkerSettings,
    *,
    quiet: bool,
    debug: bool,
) -> int:
    """Connect, run the worker with signals turned into a graceful stop, report; the
    exit code."""
    from batching.redis_queue import QueueWorker, connect

    with exit_on_error(debug=debug):
        stream = connect(url, names)
    console = stderr_console()
    progress = make_progress(quiet=quiet)
    queue_worker = QueueWorker(stream, factory, config, settings, progress=progress)
    if not quiet:
        sys.stderr.write(
            f"bizra-batch: worker {names.consumer} in group {names.group} on {stream.where}, "
            f"stream {names.stream}; results to {names.results}\n"
        )
        sys.stderr.flush()
    stopped_by: list[int] = []
    restore = _stop_on_signals(queue_worker, stopped_by)
    code = OK
    try:
        queue_worker.run()
    except Interrupted as exc:  # a second signal: stop now, entries held stay pending
        code = exit_code_for(exc)
    except BatchError as exc:
        if debug:
            console.print_exception()
        print_error(str(exc))
        code = exit_code_for(exc)
    finally:
        restore()
        progress.close()
    final = queue_worker.report()
    if config.report_location is not None and not _wrote_report(final, config):
        code = code or FAILED
    if not quiet:
        from batching.report_output import render_report

        render_report(final.run, console)
        sys.stderr.write(f"bizra-batch: {final.queue_line()}\n")
    stream.close()
    if code == OK and stopped_by:
        return 128 + stopped_by[0]
    return code


def _stop_on_signals(queue_worker: QueueWorker, stopped_by: list[int]) -> Callable[[], None]:
    """SIGINT/SIGTERM stop taking entries (the held ones are finished and acked);
    a second one stops at once. Returns the function that restores the handlers."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stopped_by:
            raise Interrupted(signum)
        stopped_by.append(signum)
        queue_worker.request_stop()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _wrote_report(final: WorkerReport, config: RunConfig) -> bool:
    from batching.report_output import write_report

    assert config.report_location is not None
    try:
        write_report(final, config.report_location)
    except (OSError, BatchError) as exc:
        print_error(f"{config.report_path}: cannot write the report ({exc})")
        return False
    return True
