"""Run configuration: what the CLI parses, and what `job.run` takes.

Frozen dataclasses, so a config is built once (by the CLI or by a program) and can
be passed around and logged without anyone changing it half-way through a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from batching.chat_framing import ChatFraming
from batching.errors import OutputError, UsageError
from batching.grouping import Order
from batching.inputs import InputFile, expand_inputs
from batching.location import STDIO, InputFormat, Location, OutputFormat
from batching.lora import LoraAdapters
from batching.media import MediaPolicy
from batching.output_format import FIXED_COLUMNS, OPTIONAL_COLUMNS, output_format
from batching.records import Sampling
from batching.sampling_rules import check_default_sampling
from batching.tasks import POOLING_TASKS, Pooling, Task, check_task
from batching.template import PromptTemplate

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "OPENAI_LINES_FRAMED",
    "STDIO",
    "CacheConfig",
    "EngineConfig",
    "InputConfig",
    "InputFormat",
    "Location",
    "Order",
    "OutputConfig",
    "OutputFormat",
    "RunConfig",
    "Task",
]

OnInvalid = Literal["record", "abort"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

# An OpenAI batch line names its endpoint (chat or completion) and its answer must
# be that endpoint's body, so it is sent as it says, as vLLM's run-batch does.
OPENAI_LINES_FRAMED = (
    "--chat and --system apply to plain rows, and OpenAI batch lines name their own "
    "endpoint; drop them, or put the system message in each line's body.messages"
)


@dataclass(frozen=True, slots=True)
class InputConfig:
    """Where rows come from and which fields hold what.

    `path` is the input: a file, "-" for stdin, a directory or a glob (see
    `batching.inputs`); `more_paths` any further ones, read after it. `files` is
    what they name, and `location` is `path` resolved, both worked out once, when
    the config is built. Rows are numbered across the files, in order.

    >>> cfg = InputConfig(path="prompts.jsonl", keep_fields=("topic",))
    >>> cfg.prompt_field, cfg.chunk_size, len(cfg.files)
    ('prompt', 1024, 1)
    """

    path: str
    format: InputFormat | None = None  # None: from the extension; stdin is JSONL
    prompt_field: str = "prompt"
    messages_field: str = "messages"
    id_field: str = "id"
    keep_fields: tuple[str, ...] = ()
    chunk_size: int = 1024
    # Given, a row's prompt is this template rendered with its fields, whatever
    # prompt or messages the row holds itself.
    template: PromptTemplate | None = None
    # `chat`: each prompt goes as a chat's user message, through the chat template;
    # `system` (implies `chat`) is every chat's first message (batching.chat_framing).
    chat: bool = False
    system: str | None = None
    more_paths: tuple[str, ...] = ()
    # The LoRA adapters a row may name (`--lora`); a row naming another is invalid.
    adapter_names: tuple[str, ...] = ()
    # Where chat rows' images may come from besides data URLs.
    media: MediaPolicy = field(default_factory=MediaPolicy)
    # What each row asks for (see `batching.tasks`): it decides which fields a row
    # is read from. `normalize` and `dimensions` (a row may give its own) are the
    # embedding settings; None keeps the model's defaults.
    task: Task = "generate"
    normalize: bool | None = None
    dimensions: int | None = None
    location: Location = field(init=False, repr=False, compare=False)
    files: tuple[InputFile, ...] = field(init=False, repr=False, compare=False)
    # `chat` and `system` as one value: None leaves prompts as they are.
    framing: ChatFraming | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.task != "embed" and (self.normalize is not None or self.dimensions is not None):
            option = "--dimensions" if self.dimensions is not None else "--normalize"
            raise UsageError(f"{option} is an embedding setting; it needs --task embed")
        if self.dimensions is not None and self.dimensions < 1:
            raise UsageError(f"--dimensions must be at least 1, got {self.dimensions}")
        if self.task in POOLING_TASKS and (self.chat or self.system is not None):
            option = "--chat" if self.system is None else "--system"
            raise UsageError(
                f"{option} frames prompts as chats for generation; --task {self.task} "
                "reads each row's text as it is; drop it"
            )
        if self.task == "score" and self.template is not None:
            raise UsageError(
                "--template makes one text, and a score row is a pair (text_1 and text_2, "
                "or query and documents); drop --template for --task score"
            )
        if self.chunk_size < 1:
            raise UsageError(f"chunk size must be at least 1, got {self.chunk_size}")
        for name in self.keep_fields:
            if name in FIXED_COLUMNS or name in OPTIONAL_COLUMNS:
                raise UsageError(
                    f"--keep-fields {name}: every output row has its own {name!r} column; "
                    "copy the input field under another name first"
                )
        if self.template is not None and self.format == "openai":
            raise UsageError(
                "--template reads plain rows, and an OpenAI batch file's lines hold their "
                "own requests; pass --input-format jsonl to fill the template from its lines"
            )
        framing = None
        if self.chat or self.system is not None:
            if self.format == "openai":
                raise UsageError(OPENAI_LINES_FRAMED)
            framing = ChatFraming(self.system)
        object.__setattr__(self, "framing", framing)
        object.__setattr__(self, "location", Location.of(self.path))
        object.__setattr__(self, "files", expand_inputs((self.path, *self.more_paths)))

    @property
    def several(self) -> bool:
        """Whether the input is more than one file (or may be: a directory, a glob)."""
        return len(self.files) > 1 or self.files[0].location != self.location

    def for_file(self, file: InputFile) -> InputConfig:
        """This config for one of its files alone (what a file's reader is given).

        >>> InputConfig("a.jsonl", more_paths=("b.jsonl",)).for_file(InputFile.of("b.jsonl")).path
        'b.jsonl'
        """
        if not self.several:
            return self
        return replace(self, path=file.location.name, more_paths=())

    def pooling(self, dimensions: int | None = None) -> Pooling | None:
        """How a row of this input is pooled (None: it generates); `dimensions` is the
        row's own, over the input's.

        >>> InputConfig("p.jsonl", task="embed", normalize=False).pooling(8)
        Pooling(task='embed', normalize=False, dimensions=8)
        """
        if self.task not in POOLING_TASKS:
            return None
        return Pooling(self.task, self.normalize, dimensions or self.dimensions)


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where results go. `path` None or "-" writes JSONL to stdout.

    `location` is `path` resolved when the config is built; `written_format` the
    format it gets (asked when the run starts, so that a directory given as the
    output is named as one rather than as a name without an extension).
    `is_directory`, decided when the config is built too, says `path` names an
    output directory (`-o DIR/`: a trailing slash, or a local directory that
    exists), where each input file gets its own output (`batching.output_dir`).

    >>> OutputConfig("out/").is_directory, OutputConfig("out.jsonl").is_directory
    (True, False)
    """

    path: str | None = None
    format: OutputFormat | None = None  # None: from the extension
    overwrite: bool = False  # an existing file is never replaced unless asked
    resume: bool = False  # continue an existing output after its last complete row
    model: str = ""  # the model name OpenAI-format output lines carry
    location: Location = field(init=False, repr=False, compare=False)
    is_directory: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        location = Location.of(self.path)
        if self.overwrite and self.resume:
            name = "stdout" if location.is_stdio else location.path
            raise OutputError(f"{name}: pass --resume or --overwrite, not both")
        if self.resume and location.is_stdio:
            raise UsageError("--resume needs an output file (-o); stdout cannot be continued")
        object.__setattr__(self, "location", location)
        directory = not location.is_stdio and (
            location.path.endswith(("/", os.sep))
            or (location.is_local and os.path.isdir(location.path))
        )
        object.__setattr__(self, "is_directory", directory)

    @property
    def written_format(self) -> OutputFormat:
        """`format`, else what the name says; `OutputError` where it says nothing."""
        return output_format(self.location, self.format)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Arguments for `vllm.LLM`. `None` leaves vLLM's own default in place."""

    model: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    seed: int | None = None
    trust_remote_code: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    loras: LoraAdapters = field(default_factory=LoraAdapters)
    # A pooling task (embed, classify, score) starts vLLM's pooling runner; the
    # run's rows must ask for the same task (`InputConfig.task`).
    task: Task = "generate"

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.LLM(...)`, unset values left out.

        >>> EngineConfig(model="m", extra={"enforce_eager": True}).llm_kwargs()["enforce_eager"]
        True
        >>> EngineConfig(model="m", task="embed").llm_kwargs()["runner"]
        'pooling'
        """
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
        }
        optional = {
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_prefix_caching": self.enable_prefix_caching,
            "seed": self.seed,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(self.loras.llm_kwargs())
        if self.task in POOLING_TASKS:
            # No `convert`: vLLM picks it from the architecture (embed for a causal
            # LM, the model's own head for a classifier); check_model_task refuses
            # what cannot do the task.
            kwargs["runner"] = "pooling"
        kwargs.update(self.extra)
        return kwargs


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The result cache a run reads and fills (`--cache`): its file, and what the
    engine is, since every key holds the model and the settings that change outputs.

    `engine_kind` tells engines apart that share a model name (vllm, openai, fake,
    sim); `sampled` caches sampled requests too, not only deterministic ones.

    >>> CacheConfig("results.sqlite", EngineConfig(model="fake"), "fake").sampled
    False
    """

    path: str
    engine: EngineConfig
    engine_kind: str = "vllm"
    sampled: bool = False

    def __post_init__(self) -> None:
        if not self.path or self.path == "-":
            raise UsageError("--cache needs a file path (a SQLite file it makes if missing)")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs besides the engine itself."""

    input: InputConfig
    output: OutputConfig = field(default_factory=OutputConfig)
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=256))
    order: Order = "auto"
    max_retries: int = 3
    max_engine_restarts: int = 3
    report_path: str | None = None
    # Failed rows also go here (as OpenAI's batch API does); they stay in the output.
    errors_path: str | None = None
    # "record": a bad input row becomes an error record and the run goes on;
    # "abort": any bad row stops the run before the engine starts.
    on_invalid: OnInvalid = "record"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # How many requests the engine holds at once; None: ceil(1.1 x the engine's
    # max_num_seqs). A slot freed in a step is refilled only after `step()` returns,
    # so the engine needs ~10% waiting beside a full batch (Ray Data LLM keeps the
    # same margin); a fixed 512 left half of a 1,024-sequence GPU batch empty.
    max_in_flight: int | None = None
    # Finished rows waiting for an earlier, slower one: reading pauses while they
    # hold more than this (an estimate, `ordering.result_bytes`). Bytes, not rows: one
    # long answer early in a file must not stop reading after a few thousand short
    # ones finish beside it, which drained the engine down to that one row.
    reorder_buffer_bytes: int = 256 * 1024 * 1024
    # Live input (a pipe that delivers rows slowly): a partial chunk goes to the
    # engine once its first row has waited this long, instead of at end of input.
    max_wait_ms: float = 50.0
    # Identical deterministic requests run once, each row still getting its own
    # output row (`batching.dedup`); `--no-dedup` turns it off.
    dedup: bool = True
    # Finished results kept across runs (`batching.result_cache`); None: no cache.
    cache: CacheConfig | None = None
    errors_location: Location | None = field(init=False, repr=False, compare=False)
    report_location: Location | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_default_sampling(self.sampling)
        _check_generation_options(self.task, self.sampling)
        if self.max_line_bytes < 1:
            raise UsageError(f"max_line_bytes must be at least 1, got {self.max_line_bytes}")
        if self.max_wait_ms < 0:
            raise UsageError(f"max wait must not be negative, got {self.max_wait_ms} ms")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise UsageError(f"max in flight must be at least 1, got {self.max_in_flight}")
        if self.reorder_buffer_bytes < 1:
            raise UsageError(
                f"the reorder buffer must hold at least 1 byte, got {self.reorder_buffer_bytes}"
            )
        errors = None if self.errors_path is None else Location.of(self.errors_path)
        report = None if self.report_path is None else Location.of(self.report_path)
        if self.output.location.is_stdio:
            # Both on stdout, each failed row (or the report) would be mixed into the results.
            if errors is not None and errors.is_stdio:
                raise UsageError(
                    "--errors - writes to stdout, where the results go; give --errors a file"
                )
            if report is not None and report.is_stdio:
                raise UsageError(
                    "--report - writes to stdout, where the results go; give --report a file"
                )
        object.__setattr__(self, "errors_location", errors)
        object.__setattr__(self, "report_location", report)

    @property
    def task(self) -> Task:
        """What the run does with each row (`InputConfig.task`)."""
        return self.input.task

    @property
    def errors_format(self) -> OutputFormat | None:
        """The format the errors file is asked for: OpenAI lines beside OpenAI output
        (as OpenAI's batch API writes), else None (from its own extension)."""
        if self.output.is_directory:
            return "openai" if self.output.format == "openai" else None
        return "openai" if self.output.written_format == "openai" else None


# The sampling a run has when no generation option is given (the CLI's and
# RunConfig's default): a pooling run must not carry any other.
_DEFAULT_SAMPLING = Sampling(max_tokens=256)
# `seed` is left out: the CLI's --seed also seeds the engine.
_GENERATION_OPTIONS: tuple[str, ...] = ("max_tokens", "temperature", "top_p", "top_k", "stop")
_GENERATION_OPTIONS += ("n", "logprobs", "json_schema")


def _check_generation_options(task: Task, sampling: Sampling) -> None:
    """Refuse generation settings in a run that generates nothing.

    A usage error, as OpenAI's embeddings endpoint refuses unknown parameters: a
    `--temperature` given with `--task embed` is a mistake worth saying, not a
    setting to drop silently. A row's own sampling fields are not read at all in a
    pooling run (as vLLM's server ignores fields a request type does not read).
    """
    if task not in POOLING_TASKS:
        return
    given = [
        name
        for name in _GENERATION_OPTIONS
        if getattr(sampling, name) != getattr(_DEFAULT_SAMPLING, name)
    ]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise UsageError(
            f"{option} is a generation option, and --task {task} generates no text; remove it"
        )
