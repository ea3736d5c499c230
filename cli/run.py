"""`bizra-batch run`: options and env vars -> RunConfig -> `batching.job.run`."""

from __future__ import annotations

import os
import signal
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from typer.core import TyperCommand

from batching import interrupts
from batching.config import EngineConfig, InputConfig, OutputConfig, RunConfig
from batching.engine import Engine, EngineFactory
from batching.errors import BatchError, UsageError
from batching.ray_runner import LOCAL as RAY_LOCAL
from batching.readers import DEFAULT_MAX_LINE_BYTES
from batching.records import Sampling
from cli.config_file import ConfigOption
from cli.console import make_progress, print_error, stderr_console
from cli.options import (
    ENGINE,
    FIELDS,
    DtypeOption,
    EngineArgOption,
    IdField,
    InputFormatOption,
    MaxLineBytes,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MessagesField,
    PromptField,
    parse_engine_args,
)

if TYPE_CHECKING:
    from batching.openai_engine import OpenAIConfig
    from batching.ray_runner import RayOptions

__all__ = ["RunCommand", "run"]

SAMPLING = "Sampling defaults (a row's own field wins)"
RUNNING = "Batching and retries"
OUTPUT = "Output and report"
REMOTE = "Remote engine (--engine openai)"
CLUSTER = "Running on a Ray cluster"
# A closed stdout ends the run as SIGPIPE would end `cat`: 128 + 13.
_CLOSED_STDOUT = 141


class EngineChoice(str, Enum):
    vllm = "vllm"
    openai = "openai"
    fake = "fake"
    sim = "sim"


class OnInvalidChoice(str, Enum):
    record = "record"
    abort = "abort"


class OutputFormatChoice(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    openai = "openai"


class OrderChoice(str, Enum):
    auto = "auto"
    input = "input"
    length = "length"
    prefix = "prefix"
    # Kept from before `length` existed: ascending is its alias.
    ascending = "ascending"
    descending = "descending"


class RunCommand(TyperCommand):
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


def run(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT", help="JSONL, JSONL.gz or Parquet file or URI (s3://...); - for stdin."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            envvar="BIZRA_BATCH_MODEL",
            help="Model name or local path (not needed with --engine fake).",
            rich_help_panel=ENGINE,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Results file or URI (.jsonl or .parquet); - or none writes JSONL to stdout.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormatChoice | None,
        typer.Option(
            help="jsonl, parquet, or openai (OpenAI batch output lines); default from the "
            "output's extension (stdout: jsonl).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    input_format: InputFormatOption = None,
    prompt_field: PromptField = "prompt",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
    keep_fields: Annotated[
        str,
        typer.Option(
            help="Comma-separated input fields copied to each output row.", rich_help_panel=FIELDS
        ),
    ] = "",
    # Sampling values are checked by RunConfig, as a row's are (no min= here).
    max_tokens: Annotated[int, typer.Option(rich_help_panel=SAMPLING)] = 256,
    temperature: Annotated[
        float | None,
        typer.Option(help="Default: the model's generation config.", rich_help_panel=SAMPLING),
    ] = None,
    top_p: Annotated[float | None, typer.Option(rich_help_panel=SAMPLING)] = None,
    top_k: Annotated[int | None, typer.Option(rich_help_panel=SAMPLING)] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(help="Stop string; repeat for several.", rich_help_panel=SAMPLING),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Engine seed, and each row's sampling seed unless the row sets one, so "
            "sampled outputs do not depend on batching.",
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            help="Samples per prompt; with more than one, output is a list of them all.",
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    logprobs: Annotated[
        int | None,
        typer.Option(
            help="Log-probabilities of the N most likely tokens at each output position.",
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    json_schema: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="JSON Schema file every output must match (guided decoding); a row's "
            "json_schema or response_format wins.",
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    engine: Annotated[
        EngineChoice,
        typer.Option(
            help="vllm: load the model here; openai: send rows to a running "
            "OpenAI-compatible server (--base-url); fake: a model-free engine that echoes "
            "each prompt reversed, for dry runs of a job's input and output; sim: the fake "
            "engine's output at an accelerator's pace (--engine-arg step_ms=15, "
            "prefill_us_per_token=30; --max-num-seqs), to rehearse a job's timing.",
            rich_help_panel=ENGINE,
        ),
    ] = EngineChoice.vllm,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, rich_help_panel=ENGINE)] = 1,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(min=0.01, max=1.0, rich_help_panel=ENGINE)
    ] = None,
    max_num_seqs: MaxNumSeqsOption = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(min=1, rich_help_panel=ENGINE)
    ] = None,
    enable_prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--enable-prefix-caching/--no-enable-prefix-caching",
            help="Default: vLLM's.",
            rich_help_panel=ENGINE,
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            help="Run the model repository's own code. Off unless asked.", rich_help_panel=ENGINE
        ),
    ] = False,
    engine_arg: EngineArgOption = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Server URL for --engine openai, e.g. http://127.0.0.1:8000/v1; --model "
            "is then the served model name.",
            rich_help_panel=REMOTE,
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            metavar="VAR",
            help="Name of the env var holding the server's API key (never the key itself).",
            rich_help_panel=REMOTE,
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(min=1, help="Requests sent to the server at once.", rich_help_panel=REMOTE),
    ] = 16,
    request_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds one request may take before it is retried.",
            rich_help_panel=REMOTE,
        ),
    ] = 600.0,
    chunk_size: Annotated[
        int,
        typer.Option(
            min=1, help="Rows read, tokenized and grouped at a time.", rich_help_panel=RUNNING
        ),
    ] = 1024,
    order: Annotated[
        OrderChoice,
        typer.Option(
            help="Submission order within a chunk: auto (prefix when many rows share "
            "their first 64 tokens, else length), input, length (shortest first; alias "
            "ascending), prefix (rows sharing a prefix together), descending.",
            rich_help_panel=RUNNING,
        ),
    ] = OrderChoice.auto,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests inside the engine at once; default 10% above the engine's "
            "batch (max_num_seqs), so each step's freed slots refill at once.",
            rich_help_panel=RUNNING,
        ),
    ] = None,
    reorder_buffer_mb: Annotated[
        float,
        typer.Option(
            min=1,
            help="Finished rows waiting for an earlier, slower one may hold this many MiB; "
            "reading pauses past it.",
            rich_help_panel=RUNNING,
        ),
    ] = 256,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="Live input (a pipe delivering rows slowly): a partial chunk goes to the "
            "engine after its first row has waited this long.",
            rich_help_panel=RUNNING,
        ),
    ] = 50.0,
    max_retries: Annotated[int, typer.Option(min=0, rich_help_panel=RUNNING)] = 3,
    max_engine_restarts: Annotated[int, typer.Option(min=0, rich_help_panel=RUNNING)] = 3,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run: keep the rows the output already holds "
            "(checked against the input) and run the rest.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output file.", rich_help_panel=OUTPUT)
    ] = False,
    errors: Annotated[
        str | None,
        typer.Option(
            help="Also write failed rows to this file (they stay in the output too).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    on_invalid: Annotated[
        OnInvalidChoice,
        typer.Option(
            help="record: a bad input row gets an error record and the run goes on; "
            "abort: any bad row stops the run before the model loads (exit 2).",
            rich_help_panel=FIELDS,
        ),
    ] = OnInvalidChoice.record,
    max_line_bytes: MaxLineBytes = DEFAULT_MAX_LINE_BYTES,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run on Ray: engine replicas in a Ray Data actor pool. Alone, starts Ray "
            "here; auto joins the cluster of `ray start`; or ray://HOST:PORT. Needs "
            "pip install 'bizra-batch[ray]'.",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Engines in the pool, each with --tensor-parallel-size GPUs. Default: as "
            "many as the cluster's GPUs allow (1 without GPUs).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    report: Annotated[
        str | None,
        typer.Option(help="Also write the run report as JSON here.", rich_help_panel=OUTPUT),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress and no summary on stderr.", rich_help_panel=OUTPUT
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option(help="Full tracebacks and engine logs.", rich_help_panel=OUTPUT)
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Run a file of prompts through the model; one ordered result row per input row.

    Exit codes: 0 every row ok; 1 some rows failed (error records are in the output),
    or the run stopped on an error (the model would not load, the output could not be
    written); 2 usage error, unreadable input, output exists, or --on-invalid abort
    found bad rows; 130/143 interrupted by SIGINT/SIGTERM; 141 stdout closed early.
    """
    try:
        kept = tuple(f.strip() for f in keep_fields.split(",") if f.strip())
        model = _checked_model(model, engine, local=ray is None or ray == RAY_LOCAL)
        config = RunConfig(
            input=InputConfig(
                path=input_path,
                format=input_format.value if input_format else None,
                prompt_field=prompt_field,
                messages_field=messages_field,
                id_field=id_field,
                keep_fields=kept,
                chunk_size=chunk_size,
            ),
            output=OutputConfig(
                path=output,
                format=output_format.value if output_format else None,
                overwrite=overwrite,
                resume=resume,
                model=model,
            ),
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=tuple(stop) if stop else None,
                n=n,
                logprobs=logprobs,
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
            extra=parse_engine_args(engine_arg or []),
        )
        remote = _remote_config(
            engine,
            base_url,
            api_key_env,
            model=model,
            concurrency=concurrency,
            timeout_s=request_timeout,
            max_retries=max_retries,
            max_model_len=max_model_len,
        )
        cluster = _ray_options(ray, replicas, engine, tensor_parallel_size, debug)
        factory = _engine_factory(engine, engine_config, debug, remote)
    except BatchError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(_execute(config, factory, quiet, debug, cluster))


def _checked_model(model: str | None, engine: EngineChoice, *, local: bool) -> str:
    """The model, refused up front where a start would only fail after seconds of
    loading: missing, or a local path that is not there (Hugging Face then says the
    name is not a valid repo id)."""
    if model is None:
        if engine in (EngineChoice.fake, EngineChoice.sim):
            return str(engine.value)
        raise UsageError("--model is required: a model name or local path (or BIZRA_BATCH_MODEL)")
    # Only a path can start so, or have two slashes; a Hugging Face id is `name` or
    # `org/name`, and a URI (s3://...) vLLM loads itself. A path on a remote Ray
    # cluster's nodes need not exist here.
    looks_local = "://" not in model and (
        model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    )
    if engine is EngineChoice.vllm and local and looks_local:
        path = os.path.expanduser(model)
        if not os.path.exists(path):
            raise UsageError(f"--model {model}: no such file or directory")
    return model


def _ray_options(
    address: str | None,
    replicas: int | None,
    engine: EngineChoice,
    tensor_parallel_size: int,
    debug: bool,
) -> RayOptions | None:
    if address is None:
        if replicas is not None:
            raise UsageError("--replicas needs --ray; without it the run has one engine")
        return None
    # Imported only for --ray: it checks that the optional extra is installed.
    from batching.ray_runner import RayOptions, require_ray

    require_ray()
    gpus = float(tensor_parallel_size) if engine is EngineChoice.vllm else 0.0
    return RayOptions(address=address, replicas=replicas, gpus_per_replica=gpus, verbose=debug)


def _remote_config(
    choice: EngineChoice,
    base_url: str | None,
    api_key_env: str | None,
    **settings: Any,
) -> OpenAIConfig | None:
    if choice is not EngineChoice.openai:
        if base_url is not None:
            raise UsageError("--base-url is for --engine openai")
        return None
    if not base_url:
        raise UsageError(
            "--engine openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1"
        )
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {api_key_env}: that env var is not set or empty")
    # Imported here: httpx is not needed for --help or the other engines.
    from batching.openai_engine import OpenAIConfig

    model = settings["model"]
    tokenizer_dir = model if os.path.isdir(model) else None
    return OpenAIConfig(base_url=base_url, api_key=api_key, tokenizer_dir=tokenizer_dir, **settings)


def _engine_factory(
    choice: EngineChoice, config: EngineConfig, debug: bool, remote: OpenAIConfig | None
) -> EngineFactory:
    if choice is EngineChoice.fake:
        from batching.testing import FakeEngine

        return FakeEngine
    if choice is EngineChoice.sim:
        from batching.sim_engine import sim_engine_factory

        return sim_engine_factory(config)
    if remote is not None:
        remote_config = remote

        def create_remote() -> Engine:
            from batching.openai_engine import create_openai_engine

            return create_openai_engine(remote_config)

        return create_remote

    def create() -> Engine:
        # Imported when the engine starts, so `--help` and usage errors never load
        # vLLM and torch (seconds of start-up).
        from batching.vllm_engine import create_vllm_engine

        return create_vllm_engine(config, verbose=debug)

    return create


def _execute(
    config: RunConfig,
    engine_factory: EngineFactory,
    quiet: bool,
    debug: bool,
    cluster: RayOptions | None = None,
) -> int:
    from batching.job import run as run_pipeline
    from batching.report import ReportCollector
    from batching.report_output import render_report, write_report

    console = stderr_console()
    progress = make_progress(quiet=quiet)
    collector = ReportCollector()
    # Started now, so a signal or error before the runner starts the clock (a long
    # --resume scan, an --on-invalid abort pass) still gets a report, not a traceback;
    # the runner restarts it.
    collector.start()
    restore_signals = interrupts.install()
    exit_code = 0
    try:
        if cluster is None:
            run_pipeline(config, engine_factory, progress=progress, report=collector)
        else:
            from batching.ray_runner import run_on_ray

            run_on_ray(config, engine_factory, cluster, progress=progress, report=collector)
    except interrupts.Interrupted as exc:
        exit_code = exc.exit_code
        collector.record_interrupt(signal.Signals(exc.exit_code - 128).name)
    except BrokenPipeError:
        # `bizra-batch run big.jsonl | head`: the reader left; end quietly, with the
        # status of a program killed by SIGPIPE as `seq` or `cat` would: rows went
        # undelivered, so not 0. Point stdout at /dev/null so the interpreter's own
        # final flush cannot complain.
        _silence_stdout()
        exit_code = _CLOSED_STDOUT
        collector.record_interrupt("SIGPIPE")  # the report covers part of the input
    except BatchError as exc:
        if debug:
            console.print_exception()
        print_error(str(exc))
        exit_code = exc.exit_code
        if exit_code == 2:
            return exit_code
    finally:
        restore_signals()
        progress.close()
    final = collector.finish()
    if config.report_location is not None:
        try:
            write_report(final, config.report_location)
        except OSError as exc:  # the directory was checked at start; the disk may be full
            print_error(f"{config.report_path}: cannot write the report ({exc.strerror or exc})")
            exit_code = exit_code or 1
        except BatchError as exc:  # a remote report: the object store refused it
            print_error(str(exc))
            exit_code = exit_code or 1
    if exit_code == _CLOSED_STDOUT:
        return exit_code
    # A run that stopped on an error before writing a row has nothing to sum up
    # ("0 ok, 0 failed") under its error line.
    if not quiet and not (exit_code == 1 and final.rows == 0):
        render_report(final, console)
        if not exit_code and final.rows == 0 and final.rows_resumed == 0:
            sys.stderr.write("bizra-batch: the input has no rows; the output is empty\n")
    if exit_code:
        if exit_code >= 128:
            sys.stderr.write(f"bizra-batch: interrupted; {_saved_where(config)}\n")
        return exit_code
    return 1 if final.rows_failed else 0


def _saved_where(config: RunConfig) -> str:
    """Where an interrupted run's rows are: a Parquet file is only written whole, at
    the end; until then they are in its parts directory."""
    from batching.parquet_format import PARTS_SUFFIX

    output = config.output
    if not output.location.is_local or output.written_format != "parquet":
        return "completed rows are saved."
    path = output.location.path
    return (
        f"completed rows are saved in {path}{PARTS_SUFFIX}/; run again with --resume to finish "
        f"and write {path}"
    )


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
