"""The options only `run` has, each declared with its help and its panel.

`run`'s signature then reads as a list of names and defaults; the options it shares
with other commands are in `cli.options`. Each panel's options are made by one
`panel_option`, so none is left without a heading or help text.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from batching.engines.choice import EngineChoice
from cli.options import (
    BATCHING,
    ENGINE,
    INPUT,
    OUTPUT,
    RAY,
    RELIABILITY,
    REMOTE,
    SAMPLING,
    panel_option,
)

__all__ = [
    "ApiKeyEnv",
    "BaseUrl",
    "CachePath",
    "CacheSampled",
    "ChunkSize",
    "Concurrency",
    "Debug",
    "Dimensions",
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
    "NoDedup",
    "Normalize",
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


_input = panel_option(INPUT)
_sampling = panel_option(SAMPLING)
_engine = panel_option(ENGINE)
_batching = panel_option(BATCHING)
_reliability = panel_option(RELIABILITY)
_output = panel_option(OUTPUT)
_remote = panel_option(REMOTE)
_ray = panel_option(RAY)

InputArgument = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUT",
        help="JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet file or URI (s3://..., "
        "hf://datasets/...); - for "
        "stdin. Several: files, directories (their .jsonl, .jsonl.gz, .jsonl.zst and "
        ".parquet files in name order, subfolders too) or quoted globs ('data/*.parquet'), "
        "read in order as one input.",
        show_default=False,
    ),
]
KeepFields = Annotated[str, _input("Comma-separated input fields copied to each output row.")]

# Sampling values are checked by RunConfig, as a row's are (no min= here).
MaxTokens = Annotated[int, _sampling("New tokens per row at most.")]
Temperature = Annotated[float | None, _sampling("Default: the model's generation config.")]
TopP = Annotated[
    float | None, _sampling("Sample from the smallest set of tokens this likely together.")
]
TopK = Annotated[
    int | None, _sampling("Sample from this many most likely tokens; -1 or 0 for no limit.")
]
Stop = Annotated[list[str] | None, _sampling("Stop string; repeat for several.")]
Seed = Annotated[
    int | None,
    _sampling(
        "Engine seed, and each row's sampling seed unless the row sets one, so sampled "
        "outputs do not depend on batching."
    ),
]
Samples = Annotated[
    int | None,
    _sampling("Samples per prompt; with more than one, output is a list of them all.", "--n"),
]
Logprobs = Annotated[
    int | None,
    _sampling("Log-probabilities of the N most likely tokens at each output position."),
]
JsonSchema = Annotated[
    str | None,
    _sampling(
        "JSON Schema file every output must match (guided decoding); a row's json_schema "
        "or response_format wins.",
        metavar="FILE",
    ),
]

Normalize = Annotated[
    bool | None,
    _sampling(
        "--task embed: scale each embedding to unit length. Default: the model's "
        "(vLLM normalizes).",
        "--normalize/--no-normalize",
    ),
]
Dimensions = Annotated[
    int | None,
    _sampling(
        "--task embed: cut embeddings to this many dimensions (Matryoshka models only; "
        "a row's dimensions wins)."
    ),
]

RunModel = Annotated[
    str | None,
    _engine(
        "Model name or local path (not needed with --engine fake or sim).",
        "--model",
        "-m",
        envvar="BIZRA_BATCH_MODEL",
    ),
]
EngineOption = Annotated[
    EngineChoice,
    _engine(
        "vllm: load the model here; openai: send rows to a running OpenAI-compatible "
        "server (--base-url); fake: a model-free engine that echoes each prompt "
        "reversed, for dry runs of a job's input and output; sim: the fake engine's "
        "output at an accelerator's pace (--engine-arg step_ms=15, "
        "prefill_us_per_token=30; --max-num-seqs), to rehearse a job's timing."
    ),
]
TensorParallelSize = Annotated[int, _engine("GPUs each engine spreads the model over.", min=1)]
GpuMemoryUtilization = Annotated[
    float | None,
    _engine("Share of GPU memory vLLM may take. Default: vLLM's.", min=0.01, max=1.0),
]
MaxNumBatchedTokens = Annotated[int | None, _engine("Prompt tokens in one engine step.", min=1)]
EnablePrefixCaching = Annotated[
    bool | None,
    _engine("Default: vLLM's.", "--enable-prefix-caching/--no-enable-prefix-caching"),
]
TrustRemoteCode = Annotated[bool, _engine("Run the model repository's own code. Off unless asked.")]

BaseUrl = Annotated[
    str | None,
    _remote(
        "Server URL for --engine openai, e.g. http://127.0.0.1:8000/v1; --model is then "
        "the served model name."
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    _remote(
        "Name of the env var holding the server's API key (never the key itself).",
        metavar="VAR",
    ),
]
Concurrency = Annotated[int, _remote("Requests sent to the server at once.", min=1)]
RequestTimeout = Annotated[
    float, _remote("Seconds one request may take before it is retried.", min=0.1)
]

ChunkSize = Annotated[int, _batching("Rows read, tokenized and grouped at a time.", min=1)]
OrderOption = Annotated[
    OrderChoice,
    _batching(
        "Submission order within a chunk: auto (prefix when many rows share their first "
        "64 tokens, else length), input, length (shortest first; alias ascending), "
        "prefix (rows sharing a prefix together), descending."
    ),
]
MaxInFlight = Annotated[
    int | None,
    _batching(
        "Requests inside the engine at once; default 10% above the engine's batch "
        "(max_num_seqs), so each step's freed slots refill at once.",
        min=1,
    ),
]
ReorderBufferMb = Annotated[
    float,
    _batching(
        "Finished rows waiting for an earlier, slower one may hold this many MiB; "
        "reading pauses past it.",
        min=1,
    ),
]
MaxWaitMs = Annotated[
    float,
    _batching(
        "Live input (a pipe delivering rows slowly): a partial chunk goes to the engine "
        "after its first row has waited this long.",
        min=0,
    ),
]

MaxRetries = Annotated[
    int, _reliability("Retries of a failed request before it is an error record.", min=0)
]
MaxEngineRestarts = Annotated[
    int, _reliability("Engine restarts after a crash before the run stops.", min=0)
]
Resume = Annotated[
    bool,
    _reliability(
        "Continue an interrupted run: keep the rows the output already holds (checked "
        "against the input) and run the rest."
    ),
]
Overwrite = Annotated[bool, _reliability("Replace an existing output file.")]
ErrorsPath = Annotated[
    str | None,
    _reliability("Also write failed rows to this file (they stay in the output too)."),
]
OnInvalid = Annotated[
    OnInvalidChoice,
    _reliability(
        "record: a bad input row gets an error record and the run goes on; abort: any "
        "bad row stops the run before the model loads (exit 2)."
    ),
]

OutputPath = Annotated[
    str | None,
    _output(
        "Results file or URI (.jsonl, .jsonl.gz, .jsonl.zst or .parquet); - or none writes "
        "JSONL to stdout.",
        "--output",
        "-o",
    ),
]
OutputFormatOption = Annotated[
    OutputFormatChoice | None,
    _output(
        "jsonl, parquet, or openai (OpenAI batch output lines); default from the "
        "output's extension (stdout: jsonl)."
    ),
]
ReportPath = Annotated[
    str | None,
    _output("Also write the run report as JSON here (- for stdout when the results go to a file)."),
]
Quiet = Annotated[bool, _output("No progress and no summary on stderr.", "--quiet", "-q")]
Debug = Annotated[bool, _output("Full tracebacks and engine logs.")]

RayAddress = Annotated[
    str | None,
    _ray(
        "Run on Ray: engine replicas in a Ray Data actor pool. Alone, starts Ray here; "
        "auto joins the cluster of `ray start`; or ray://HOST:PORT. Needs pip install "
        "'bizra-batch[ray]'.",
        "--ray",
        metavar="[ADDRESS]",
    ),
]
Replicas = Annotated[
    int | None,
    _ray(
        "Engines in the pool, each with --tensor-parallel-size GPUs. Default: as many as "
        "the cluster's GPUs allow (1 without GPUs).",
        min=1,
    ),
]

# Never the same work twice (`batching.reuse`).
NoDedup = Annotated[
    bool,
    _batching(
        "Run every row, even one whose request (prompt and sampling, deterministic) an "
        "earlier row of the run already makes; by default such repeats run once."
    ),
]
CachePath = Annotated[
    str | None,
    _batching(
        "Keep finished results in this SQLite file (made if missing) and answer the rows "
        "it holds without the engine; runs may share it.",
        metavar="PATH",
    ),
]
CacheSampled = Annotated[
    bool,
    _batching(
        "With --cache, also cache and reuse sampled requests (temperature > 0 and no "
        "seed, or n > 1); by default only deterministic ones."
    ),
]
