"""Options that several commands share, declared once so they read the same in each."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

__all__ = [
    "FIELDS",
    "IdField",
    "InputFormatChoice",
    "InputFormatOption",
    "MaxLineBytes",
    "MessagesField",
    "PromptField",
]

FIELDS = "Input fields"


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
