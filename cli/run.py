"""`bizra-batch run`: options and env vars -> RunConfig -> `batching.pipeline.run`."""

from __future__ import annotations

import math
import sys
from enum import Enum
from typing import Annotated, Any

import orjson
import typer

from batching import interrupts
from batching.config import EngineConfig, InputConfig, OutputConfig, RunConfig
from batching.engine import Engine, EngineFactory
from batching.errors import BatchError, UsageError
from batching.readers import DEFAULT_MAX_LINE_BYTES
from batching.records import Sampling
from cli.console import make_progress, print_error, stderr_console
from cli.options import (
    FIELDS,
    IdField,
    InputFormatOption,
    MaxLineBytes,
    MessagesField,
    PromptField,
)

__all__ = ["run"]

ENGINE = "Engine (passed to vllm.LLM)"
SAMPLING = "Sampling defaults (a row's own field wins)"
RUNNING = "Batching and retries"
OUTPUT = "Output and report"


class EngineChoice(str, Enum):
    vllm = "vllm"
    fake = "fake"


class OnInvalidChoice(str, Enum):
    record = "record"
    abort = "abort"


class OrderChoice(str, Enum):
    auto = "auto"
    input = "input"
    length = "length"
    prefix = "prefix"
    # Kept from before `length` existed: ascending is its alias.
    ascending = "ascending"
    descending = "descending"


def _parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a VALUE that parses as JSON is taken as JSON (numbers, bools)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--engine-arg {pair!r}: expected KEY=VALUE, e.g. swap_space=4")
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def _check_sampling(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and (math.isnan(value) or not low <= value <= high):
        raise UsageError(f"--{name} {value}: must be between {low} and {high}")


def run(
    input_path: Annotated[
        str, typer.Argument(metavar="INPUT", help="JSONL, JSONL.gz or Parquet file; - for stdin.")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            envvar="BIZRA_BATCH_MODEL",
            help="Model name or local path.",
            rich_help_panel=ENGINE,
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Results file (.jsonl or .parquet); - or none writes JSONL to stdout.",
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
    max_tokens: Annotated[int, typer.Option(min=1, rich_help_panel=SAMPLING)] = 256,
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
    engine: Annotated[
        EngineChoice,
        typer.Option(
            help="vllm, or fake: a model-free engine that echoes each prompt reversed, "
            "for dry runs of a job's input and output.",
            rich_help_panel=ENGINE,
        ),
    ] = EngineChoice.vllm,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, rich_help_panel=ENGINE)] = 1,
    dtype: Annotated[str, typer.Option(rich_help_panel=ENGINE)] = "auto",
    max_model_len: Annotated[int | None, typer.Option(min=1, rich_help_panel=ENGINE)] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(min=0.01, max=1.0, rich_help_panel=ENGINE)
    ] = None,
    max_num_seqs: Annotated[int | None, typer.Option(min=1, rich_help_panel=ENGINE)] = None,
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
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Any other vllm.LLM argument as KEY=VALUE; repeatable.", rich_help_panel=ENGINE
        ),
    ] = None,
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
        int,
        typer.Option(min=1, help="Requests inside the engine at once.", rich_help_panel=RUNNING),
    ] = 512,
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
) -> None:
    """Run a file of prompts through the model; one ordered result row per input row.

    Exit codes: 0 every row ok; 1 some rows failed (error records are in the output);
    2 usage error or unreadable input; 130/143 interrupted by SIGINT/SIGTERM.
    """
    try:
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pick one")
        if resume and (output is None or output == "-"):
            raise UsageError("--resume needs an output file (-o); stdout cannot be continued")
        _check_sampling("temperature", temperature, 0.0, math.inf)
        _check_sampling("top-p", top_p, 1e-9, 1.0)
        config = RunConfig(
            input=InputConfig(
                path=input_path,
                format=input_format.value if input_format else None,
                prompt_field=prompt_field,
                messages_field=messages_field,
                id_field=id_field,
                keep_fields=tuple(f.strip() for f in keep_fields.split(",") if f.strip()),
                chunk_size=chunk_size,
            ),
            output=OutputConfig(path=output, overwrite=overwrite, resume=resume),
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=tuple(stop) if stop else None,
            ),
            order=order.value,
            max_retries=max_retries,
            max_engine_restarts=max_engine_restarts,
            max_in_flight=max_in_flight,
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
            extra=_parse_engine_args(engine_arg or []),
        )
    except BatchError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(_execute(config, _engine_factory(engine, engine_config, debug), quiet, debug))


def _engine_factory(choice: EngineChoice, config: EngineConfig, debug: bool) -> EngineFactory:
    if choice is EngineChoice.fake:
        from batching.testing import FakeEngine

        return FakeEngine

    def create() -> Engine:
        # Imported when the engine starts, so `--help` and usage errors never load
        # vLLM and torch (seconds of start-up).
        from batching.vllm_engine import create_vllm_engine

        return create_vllm_engine(config, verbose=debug)

    return create


def _execute(config: RunConfig, engine_factory: EngineFactory, quiet: bool, debug: bool) -> int:
    from batching.job import run as run_pipeline
    from batching.report import ReportCollector, render_report, write_report

    console = stderr_console()
    progress = make_progress(quiet=quiet)
    collector = ReportCollector()
    restore_signals = interrupts.install()
    exit_code = 0
    try:
        run_pipeline(
            config,
            engine_factory,
            progress=progress,
            report=collector,
        )
    except interrupts.Interrupted as exc:
        exit_code = exc.exit_code
    except BrokenPipeError:
        # `bizra-batch run big.jsonl | head`: the reader left; end quietly. Point
        # stdout at /dev/null so the interpreter's own final flush cannot complain.
        _silence_stdout()
        return 0
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
    if config.report_path:
        write_report(final, config.report_path)
    if not quiet:
        render_report(final, console)
    if exit_code:
        if exit_code >= 128:
            sys.stderr.write("bizra-batch: interrupted; completed rows are saved.\n")
        return exit_code
    return 1 if final.rows_failed else 0


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
