"""Options that several commands share, declared once so they read the same in each."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import orjson
import typer

from batching.errors import UsageError

__all__ = [
    "ENGINE",
    "FIELDS",
    "DtypeOption",
    "EngineArgOption",
    "IdField",
    "InputFormatChoice",
    "InputFormatOption",
    "MaxLineBytes",
    "MaxModelLenOption",
    "MaxNumSeqsOption",
    "MessagesField",
    "ModelOption",
    "PromptField",
    "parse_engine_args",
]

FIELDS = "Input fields"
ENGINE = "Engine (passed to vllm.LLM)"


class InputFormatChoice(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    openai = "openai"


InputFormatOption = Annotated[
    InputFormatChoice | None,
    typer.Option(
        help="Input format; default from the extension (stdin: jsonl). JSONL whose first "
        "line is an OpenAI batch request (custom_id, url, body) is read as openai.",
        rich_help_panel=FIELDS,
    ),
]
PromptField = Annotated[str, typer.Option(rich_help_panel=FIELDS)]
MessagesField = Annotated[str, typer.Option(rich_help_panel=FIELDS)]
IdField = Annotated[
    str,
    typer.Option(
        help="Row id field; default id is the 0-based row number.", rich_help_panel=FIELDS
    ),
]
MaxLineBytes = Annotated[
    int,
    typer.Option(min=1, help="Longer input lines are invalid rows.", rich_help_panel=FIELDS),
]

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar="BIZRA_BATCH_MODEL",
        help="Model name or local path.",
        rich_help_panel=ENGINE,
    ),
]
DtypeOption = Annotated[str, typer.Option(rich_help_panel=ENGINE)]
MaxModelLenOption = Annotated[int | None, typer.Option(min=1, rich_help_panel=ENGINE)]
MaxNumSeqsOption = Annotated[int | None, typer.Option(min=1, rich_help_panel=ENGINE)]
EngineArgOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Any other vllm.LLM argument as KEY=VALUE; repeatable.", rich_help_panel=ENGINE
    ),
]


def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a VALUE that parses as JSON is taken as JSON (numbers, bools).

    >>> parse_engine_args(["enforce_eager=true", "swap-space=4"])
    {'enforce_eager': True, 'swap_space': 4}
    """
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
