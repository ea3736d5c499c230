"""bizra-batch: offline batch inference for LLMs on vLLM, streaming, ordered, resumable.

The names a program needs are here; import them from `batching`, not from the
module that defines them today, so modules can move without breaking callers.
Importing the package loads neither vLLM, torch nor Ray: those load when an engine
starts (`create_vllm_engine`) or a run goes to a cluster (`run_on_ray`).

>>> import batching
>>> config = batching.RunConfig(batching.InputConfig(path="-"), batching.OutputConfig())
>>> config.sampling.max_tokens
256
"""

from __future__ import annotations

from batching.adapters import KeptOpen, ListSink, ListSupply
from batching.aio import BatchQueue, QueueClosedError, RequestError
from batching.config import CacheConfig, EngineConfig, InputConfig, OutputConfig, RunConfig
from batching.engine import (
    EncodedPrompt,
    Engine,
    EngineDeadError,
    EngineFactory,
    EngineOutOfMemoryError,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.engines.sim import SimEngine
from batching.engines.vllm import create_vllm_engine
from batching.errors import (
    BatchError,
    CacheCorruptError,
    CacheFileError,
    EngineStartError,
    InputError,
    OutputError,
    OutputWriteError,
    UsageError,
)
from batching.inputs import InputFile
from batching.job import run
from batching.lora import LoraAdapter, LoraAdapters
from batching.media import MediaPolicy
from batching.model_identity import ModelIdentity, model_identity
from batching.openai_pooling import implied_task
from batching.pipeline import EngineFailedError, run_rows
from batching.ray.runner import RayOptions, run_on_ray
from batching.records import Request, Result, RowError, Sample, Sampling, TokenLogprob
from batching.report import Report, ReportCollector
from batching.retry import RetryPolicy
from batching.tasks import Task
from batching.template import PromptTemplate
from batching.testing import FakeEngine, FakeEngineFactory
from batching.validate import ValidationReport, format_report

# `validate_input`: a function named `validate` here would hide the module
# `batching.validate` (`import batching.validate as v` would bind the function).
from batching.validate import validate as validate_input

__all__ = [
    "BatchError",
    "BatchQueue",
    "CacheConfig",
    "CacheCorruptError",
    "CacheFileError",
    "EncodedPrompt",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineFactory",
    "EngineFailedError",
    "EngineOutOfMemoryError",
    "EngineOutput",
    "EngineRequest",
    "EngineStartError",
    "FakeEngine",
    "FakeEngineFactory",
    "InputConfig",
    "InputError",
    "InputFile",
    "KeptOpen",
    "ListSink",
    "ListSupply",
    "LoraAdapter",
    "LoraAdapters",
    "MediaPolicy",
    "ModelIdentity",
    "OutputConfig",
    "OutputError",
    "OutputWriteError",
    "PermanentRequestError",
    "PromptTemplate",
    "QueueClosedError",
    "RayOptions",
    "Report",
    "ReportCollector",
    "Request",
    "RequestError",
    "Result",
    "RetryPolicy",
    "RowError",
    "RunConfig",
    "Sample",
    "Sampling",
    "SimEngine",
    "Task",
    "TokenLogprob",
    "UsageError",
    "ValidationReport",
    "create_vllm_engine",
    "format_report",
    "implied_task",
    "model_identity",
    "run",
    "run_on_ray",
    "run_rows",
    "validate_input",
]
