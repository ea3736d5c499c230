"""`bizra-batch bench`: options -> prompts and an engine -> `batching.bench.run_bench`."""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console

from batching.bench import ALL, DEFAULT_BATCH_SIZES, Prompt
from batching.config import EngineConfig, InputConfig
from batching.engine import Engine
from batching.errors import BatchError, UsageError
from batching.records import InvalidRow, Sampling
from cli.config_file import ConfigOption
from cli.console import print_error, stderr_console
from cli.options import (
    ENGINE,
    DtypeOption,
    EngineArgOption,
    MaxModelLenOption,
    MaxNumSeqsOption,
    MessagesField,
    ModelOption,
    PromptField,
    parse_engine_args,
)

__all__ = ["bench"]

PROMPTS = "Prompts"
DEFAULT_SIZES = ",".join("all" if size == ALL else str(size) for size in DEFAULT_BATCH_SIZES)


class BenchEngine(str, Enum):
    vllm = "vllm"
    fake = "fake"


def _start_engine(choice: BenchEngine, config: EngineConfig, debug: bool) -> Engine:
    if choice is BenchEngine.fake:
        from batching.testing import FakeEngine

        return FakeEngine()
    # Imported here, so `--help` and usage errors never load vLLM and torch.
    from batching.vllm_engine import create_vllm_engine

    return create_vllm_engine(config, verbose=debug)


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


def _read_prompts(path: str, prompt_field: str, messages_field: str, limit: int) -> list[Prompt]:
    from batching.readers import open_source

    prompts: list[Prompt] = []
    config = InputConfig(path=path, prompt_field=prompt_field, messages_field=messages_field)
    with open_source(config) as source:
        for chunk in source.chunks():
            for row in chunk:
                if isinstance(row, InvalidRow):
                    raise UsageError(f"{path}: {row.error.message}; fix it or pick another file")
                prompts.append(row.prompt if row.prompt is not None else list(row.messages or ()))
                if len(prompts) >= limit:
                    return prompts
    return prompts


def bench(
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
        int, typer.Option("--prompts", min=1, help="How many prompts.", rich_help_panel=PROMPTS)
    ] = 64,
    prompt_tokens: Annotated[
        str,
        typer.Option(
            help="Synthetic prompt lengths in tokens, comma-separated; prompts cycle through them.",
            rich_help_panel=PROMPTS,
        ),
    ] = "32",
    prompt_field: PromptField = "prompt",
    messages_field: MessagesField = "messages",
    max_tokens: Annotated[int, typer.Option(min=1, rich_help_panel=PROMPTS)] = 16,
    batch_sizes: Annotated[
        str,
        typer.Option(help="Static batch sizes to sweep; all = every prompt at once."),
    ] = DEFAULT_SIZES,
    pipeline: Annotated[
        bool, typer.Option(help="Also run the prompts through the `run` pipeline.")
    ] = True,
    json_path: Annotated[
        str | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            help="Draw throughput and latency against batch size to this PNG (needs the "
            "plot extra: matplotlib)."
        ),
    ] = None,
    engine: Annotated[
        BenchEngine,
        typer.Option(
            # Not run's BIZRA_BATCH_ENGINE: run also takes openai, which bench cannot
            # run, so exporting it for run would break bench.
            envvar="BIZRA_BATCH_BENCH_ENGINE",
            help="vllm, or fake (instant, model-free).",
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
    seed: Annotated[int, typer.Option(rich_help_panel=ENGINE)] = 0,
    engine_arg: EngineArgOption = None,
    debug: Annotated[bool, typer.Option(help="Full tracebacks and engine logs.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Measure batching on the real engine: serial, a sweep of batch sizes, and `run`.

    Prints requests/s, output tokens/s, p50/p95 request latency, speed-up over serial
    and efficiency against linear scaling per batch size. Exit codes: 0 done; 1 the
    engine failed; 2 usage error.
    """
    from batching.bench import pipeline_config, run_bench, synthetic_prompts
    from batching.bench_output import check_plotting, plot_bench, render_bench, write_bench_json

    console = stderr_console()
    try:
        sizes = _parse_sizes(batch_sizes)
        lengths = _parse_lengths(prompt_tokens)
        if plot:
            check_plotting()
        texts = (
            _read_prompts(input_path, prompt_field, messages_field, prompts) if input_path else None
        )
        if texts is not None and not texts:
            raise UsageError(f"{input_path}: no prompts in the file")
        engine_config = EngineConfig(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            extra=parse_engine_args(engine_arg or []),
        )
    except BatchError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None

    console.print(f"bizra-batch bench: starting {model} ...")
    live = _start_engine(engine, engine_config, debug)
    try:
        if texts is None:
            texts = list(synthetic_prompts(live, prompts, lengths, seed=seed))
        sampling = Sampling(max_tokens=max_tokens, temperature=0.0, seed=seed)
        result = run_bench(
            live,
            texts,
            sampling,
            batch_sizes=sizes,
            pipeline=pipeline_config() if pipeline else None,
            on_row=lambda row: console.print(
                f"  {row.label}: {row.wall_seconds:.2f} s, {row.requests_per_second:.2f} req/s"
            ),
            settings={
                "model": model,
                "engine": engine.value,
                "input": input_path,
                "prompt_tokens": None if input_path else lengths,
                "enable_prefix_caching": enable_prefix_caching,
                "cpus": os.cpu_count(),
            },
        )
    except (ValueError, RuntimeError) as exc:
        if debug:
            console.print_exception()
        print_error(str(exc))
        raise typer.Exit(1) from None
    finally:
        live.close()
    # The table is the command's result, so it goes to stdout (redirect it to a file).
    render_bench(result, Console(width=max(120, Console().width)))
    if json_path:
        write_bench_json(result, json_path)
    if plot:
        plot_bench(result, plot)
        console.print(f"plot written to {plot}")
