"""What every output has in common, whichever writer wrote it and whoever reads it back.

Which format a path gets, the columns every row starts with, the JSON text kept
values are written as, and the errors for an existing output that cannot be read.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson

from batching.errors import OutputError
from batching.location import CODEC_SUFFIX, Location, OutputFormat

__all__ = [
    "FIXED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "dumps",
    "dumps_line",
    "not_ours",
    "output_format",
    "read_error",
]

# Every row's first columns, in this order; any further ones are kept input fields,
# after the optional columns a run may add (`logprobs`, when asked for).
FIXED_COLUMNS = ("id", "output", "finish_reason", "prompt_tokens", "completion_tokens", "error")
OPTIONAL_COLUMNS = ("logprobs",)


def output_format(
    where: Location | str | None, override: OutputFormat | None = None
) -> OutputFormat:
    """The format to write `where` as: `override`, else what its extension says.

    stdout (None or "-") is JSONL unless `override` says otherwise; OpenAI batch
    lines ("openai", also JSON Lines) are only ever asked for. Messages name the
    path as it is opened (a `file://` URI's local path).

    >>> output_format("results.pq"), output_format("results.jsonl.zst")
    ('parquet', 'jsonl')
    """
    location = Location.of(where)
    if location.compressed is not None and "parquet" in (location.format, override):
        raise OutputError(
            f"{location.path}: Parquet compresses its columns itself and is never "
            f"{location.compressed}-compressed; name the file .parquet, or "
            f".jsonl{CODEC_SUFFIX[location.compressed]} for compressed JSON Lines"
        )
    if override is not None:
        if override != "parquet" and location.format == "parquet":
            # JSON Lines in a .parquet file: no Parquet reader could open it.
            raise OutputError(
                f"{location.path}: --output-format {override} writes JSON Lines, not Parquet; "
                f"name the file .jsonl (or drop --output-format {override})"
            )
        return override
    if location.format is not None:
        return location.format
    raise OutputError(
        f"{location.path}: unknown output format for extension {location.extension}; name "
        "the file .jsonl, .jsonl.gz, .jsonl.zst or .parquet, or pass --output-format jsonl, "
        "parquet or openai"
    )


def _json_default(value: Any) -> Any:
    """JSON for the kept values orjson does not know, which only Parquet input holds."""
    if isinstance(value, Decimal):
        return str(value)  # every digit kept; a float would round
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def dumps(value: Any) -> bytes:
    """`value` as JSON text, kept values orjson does not know included.

    >>> dumps({"price": Decimal("1.10")})
    b'{"price":"1.10"}'
    """
    return orjson.dumps(value, default=_json_default)


def dumps_line(value: Any) -> bytes:
    """`dumps(value)` and a newline, made in one go (the writer's per-row call).

    >>> dumps_line({"id": 7})
    b'{"id":7}\\n'
    """
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)


def not_ours(where: str, why: str) -> OutputError:
    """The error for an existing file at the output path that bizra-batch did not write.

    >>> print(not_ours("out.jsonl:3", "not valid JSON"))
    out.jsonl:3: not valid JSON, so not an output of bizra-batch; use --overwrite
    """
    return OutputError(f"{where}: {why}, so not an output of bizra-batch; use --overwrite")


def read_error(path: str, exc: OSError) -> OutputError:
    """The error for an existing output that cannot be read back.

    >>> print(read_error("out.jsonl", PermissionError(13, "Permission denied")))
    out.jsonl: cannot read the existing output (Permission denied)
    """
    if isinstance(exc, IsADirectoryError):
        return OutputError(f"{path}: is a directory; name a file")
    return OutputError(f"{path}: cannot read the existing output ({exc.strerror or exc})")
