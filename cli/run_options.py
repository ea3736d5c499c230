"""The options only `run` has, each declared with its help and its panel.

`run`'s signature then reads as a list of names and defaults; the options it shares
with other commands are in `cli.options`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from batching.engine_choice import EngineChoice
from cli.options import BATCHING, ENGINE, INPUT, OUTPUT, RAY, RELIABILITY, REMOTE, SAMPLING

__all__ = [
    "ApiKeyEnv",
    "BaseUrl",
    "ChunkSize",
    "Concurrency",
    "Debug",
    "EnablePrefixCaching",
    "EngineOption",
    "ErrorsPath",
    "GpuMemoryUtilization",
    "InputArgument",
    "JsonSchema",
    "KeepFields",
    "Logprobs",
    "MaxEngineRestarts",
    "MaxInFlight",
    "MaxNumBatchedTokens",
    "MaxRetries",
    "MaxTokens",
    "MaxWaitMs",
    "OnInvalid",
    "OnInvalidChoice",
    "OrderChoice",
    "OrderOption",
    "OutputFormatChoice",
    "OutputFormatOption",
    "OutputPath",
    "Overwrite",
    "Quiet",
    "RayAddress",
    "ReorderBufferMb",
    "Replicas",
    "ReportPath",
    "RequestTimeout",
    "Resume",
    "RunModel",
    "Samples",
    "Seed",
    "Stop",
    "Temperature",
    "TensorParallelSize",
    "TopK",
    "TopP",
    "TrustRemoteCode",
]


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


# Input
InputArgument = Annotated[
    str,
    typer.Argument(
        metavar="INPUT", help="JSONL, JSONL.gz or Parquet file or URI (s3://...); - for stdin."
    ),
]
KeepFields = Annotated[
    str,
    typer.Option(
        help="Comma-separated input fields copied to each output row.", rich_help_panel=INPUT
    ),
]

# Sampling values are checked by RunConfig, as a row's are (no min= here).
MaxTokens = Annotated[
    int, typer.Option(help="New tokens per row at most.", rich_help_panel=SAMPLING)
]
Temperature = Annotated[
    float | None,
    typer.Option(help="Default: the model's generation config.", rich_help_panel=SAMPLING),
]
TopP = Annotated[
    float | None,
    typer.Option(
        help="Sample from the smallest set of tokens this likely together.",
        rich_help_panel=SAMPLING,
    ),
]
TopK = Annotated[
    int | None,
    typer.Option(
        help="Sample from this many most likely tokens; -1 or 0 for no limit.",
        rich_help_panel=SAMPLING,
    ),
]
Stop = Annotated[
    list[str] | None,
    typer.Option(help="Stop string; repeat for several.", rich_help_panel=SAMPLING),
]
Seed = Annotated[
    int | None,
    typer.Option(
        help="Engine seed, and each row's sampling seed unless the row sets one, so "
        "sampled outputs do not depend on batching.",
        rich_help_panel=SAMPLING,
    ),
]
Samples = Annotated[
    int | None,
    typer.Option(
        "--n",
        help="Samples per prompt; with more than one, output is a list of them all.",
        rich_help_panel=SAMPLING,
    ),
]
Logprobs = Annotated[
    int | None,
    typer.Option(
        help="Log-probabilities of the N most likely tokens at each output position.",
        rich_help_panel=SAMPLING,
    ),
]
JsonSchema = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        help="JSON Schema file every output must match (guided decoding); a row's "
        "json_schema or response_format wins.",
        rich_help_panel=SAMPLING,
    ),
]

# Engine
RunModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="BIZRA_BATCH_MODEL",
        help="Model name or local path (not needed with --engine fake or sim).",
        rich_help_panel=ENGINE,
    ),
]
EngineOption = Annotated[
    EngineChoice,
    typer.Option(
        help="vllm: load the model here; openai: send rows to a running "
        "OpenAI-compatible server (--base-url); fake: a model-free engine that echoes "
        "each prompt reversed, for dry runs of a job's input and output; sim: the fake "
        "engine's output at an accelerator's pace (--engine-arg step_ms=15, "
        "prefill_us_per_token=30; --max-num-seqs), to rehearse a job's timing.",
        rich_help_panel=ENGINE,
    ),
]
TensorParallelSize = Annotated[
    int,
    typer.Option(min=1, help="GPUs each engine spreads the model over.", rich_help_panel=ENGINE),
]
GpuMemoryUtilization = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        max=1.0,
        help="Share of GPU memory vLLM may take. Default: vLLM's.",
        rich_help_panel=ENGINE,
    ),
]
MaxNumBatchedTokens = Annotated[
    int | None,
    typer.Option(min=1, help="Prompt tokens in one engine step.", rich_help_panel=ENGINE),
]
EnablePrefixCaching = Annotated[
    bool | None,
    typer.Option(
        "--enable-prefix-caching/--no-enable-prefix-caching",
        help="Default: vLLM's.",
        rich_help_panel=ENGINE,
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        help="Run the model repository's own code. Off unless asked.", rich_help_panel=ENGINE
    ),
]

# Remote engine
BaseUrl = Annotated[
    str | None,
    typer.Option(
        help="Server URL for --engine openai, e.g. http://127.0.0.1:8000/v1; --model "
        "is then the served model name.",
        rich_help_panel=REMOTE,
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        metavar="VAR",
        help="Name of the env var holding the server's API key (never the key itself).",
        rich_help_panel=REMOTE,
    ),
]
Concurrency = Annotated[
    int,
    typer.Option(min=1, help="Requests sent to the server at once.", rich_help_panel=REMOTE),
]
RequestTimeout = Annotated[
    float,
    typer.Option(
        min=0.1, help="Seconds one request may take before it is retried.", rich_help_panel=REMOTE
    ),
]

# Batching
ChunkSize = Annotated[
    int,
    typer.Option(
        min=1, help="Rows read, tokenized and grouped at a time.", rich_help_panel=BATCHING
    ),
]
OrderOption = Annotated[
    OrderChoice,
    typer.Option(
        help="Submission order within a chunk: auto (prefix when many rows share "
        "their first 64 tokens, else length), input, length (shortest first; alias "
        "ascending), prefix (rows sharing a prefix together), descending.",
        rich_help_panel=BATCHING,
    ),
]
MaxInFlight = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Requests inside the engine at once; default 10% above the engine's "
        "batch (max_num_seqs), so each step's freed slots refill at once.",
        rich_help_panel=BATCHING,
    ),
]
ReorderBufferMb = Annotated[
    float,
    typer.Option(
        min=1,
        help="Finished rows waiting for an earlier, slower one may hold this many MiB; "
        "reading pauses past it.",
        rich_help_panel=BATCHING,
    ),
]
MaxWaitMs = Annotated[
    float,
    typer.Option(
        min=0,
        help="Live input (a pipe delivering rows slowly): a partial chunk goes to the "
        "engine after its first row has waited this long.",
        rich_help_panel=BATCHING,
    ),
]

# Reliability
MaxRetries = Annotated[
    int,
    typer.Option(
        min=0, help="Retries of a failed request before it is an error record.",
        rich_help_panel=RELIABILITY,
    ),
]  # fmt: skip
MaxEngineRestarts = Annotated[
    int,
    typer.Option(
        min=0, help="Engine restarts after a crash before the run stops.",
        rich_help_panel=RELIABILITY,
    ),
]  # fmt: skip
Resume = Annotated[
    bool,
    typer.Option(
        help="Continue an interrupted run: keep the rows the output already holds "
        "(checked against the input) and run the rest.",
        rich_help_panel=RELIABILITY,
    ),
]
Overwrite = Annotated[
    bool, typer.Option(help="Replace an existing output file.", rich_help_panel=RELIABILITY)
]
ErrorsPath = Annotated[
    str | None,
    typer.Option(
        help="Also write failed rows to this file (they stay in the output too).",
        rich_help_panel=RELIABILITY,
    ),
]
OnInvalid = Annotated[
    OnInvalidChoice,
    typer.Option(
        help="record: a bad input row gets an error record and the run goes on; "
        "abort: any bad row stops the run before the model loads (exit 2).",
        rich_help_panel=RELIABILITY,
    ),
]

# Output
OutputPath = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Results file or URI (.jsonl or .parquet); - or none writes JSONL to stdout.",
        rich_help_panel=OUTPUT,
    ),
]
OutputFormatOption = Annotated[
    OutputFormatChoice | None,
    typer.Option(
        help="jsonl, parquet, or openai (OpenAI batch output lines); default from the "
        "output's extension (stdout: jsonl).",
        rich_help_panel=OUTPUT,
    ),
]
ReportPath = Annotated[
    str | None,
    typer.Option(
        help="Also write the run report as JSON here (- for stdout when the results go to a file).",
        rich_help_panel=OUTPUT,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress and no summary on stderr.", rich_help_panel=OUTPUT
    ),
]
Debug = Annotated[
    bool, typer.Option(help="Full tracebacks and engine logs.", rich_help_panel=OUTPUT)
]

# Ray
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray: engine replicas in a Ray Data actor pool. Alone, starts Ray "
        "here; auto joins the cluster of `ray start`; or ray://HOST:PORT. Needs "
        "pip install 'bizra-batch[ray]'.",
        rich_help_panel=RAY,
    ),
]
Replicas = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Engines in the pool, each with --tensor-parallel-size GPUs. Default: as "
        "many as the cluster's GPUs allow (1 without GPUs).",
        rich_help_panel=RAY,
    ),
]
