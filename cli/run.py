"""`bizra-batch run`: options and env vars -> RunConfig and an engine -> `batching.job.run`."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
import typer

from batching import interrupts
from batching.config import CacheConfig, EngineConfig, OutputConfig, RunConfig
from batching.engine import EngineFactory
from batching.engines.choice import (
    RAY_LOCAL,
    EngineChoice,
    check_engine_task,
    checked_model,
    engine_factory,
    ray_options,
    remote_config,
)
from batching.errors import BatchError, UsageError
from batching.lora import LoraAdapters
from batching.manifest import Manifest, PendingModelIdentity
from batching.records import Sampling
from cli.config_file import ConfigOption
from cli.console import make_progress, print_error, stderr_console
from cli.exit_codes import (
    CLOSED_STDOUT,
    FAILED,
    USAGE,
    exit_code_for,
    exit_on_error,
    finished_code,
    is_interrupted,
)
from cli.help import PanelledCommand
from cli.options import (
    DEFAULT_MAX_LINE_BYTES,
    AllowedMediaPath,
    AllowRemoteMedia,
    ChatOption,
    DtypeOption,
    EngineArgOption,
    IdField,
    InputFormatOption,
    LoraOption,
    MaxLineBytes,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MessagesField,
    PromptField,
    SystemOption,
    TaskOption,
    TemplateFileOption,
    TemplateOption,
    input_config,
    parse_engine_args,
)
from cli.run_options import (
    ApiKeyEnv,
    BaseUrl,
    CachePath,
    CacheSampled,
    ChunkSize,
    Concurrency,
    Debug,
    Dimensions,
    EnablePrefixCaching,
    EngineOption,
    ErrorsPath,
    GpuMemoryUtilization,
    InputArgument,
    JsonSchema,
    KeepFields,
    Logprobs,
    MaxEngineRestarts,
    MaxInFlight,
    MaxNumBatchedTokens,
    MaxRetries,
    MaxTokens,
    MaxWaitMs,
    NoDedup,
    Normalize,
    OnInvalid,
    OnInvalidChoice,
    OrderChoice,
    OrderOption,
    OutputFormatOption,
    OutputPath,
    Overwrite,
    Quiet,
    RayAddress,
    ReorderBufferMb,
    Replicas,
    ReportPath,
    RequestTimeout,
    Resume,
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
    from batching.ray.runner import RayOptions
    from batching.report import Report as RunReport

__all__ = ["RunCommand", "bare_ray_means_local", "run"]


class RunCommand(PanelledCommand):
    """The `run` command; a bare `--ray` (no address after it) means `--ray local`.

    Typer has no option whose value may be left out, so the arguments are completed
    before parsing. The next argument is taken as the address only if it looks like
    one (auto, local, HOST:PORT, a URL): `run --ray in.jsonl` still reads in.jsonl.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bare_ray_means_local(args))


def bare_ray_means_local(args: list[str]) -> list[str]:
    """Insert the "local" address after a `--ray` that has none.

    >>> bare_ray_means_local(["in.jsonl", "--ray", "-m", "m"])
    ['in.jsonl', '--ray', 'local', '-m', 'm']
    >>> bare_ray_means_local(["--ray", "auto"])
    ['--ray', 'auto']
    """
    completed: list[str] = []
    for position, arg in enumerate(args):
        if arg == "--":
            return completed + args[position:]
        completed.append(arg)
        if arg == "--ray":
            following = args[position + 1] if position + 1 < len(args) else None
            if following is None or not _looks_like_address(following):
                completed.append(RAY_LOCAL)
    return completed


def _looks_like_address(arg: str) -> bool:
    return arg in ("auto", RAY_LOCAL) or ":" in arg


def run(
    input_path: InputArgument,
    input_format: InputFormatOption = None,
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
    json_schema: JsonSchema = None,
    task: TaskOption = None,
    normalize: Normalize = None,
    dimensions: Dimensions = None,
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
    chunk_size: ChunkSize = 1024,
    order: OrderOption = OrderChoice.auto,
    max_in_flight: MaxInFlight = None,
    reorder_buffer_mb: ReorderBufferMb = 256,
    max_wait_ms: MaxWaitMs = 50.0,
    no_dedup: NoDedup = False,
    cache: CachePath = None,
    cache_sampled: CacheSampled = False,
    max_retries: MaxRetries = 3,
    max_engine_restarts: MaxEngineRestarts = 3,
    resume: Resume = False,
    overwrite: Overwrite = False,
    errors: ErrorsPath = None,
    on_invalid: OnInvalid = OnInvalidChoice.record,
    output: OutputPath = None,
    output_format: OutputFormatOption = None,
    report: ReportPath = None,
    quiet: Quiet = False,
    debug: Debug = False,
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = None,
    concurrency: Concurrency = 16,
    request_timeout: RequestTimeout = 600.0,
    ray: RayAddress = None,
    replicas: Replicas = None,
    config_file: ConfigOption = None,
) -> None:
    """Run files of prompts through the model; one ordered result row per input row.

    Several inputs (files, directories, globs) are read in order as one input; with
    -o DIR/ each input file gets its own output, DIR/<its relative name>.

    Exit codes: 0 every row ok; 1 some rows failed (error records are in the output),
    or the run stopped on an error (the model would not load, the output could not be
    written); 2 usage error, unreadable input, output exists, or --on-invalid abort
    found bad rows; 130/143 interrupted by SIGINT/SIGTERM; 141 stdout closed early.
    """
    with exit_on_error():
        model = checked_model(model, engine, local=ray in (None, RAY_LOCAL))
        loras = LoraAdapters.parse(lora)
        config = RunConfig(
            input=input_config(
                input_path[0], input_format, prompt_field, messages_field, id_field,
                keep_fields=keep_fields, chunk_size=chunk_size,
                template=template, template_file=template_file, chat=chat, system=system,
                more_paths=tuple(input_path[1:]),
                adapter_names=loras.names,
                allowed_media_path=allowed_media_path, allow_remote_media=allow_remote_media,
                task=task, normalize=normalize, dimensions=dimensions,
            ),
            output=OutputConfig(
                path=output, format=None if output_format is None else output_format.value,
                overwrite=overwrite, resume=resume, model=model,
            ),
            sampling=Sampling(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                seed=seed, stop=tuple(stop) if stop else None, n=n, logprobs=logprobs,
                json_schema=None if json_schema is None else _read_json_schema(json_schema),
            ),
            order=order.value,
            max_retries=max_retries,
            max_engine_restarts=max_engine_restarts,
            max_in_flight=max_in_flight,
            reorder_buffer_bytes=int(reorder_buffer_mb * 1024 * 1024),
            max_wait_ms=max_wait_ms,
            report_path=report,
            errors_path=errors,
            on_invalid=on_invalid.value,
            max_line_bytes=max_line_bytes,
        )  # fmt: skip
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
            task=config.task,
        )
        config = _with_reuse(config, engine_config, engine, no_dedup, cache, cache_sampled)
        check_engine_task(engine, config.task, ray)
        remote = remote_config(
            engine, base_url, api_key_env, model=model, concurrency=concurrency,
            timeout_s=request_timeout, max_retries=max_retries, max_model_len=max_model_len,
        )  # fmt: skip
        cluster = ray_options(ray, replicas, engine, tensor_parallel_size, verbose=debug)
        factory = engine_factory(engine, engine_config, remote=remote, verbose=debug)
        manifest = Manifest.of(config, engine.value, engine_config)
        # The fake and sim engines load no model: nothing to hash. With --cache the
        # cache works out the identity (memoised per file) and records it itself.
        hashed = engine.needs_model and config.cache is None
        identity = PendingModelIdentity(engine_config) if hashed else None
    raise typer.Exit(_execute(config, factory, quiet, debug, cluster, manifest, identity))


def _with_reuse(
    config: RunConfig,
    engine_config: EngineConfig,
    engine: EngineChoice,
    no_dedup: bool,
    cache: str | None,
    cache_sampled: bool,
) -> RunConfig:
    """`config` with deduplication and the result cache as the options ask."""
    if cache is None:
        if cache_sampled:
            raise UsageError("--cache-sampled needs --cache PATH")
        return replace(config, dedup=not no_dedup)
    cache_config = CacheConfig(cache, engine_config, engine.value, sampled=cache_sampled)
    return replace(config, dedup=not no_dedup, cache=cache_config)


def _read_json_schema(path: str) -> str:
    """The schema file's JSON, compact; a usage error names what is wrong with it."""
    try:
        with open(path, "rb") as file:
            schema = orjson.loads(file.read())
    except OSError as exc:
        raise UsageError(f"--json-schema {path}: cannot read ({exc.strerror or exc})") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--json-schema {path}: not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema {path}: expected a JSON Schema object")
    return orjson.dumps(schema).decode()


def _execute(
    config: RunConfig,
    engine_factory: EngineFactory,
    quiet: bool,
    debug: bool,
    cluster: RayOptions | None = None,
    manifest: Manifest | None = None,
    model_identity: PendingModelIdentity | None = None,
) -> int:
    """Run the job with progress and signals handled, write and show the report;
    the exit code."""
    from batching.job import run as run_pipeline
    from batching.report import ReportCollector
    from batching.report_output import render_report

    console = stderr_console()
    progress = make_progress(quiet=quiet)
    collector = ReportCollector()
    if manifest is not None:
        collector.record_manifest(manifest)
    # Started now, so a signal or error before the runner starts the clock (a long
    # --resume scan, an --on-invalid abort pass) still gets a report, not a traceback;
    # the runner restarts it.
    collector.start()
    restore_signals = interrupts.install()
    stopped: int | None = None
    try:
        if cluster is None:
            run_pipeline(config, engine_factory, progress=progress, report=collector)
        else:
            from batching.ray.runner import run_on_ray

            run_on_ray(config, engine_factory, cluster, progress=progress, report=collector)
    except interrupts.Interrupted as exc:
        stopped = exit_code_for(exc)
        collector.record_interrupt(signal.Signals(stopped - 128).name)
    except BrokenPipeError as exc:
        # `bizra-batch run big.jsonl | head`: the reader left; end quietly, with the
        # status of a program killed by SIGPIPE as `seq` or `cat` would. Point stdout
        # at /dev/null so the interpreter's own final flush cannot complain.
        _silence_stdout()
        stopped = exit_code_for(exc)
        collector.record_interrupt("SIGPIPE")  # the report covers part of the input
    except BatchError as exc:
        if debug:
            console.print_exception()
        print_error(str(exc))
        stopped = exit_code_for(exc)
        if stopped == USAGE:  # nothing ran: no report
            return stopped
    finally:
        restore_signals()
        progress.close()
    if model_identity is not None:
        interrupted = stopped is not None and is_interrupted(stopped)
        identity = model_identity.result(wait=not interrupted)
        if identity is not None:
            collector.record_model_identity(identity)
    final = collector.finish()
    if config.report_location is not None and not _wrote_report(final, config):
        stopped = stopped or FAILED
    if stopped == CLOSED_STDOUT:
        return stopped
    # A run that stopped on an error before writing a row has nothing to sum up
    # ("0 ok, 0 failed") under its error line.
    if not quiet and not (stopped == FAILED and final.rows == 0):
        render_report(final, console)
        if stopped is None and final.rows == 0 and final.rows_resumed == 0:
            sys.stderr.write("bizra-batch: the input has no rows; the output is empty\n")
    if stopped is not None:
        if is_interrupted(stopped):
            sys.stderr.write(f"bizra-batch: interrupted; {_saved_where(config.output)}\n")
        return stopped
    return finished_code(final.rows_failed)


def _wrote_report(final: RunReport, config: RunConfig) -> bool:
    """Write the report where --report says; False, with a line on stderr, if it failed."""
    from batching.report_output import write_report

    assert config.report_location is not None
    try:
        write_report(final, config.report_location)
    except OSError as exc:  # the directory was checked at start; the disk may be full
        print_error(f"{config.report_path}: cannot write the report ({exc.strerror or exc})")
        return False
    except BatchError as exc:  # a remote report: the object store refused it
        print_error(str(exc))
        return False
    return True


def _saved_where(output: OutputConfig) -> str:
    """Where an interrupted run's completed rows are, and how to finish it."""
    from batching.parquet_output import unfinished_rows_dir

    if output.is_directory:
        return (
            f"completed rows are saved in {output.location.path} (a Parquet output's in its "
            ".parts/ directory until its file is whole); run again with --resume to finish"
        )
    parts = unfinished_rows_dir(output)
    if parts is None:
        return "completed rows are saved."
    return (
        f"completed rows are saved in {parts}/; run again with --resume to finish and "
        f"write {output.location.path}"
    )


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
