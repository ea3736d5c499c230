"""`bizra-batch bench`: options -> prompts and an engine -> `batching.bench.run_bench`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from batching.bench import ALL, DEFAULT_BATCH_SIZES, BenchResult, BenchRow
from batching.config import EngineConfig
from batching.engine import Engine, PermanentRequestError
from batching.engine_choice import EngineChoice, checked_model, engine_factory
from batching.errors import UsageError
from batching.records import InvalidRow, Request, Sampling
from batching.vs_generate import VsGenerateResult
from cli.config_file import ConfigOption
from cli.console import stderr_console
from cli.exit_codes import exit_on_error
from cli.options import (
    ENGINE,
    OUTPUT,
    DtypeOption,
    EngineArgOption,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MessagesField,
    ModelOption,
    PromptField,
    input_config,
    parse_engine_args,
)

__all__ = ["bench"]

PROMPTS = "Prompts"
MEASUREMENT = "Measurement"
DEFAULT_PROMPTS = 64
DEFAULT_SIZES = ",".join("all" if size == ALL else str(size) for size in DEFAULT_BATCH_SIZES)


class BenchEngine(str, Enum):
    """The engines bench can measure: run's, less openai (bench has no server options)."""

    vllm = "vllm"
    fake = "fake"
    sim = "sim"

    @property
    def choice(self) -> EngineChoice:
        return EngineChoice(self.value)


def _parse_sizes(text: str) -> list[int]:
    sizes: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            sizes.append(ALL)
        elif part.isdigit() and int(part) >= 1:
            sizes.append(int(part))
        else:
            raise UsageError(f"--batch-sizes {text!r}: {part!r} is not a positive number or all")
    return sizes


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(p) for p in text.split(",")]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 1:
        raise UsageError(f"--prompt-tokens {text!r}: expected positive numbers, e.g. 32,128")
    return lengths


def _read_rows(
    path: str, prompt_field: str, messages_field: str, limit: int | None
) -> list[Request]:
    """The file's first `limit` rows (all with None), each with its own settings."""
    from batching.readers import open_source

    rows: list[Request] = []
    config = input_config(path, None, prompt_field, messages_field)
    with open_source(config) as source:
        for chunk in source.chunks():
            for row in chunk:
                if isinstance(row, InvalidRow):
                    raise UsageError(f"{path}: {row.error.message}; fix it or pick another file")
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    return rows
    if not rows:
        raise UsageError(f"{path}: no prompts in the file")
    return rows


def _check_vs_generate(
    ctx: typer.Context, engine: BenchEngine, plot: str | None, pipeline: bool
) -> None:
    """What --vs-generate cannot be combined with, before the engine starts."""
    if engine is not BenchEngine.vllm:
        raise UsageError(
            f"--vs-generate compares with vLLM's LLM.generate, which --engine {engine.value} "
            "does not have; use --engine vllm"
        )
    if not pipeline:
        raise UsageError("--vs-generate runs the pipeline; leave out --no-pipeline")
    if plot:
        raise UsageError(
            "--plot draws the batch-size sweep, which --vs-generate skips; leave out --plot"
        )
    # By name: typer 0.29 runs on its own vendored click, whose enum is not click's.
    source = ctx.get_parameter_source("batch_sizes")
    if source is not None and source.name == "COMMANDLINE":
        raise UsageError(
            "--batch-sizes sets the sweep, which --vs-generate skips; leave out --batch-sizes"
        )


def bench(
    ctx: typer.Context,
    model: ModelOption,
    input_path: Annotated[
        str | None,
        typer.Option(
            "--input",
            envvar="BIZRA_BATCH_INPUT",  # after the option, not the parameter (_INPUT_PATH)
            help="Prompts from this JSONL/Parquet file (the first --prompts rows) instead "
            "of synthetic ones.",
            rich_help_panel=PROMPTS,
        ),
    ] = None,
    prompts: Annotated[
        int | None,
        typer.Option(
            "--prompts",
            min=1,
            help=f"How many prompts [default: {DEFAULT_PROMPTS}; with --vs-generate and "
            "--input, every row of the file].",
            show_default=False,
            rich_help_panel=PROMPTS,
        ),
    ] = None,
    prompt_tokens: Annotated[
        str,
        typer.Option(
            help="Synthetic prompt lengths in tokens, comma-separated; prompts cycle through them.",
            rich_help_panel=PROMPTS,
        ),
    ] = "32",
    prompt_field: PromptField = "prompt",
    messages_field: MessagesField = "messages",
    max_tokens: Annotated[
        int,
        typer.Option(min=1, help="New tokens per prompt (greedy).", rich_help_panel=PROMPTS),
    ] = 16,
    batch_sizes: Annotated[
        str,
        typer.Option(
            help="Static batch sizes to sweep; all = every prompt at once.",
            rich_help_panel=MEASUREMENT,
        ),
    ] = DEFAULT_SIZES,
    pipeline: Annotated[
        bool,
        typer.Option(
            help="Also run the prompts through the `run` pipeline.", rich_help_panel=MEASUREMENT
        ),
    ] = True,
    vs_generate: Annotated[
        bool,
        typer.Option(
            "--vs-generate",
            help="Instead of the sweep: the prompts through one raw LLM.generate call and "
            "through the `run` pipeline on the same engine; prints both throughputs and "
            "pipeline/generate. Rows keep their own max_tokens and temperature.",
            rich_help_panel=MEASUREMENT,
        ),
    ] = False,
    json_path: Annotated[
        str | None,
        typer.Option("--json", help="Also write the results as JSON here.", rich_help_panel=OUTPUT),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            help="Draw throughput and latency against batch size to this PNG (needs the "
            "plot extra: matplotlib).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    engine: Annotated[
        BenchEngine,
        typer.Option(
            # Not run's BIZRA_BATCH_ENGINE: run also takes openai, which bench cannot
            # run, so exporting it for run would break bench.
            envvar="BIZRA_BATCH_BENCH_ENGINE",
            help="vllm; fake (instant, model-free); or sim (fake outputs at an "
            "accelerator's pace: --engine-arg step_ms=15, prefill_us_per_token=30).",
            rich_help_panel=ENGINE,
        ),
    ] = BenchEngine.vllm,
    dtype: DtypeOption = "auto",
    max_model_len: MaxModelLenOption = None,
    max_num_seqs: MaxNumSeqsOption = None,
    enable_prefix_caching: Annotated[
        bool,
        typer.Option(
            "--enable-prefix-caching/--no-enable-prefix-caching",
            help="Off by default: every row reruns the same prompts, which a prefix "
            "cache would serve from the row before.",
            rich_help_panel=ENGINE,
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Engine and synthetic prompts' seed.", rich_help_panel=ENGINE)
    ] = 0,
    engine_arg: EngineArgOption = None,
    debug: Annotated[
        bool, typer.Option(help="Full tracebacks and engine logs.", rich_help_panel=OUTPUT)
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Measure batching on the real engine: serial, a sweep of batch sizes, and `run`.

    Prints requests/s, output tokens/s, p50/p95 request latency, speed-up over serial
    and efficiency against linear scaling per batch size. With --vs-generate, instead:
    wall seconds, rows/s and output tokens/s of one raw LLM.generate call and of the
    `run` pipeline on the same engine, and pipeline/generate. Exit codes: 0 done; 1
    the engine failed; 2 usage error.
    """
    from batching.bench import as_requests, synthetic_prompts

    console = stderr_console()
    with exit_on_error():
        model = checked_model(model, engine.choice)
        if vs_generate:
            _check_vs_generate(ctx, engine, plot, pipeline)
        sizes = _parse_sizes(batch_sizes)
        lengths = _parse_lengths(prompt_tokens)
        if plot:
            from batching.bench_output import check_plotting

            check_plotting()
        # The sweep runs every prompt once per batch size (serially too), so it takes
        # the first 64 by default; --vs-generate runs the file as `run` would.
        limit = prompts if prompts or vs_generate else DEFAULT_PROMPTS
        rows = _read_rows(input_path, prompt_field, messages_field, limit) if input_path else None
        engine_config = EngineConfig(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            extra=parse_engine_args(engine_arg),
        )
        start = engine_factory(engine.choice, engine_config, verbose=debug)

    console.print(f"bizra-batch bench: starting {model} ...")
    with exit_on_error():
        live = start()
    settings = {
        "model": model,
        "engine": engine.value,
        "input": input_path,
        "prompt_tokens": None if input_path else lengths,
        "enable_prefix_caching": enable_prefix_caching,
        "cpus": os.cpu_count(),
    }
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, seed=seed)
    try:
        # Not a usage error if the engine refuses the prompts: exit 1, as in run.
        with exit_on_error(ValueError, RuntimeError, PermanentRequestError, debug=debug):
            if rows is None:
                texts = synthetic_prompts(live, prompts or DEFAULT_PROMPTS, lengths, seed=seed)
                rows = as_requests(texts)
            result = _measure(live, rows, sampling, sizes, pipeline, vs_generate, settings, console)
    finally:
        live.close()
    _show(result, json_path, plot, console)


def _measure(
    live: Engine,
    rows: list[Request],
    sampling: Sampling,
    sizes: list[int],
    pipeline: bool,
    vs_generate: bool,
    settings: Mapping[str, Any],
    console: Console,
) -> BenchResult | VsGenerateResult:
    from batching.bench import pipeline_config, prompt_of

    if vs_generate:
        from batching.vs_generate import run_vs_generate

        return run_vs_generate(
            live, rows, sampling, pipeline_config(), on_row=_progress(console), settings=settings
        )
    from batching.bench import run_bench

    return run_bench(
        live, [prompt_of(row) for row in rows], sampling, batch_sizes=sizes,
        pipeline=pipeline_config() if pipeline else None, on_row=_progress(console),
        settings=settings,
    )  # fmt: skip


def _progress(console: Console) -> Callable[[BenchRow], None]:
    def show(row: BenchRow) -> None:
        console.print(
            f"  {row.label}: {row.wall_seconds:.2f} s, {row.requests_per_second:.2f} req/s"
        )

    return show


def _show(
    result: BenchResult | VsGenerateResult,
    json_path: str | None,
    plot: str | None,
    console: Console,
) -> None:
    from batching.bench_output import plot_bench, render_bench, render_vs_generate, write_bench_json

    # The table is the command's result, so it goes to stdout (redirect it to a file).
    table_console = Console(width=max(120, Console().width))
    if isinstance(result, VsGenerateResult):
        render_vs_generate(result, table_console)
    else:
        render_bench(result, table_console)
    if json_path:
        write_bench_json(result, json_path)
    if plot and isinstance(result, BenchResult):
        plot_bench(result, plot)
        console.print(f"plot written to {plot}")
