"""Turn one decoded input row into a `Request` or an `InvalidRow`.

Pure functions, no I/O: the readers decode bytes into Python objects, this module
decides whether an object is a usable request. A row that breaks a rule becomes an
`InvalidRow` whose message names the place (file:line), the field, what was
expected and what was found, so one bad row costs one error record, not the run.

Rules, per row (an object):

- exactly one of the prompt field (a non-empty string) and the messages field (a
  non-empty list of `{"role": str, "content": str | [{"type": "text", "text": str}]}`);
- the id field, if present and not null, is a string, integer, finite number or
  boolean; absent or null, the id is the row's 0-based index;
- optional sampling overrides at the top level: `max_tokens`, `temperature`,
  `top_p`, `top_k`, `seed`, `stop`, `n`, `logprobs`, and structured output as
  `json_schema` (a JSON Schema) or OpenAI's `response_format`; null means "not set";
- every keep field appears in `kept`, with None where the row lacks it, so every
  output row has the same columns (a Parquet writer needs that, and so does anyone
  loading the JSONL into a data frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from batching.config import InputConfig
from batching.records import (
    ERROR_INVALID_INPUT,
    NO_SAMPLING,
    SAMPLING_FIELDS,
    InvalidRow,
    Request,
    RowError,
    Sampling,
)

__all__ = [
    "ROW_SAMPLING_FIELDS",
    "check_messages",
    "describe",
    "invalid_row",
    "missing_kept",
    "parse_row",
    "parse_sampling",
]

# A float is accepted where an integer is expected when it is integral and exact:
# JSON Schema counts 16.0 as an integer, and pandas writes an integer column with
# gaps as float64. Past 2**53 a float no longer names one integer (orjson also
# turns integers beyond 64 bits into floats), so those are refused.
_MAX_EXACT_FLOAT_INT = 2**53

# Shared by every row that keeps no field (most rows), as NO_SAMPLING is by every
# row that sets no sampling field: one object instead of one per row. Read-only.
_NOTHING_KEPT: Mapping[str, Any] = MappingProxyType({})

# How much of a string value an error message quotes: enough to recognise it, never
# a whole prompt in a log line.
_QUOTE_CHARS = 30


def parse_row(
    obj: object, *, index: int, line: int, fields: InputConfig, where: str
) -> Request | InvalidRow:
    """Validate one decoded row; `where` ("prompts.jsonl:12") starts any message.

    >>> cfg = InputConfig(path="p.jsonl")
    >>> row = parse_row({"prompt": "Hi", "top_p": 2}, index=0, line=1, fields=cfg, where="p:1")
    >>> row.error.message
    "p:1: field 'top_p': expected a number in (0, 1], found integer 2"
    """
    if not isinstance(obj, dict):
        hint = ""
        if isinstance(obj, list):
            hint = "; to turn a JSON array into JSON Lines use `jq -c '.[]'`"
        return invalid_row(
            index,
            line,
            f"{where}: expected a JSON object per line, found {describe(obj)}{hint}",
            kept=missing_kept(fields),
        )
    kept: Mapping[str, Any] = _NOTHING_KEPT
    if fields.keep_fields:
        kept = {name: obj.get(name) for name in fields.keep_fields}

    raw_id = obj.get(fields.id_field)
    row_id: Any = index
    if raw_id is not None:
        # The type() tests first: the usual ids, at a fraction of the general check.
        if type(raw_id) is not str and type(raw_id) is not int and not _is_id(raw_id):
            expected = "a string, integer, finite number or boolean"
            return invalid_row(
                index, line, _message(where, fields.id_field, expected, raw_id), kept=kept
            )
        row_id = raw_id

    prompt = obj.get(fields.prompt_field)
    messages = obj.get(fields.messages_field)
    problem: str | None = None
    if prompt is not None and messages is not None:
        problem = (
            f"{where}: fields {fields.prompt_field!r} and {fields.messages_field!r} are both "
            "set; give one of them"
        )
    elif prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            problem = _message(where, fields.prompt_field, "a non-empty string", prompt)
    elif messages is not None:
        problem = check_messages(messages, fields.messages_field, where)
    else:
        problem = (
            f"{where}: no {fields.prompt_field!r} or {fields.messages_field!r} field; "
            "set --prompt-field or --messages-field if the text is under another name"
        )
    if problem is None:
        sampling, problem = parse_sampling(obj, where)
    if problem is not None:
        return invalid_row(index, line, problem, row_id=row_id, kept=kept)
    return Request(
        index=index,
        id=row_id,
        line=line,
        prompt=prompt,
        messages=None if messages is None else tuple(messages),
        sampling=sampling,
        kept=kept,
    )


def invalid_row(
    index: int,
    line: int,
    message: str,
    *,
    row_id: Any = None,
    kept: Mapping[str, Any] | None = None,
) -> InvalidRow:
    """An `invalid_input` row; its id defaults to `index` like any row without one.

    >>> invalid_row(3, 4, "p.jsonl:4: not valid JSON").id
    3
    """
    return InvalidRow(
        index=index,
        id=index if row_id is None else row_id,
        line=line,
        error=RowError(type=ERROR_INVALID_INPUT, message=message),
        kept={} if kept is None else kept,
    )


def missing_kept(fields: InputConfig) -> dict[str, Any]:
    """The kept fields of a row that could not be read: every one of them None.

    >>> missing_kept(InputConfig(path="p.jsonl", keep_fields=("topic",)))
    {'topic': None}
    """
    return dict.fromkeys(fields.keep_fields)


def describe(value: object) -> str:
    """A short description of a value for an error message, never the whole value.

    >>> describe("a" * 100)
    "a 100-character string starting 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'..."
    >>> describe([1, 2])
    'a list of 2 items'
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        if len(value) <= _QUOTE_CHARS:
            return f"string {value!r}"
        return f"a {len(value)}-character string starting {value[:_QUOTE_CHARS]!r}..."
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        if not value:
            return "an empty object"
        keys = ", ".join(repr(str(key)) for key in list(value)[:5])
        more = ", ..." if len(value) > 5 else ""
        return f"an object with keys {keys}{more}"
    return f"a value of type {type(value).__name__}"


def _message(where: str, field: str, expected: str, found: object) -> str:
    return f"{where}: field {field!r}: expected {expected}, found {describe(found)}"


def _is_id(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int))


def check_messages(messages: object, name: str, where: str) -> str | None:
    """None if `messages` is a valid chat, else a message naming the bad part."""
    if not isinstance(messages, list) or not messages:
        return _message(where, name, "a non-empty list of messages", messages)
    for position, message in enumerate(messages):
        at = f"{name}[{position}]"
        if not isinstance(message, dict):
            return _message(where, at, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            return _message(where, f"{at}.role", "a non-empty string", role)
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return _message(where, f"{at}.content", "a string or a list of text parts", content)
        for part_position, part in enumerate(content):
            part_at = f"{at}.content[{part_position}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                return _message(where, part_at, 'a {"type": "text", "text": ...} part', part)
            if not isinstance(part.get("text"), str):
                return _message(where, f"{part_at}.text", "a string", part.get("text"))
    return None


def parse_sampling(
    row: Mapping[str, Any], where: str, prefix: str = ""
) -> tuple[Sampling, str | None]:
    """The sampling overrides in `row`, or a message naming the first bad field.

    `prefix` goes before field names in messages (the OpenAI reader passes "body.").

    >>> parse_sampling({"n": 0}, "p:1")[1]
    "p:1: field 'n': expected an integer >= 1, found integer 0"
    """
    if _ROW_SAMPLING_KEY_SET.isdisjoint(row):
        return NO_SAMPLING, None
    values: dict[str, Any] = {}
    for name in ROW_SAMPLING_FIELDS:
        value = row.get(name)
        if value is None:
            continue
        checked = _SAMPLING_CHECKS[name](value)
        if checked is None:
            return NO_SAMPLING, _message(where, prefix + name, _EXPECTED[name], value)
        values[name] = checked
    if not values:
        return NO_SAMPLING, None
    response_format = values.pop("response_format", None)
    if response_format is not None:
        if "json_schema" in values:
            return NO_SAMPLING, (
                f"{where}: fields {prefix}json_schema and {prefix}response_format are both "
                "set; give one of them"
            )
        if response_format:  # "" is {"type": "text"}: no constraint
            values["json_schema"] = response_format
    return Sampling(**values), None


def _check_stop(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(item, str) and item for item in value):
        return None
    return tuple(value)


def _check_json_schema(value: object) -> str | None:
    """A JSON Schema (an object, or its JSON text) as compact JSON text."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    # Key order is kept: the grammar generates properties in the order given.
    return orjson.dumps(value).decode()


def _check_response_format(value: object) -> str | None:
    """OpenAI's response_format (an object, or its JSON text) as schema text; "" for
    {"type": "text"}."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "text":
        return ""
    if kind == "json_object":
        return _ANY_JSON_OBJECT
    if kind == "json_schema":
        spec = value.get("json_schema")
        if isinstance(spec, dict):
            return _check_json_schema(spec.get("schema"))
    return None


def _check_positive_int(value: object) -> int | None:
    number = _as_int(value)
    return number if number is not None and number >= 1 else None


def _check_non_negative_int(value: object) -> int | None:
    number = _as_int(value)
    return number if number is not None and number >= 0 else None


def _check_temperature(value: object) -> float | None:
    number = _as_float(value)
    return number if number is not None and number >= 0 else None


def _check_top_p(value: object) -> float | None:
    number = _as_float(value)
    return number if number is not None and 0 < number <= 1 else None


def _check_top_k(value: object) -> int | None:
    number = _as_int(value)
    return number if number is not None and number >= -1 else None


def _as_int(value: object) -> int | None:
    """The integer `value` names, or None; booleans are not integers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_FLOAT_INT:
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    """`value` as a finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# The schema OpenAI's {"type": "json_object"} asks for: any JSON object.
_ANY_JSON_OBJECT = '{"type":"object"}'

_SAMPLING_CHECKS: dict[str, Callable[[object], Any]] = {
    "max_tokens": _check_positive_int,
    "temperature": _check_temperature,
    "top_p": _check_top_p,
    "top_k": _check_top_k,
    "seed": _as_int,
    "stop": _check_stop,
    "n": _check_positive_int,
    "logprobs": _check_non_negative_int,
    "json_schema": _check_json_schema,
    "response_format": _check_response_format,
}
_EXPECTED = {
    "max_tokens": "an integer >= 1",
    "temperature": "a finite number >= 0",
    "top_p": "a number in (0, 1]",
    "top_k": "an integer >= 1, or -1 or 0 for no limit",
    "seed": "an integer",
    "stop": "a non-empty string or a list of them",
    "n": "an integer >= 1",
    "logprobs": "an integer >= 0 (top tokens per position)",
    "json_schema": "a JSON Schema object (or its JSON text)",
    "response_format": 'an object (or its JSON text) with "type" text, json_object, or '
    'json_schema (with "json_schema": {"schema": {...}})',
}
# Checked in this order, so the first bad field in Sampling's order is named.
# The sampling fields a row may set: `Sampling`'s, and OpenAI's response_format.
ROW_SAMPLING_FIELDS = (*SAMPLING_FIELDS, "response_format")
_ROW_SAMPLING_KEY_SET = frozenset(ROW_SAMPLING_FIELDS)
