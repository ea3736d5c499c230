"""Options that several commands share, declared once so they read the same in each;
the help panels every command groups its options in; and the builders that turn the
shared options into config objects.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import orjson
import typer

from batching.config import DEFAULT_MAX_LINE_BYTES, InputConfig
from batching.errors import UsageError
from batching.media import MediaPolicy
from batching.openai_pooling import implied_task
from batching.template import PromptTemplate

__all__ = [
    "BATCHING",
    "CONFIGURATION",
    "DEFAULT_MAX_LINE_BYTES",
    "ENGINE",
    "INPUT",
    "OUTPUT",
    "RAY",
    "RELIABILITY",
    "REMOTE",
    "SAMPLING",
    "AllowRemoteMedia",
    "AllowedMediaPath",
    "ChatOption",
    "DtypeOption",
    "EngineArgOption",
    "IdField",
    "InputFormatChoice",
    "InputFormatOption",
    "LoraOption",
    "MaxLineBytes",
    "MaxModelLenOption",
    "MaxNumSeqsOption",
    "MessagesField",
    "ModelOption",
    "PromptField",
    "SystemOption",
    "TaskChoice",
    "TaskOption",
    "TemplateFileOption",
    "TemplateOption",
    "input_config",
    "panel_option",
    "parse_engine_args",
]

# The help panels, in the order of the README's "Flags" table.
INPUT = "Input"
SAMPLING = "Sampling defaults (a row's own field wins)"
ENGINE = "Engine (passed to vllm.LLM)"
BATCHING = "Batching"
RELIABILITY = "Reliability"
OUTPUT = "Output and report"
REMOTE = "Remote engine (--engine openai)"
RAY = "Ray cluster (--ray)"
CONFIGURATION = "Configuration"


def panel_option(panel: str) -> Callable[..., Any]:
    """`typer.Option` for the options of one help panel, each with its help text.

    >>> sampling_option = panel_option(SAMPLING)
    >>> info = sampling_option("Stop string; repeat for several.")
    >>> info.rich_help_panel, info.help
    ("Sampling defaults (a row's own field wins)", 'Stop string; repeat for several.')
    """

    def option(help: str, *names: str, **settings: Any) -> Any:
        return typer.Option(*names, help=help, rich_help_panel=panel, **settings)

    return option


class InputFormatChoice(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    openai = "openai"


_input = panel_option(INPUT)
_engine = panel_option(ENGINE)

InputFormatOption = Annotated[
    InputFormatChoice | None,
    _input(
        "Input format; default from the extension (stdin: jsonl). JSONL whose first line "
        "is an OpenAI batch request (custom_id, url, body) is read as openai."
    ),
]
PromptField = Annotated[str, _input("Field holding a row's prompt text.")]
MessagesField = Annotated[
    str, _input("Field holding a row's chat messages (a list of role/content).")
]
TemplateOption = Annotated[
    str | None,
    _input(
        "Jinja2 template for each row's prompt, filled from the row's fields, e.g. "
        "'Summarize: {{ text }}'. It replaces a row's own prompt or messages; a row "
        "without a field it uses is an invalid row. Sandboxed: no files, no internals."
    ),
]
TemplateFileOption = Annotated[
    str | None, _input("Read --template from this UTF-8 file.", metavar="FILE")
]
ChatOption = Annotated[
    bool,
    _input(
        "Send each prompt (a row's, or the template's text) as a chat's user message, "
        "through the model's chat template, as instruct models need. Rows holding "
        "messages are chats already."
    ),
]
SystemOption = Annotated[
    str | None,
    _input(
        "System message put first in every chat (implies --chat); a row's chat that "
        "starts with its own system message keeps it.",
        metavar="TEXT",
    ),
]


class TaskChoice(str, Enum):
    generate = "generate"
    embed = "embed"
    classify = "classify"
    score = "score"


TaskOption = Annotated[
    TaskChoice | None,
    _input(
        "What each row asks for: generate text; embed (prompt or input -> embedding); "
        "classify (-> probs, label); score (text_1 + text_2, or query + documents -> "
        "score). Default: generate, or what an OpenAI batch file's urls ask for "
        "(/v1/embeddings: embed; /v1/score, /v1/rerank: score)."
    ),
]
IdField = Annotated[str, _input("Row id field; default id is the 0-based row number.")]
MaxLineBytes = Annotated[int, _input("Longer input lines are invalid rows.", min=1)]

ModelOption = Annotated[
    str, _engine("Model name or local path.", "--model", "-m", envvar="BIZRA_BATCH_MODEL")
]
DtypeOption = Annotated[
    str, _engine("Weights' data type: auto (the model's), bfloat16, float16, float32.")
]
MaxModelLenOption = Annotated[
    int | None, _engine("Context length (prompt + output tokens). Default: the model's.", min=1)
]
MaxNumSeqsOption = Annotated[
    int | None, _engine("Sequences in one engine step (the engine's batch).", min=1)
]
LoraOption = Annotated[
    list[str] | None,
    _engine(
        "LoRA adapter as NAME=PATH (a PEFT directory, or a Hugging Face id); repeatable. "
        "A row's 'adapter' field (an OpenAI line's body 'model') names the one it runs "
        "with; rows without one use the base model.",
        "--lora",
        metavar="NAME=PATH",
    ),
]
AllowedMediaPath = Annotated[
    str | None,
    _input(
        "Directory chat rows' file:// images may be read from (nowhere else); data: URLs "
        "need no permission.",
        metavar="DIR",
    ),
]
AllowRemoteMedia = Annotated[
    bool, _input("Fetch chat rows' http(s):// images. Off: a batch machine may not be meant to.")
]
EngineArgOption = Annotated[
    list[str] | None, _engine("Any other vllm.LLM argument as KEY=VALUE; repeatable.")
]


def input_config(
    path: str,
    input_format: InputFormatChoice | None,
    prompt_field: str = "prompt",
    messages_field: str = "messages",
    id_field: str = "id",
    *,
    keep_fields: str = "",
    chunk_size: int = 1024,
    template: str | None = None,
    template_file: str | None = None,
    chat: bool = False,
    system: str | None = None,
    more_paths: tuple[str, ...] = (),
    adapter_names: tuple[str, ...] = (),
    allowed_media_path: str | None = None,
    allow_remote_media: bool = False,
    task: TaskChoice | None = None,
    normalize: bool | None = None,
    dimensions: int | None = None,
) -> InputConfig:
    """The `InputConfig` the input options describe; `keep_fields` comma-separated.

    >>> input_config("in.jsonl", None, keep_fields="topic, lang").keep_fields
    ('topic', 'lang')
    >>> input_config("in.jsonl", None, template="Hi {{ name }}").template.fields
    ('name',)
    >>> input_config("in.jsonl", None, task=TaskChoice.embed).task
    'embed'
    """
    if template is not None and template_file is not None:
        raise UsageError("--template and --template-file: give one of them")
    prompt_template = None
    if template is not None:
        prompt_template = PromptTemplate(template)
    elif template_file is not None:
        prompt_template = PromptTemplate.from_file(template_file)
    return InputConfig(
        path=path,
        format=None if input_format is None else input_format.value,
        prompt_field=prompt_field,
        messages_field=messages_field,
        id_field=id_field,
        keep_fields=tuple(f.strip() for f in keep_fields.split(",") if f.strip()),
        chunk_size=chunk_size,
        template=prompt_template,
        chat=chat,
        system=system,
        more_paths=more_paths,
        adapter_names=adapter_names,
        media=MediaPolicy(allowed_path=allowed_media_path, allow_remote=allow_remote_media),
        task=implied_task(path) if task is None else task.value,
        normalize=normalize,
        dimensions=dimensions,
    )


def parse_engine_args(pairs: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a VALUE that parses as JSON is taken as JSON (numbers, bools).

    >>> parse_engine_args(["enforce_eager=true", "swap-space=4"])
    {'enforce_eager': True, 'swap_space': 4}
    """
    parsed: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--engine-arg {pair!r}: expected KEY=VALUE, e.g. swap_space=4")
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        parsed[key.strip().replace("-", "_")] = value
    return parsed
