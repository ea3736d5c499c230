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
  `top_p`, `top_k`, `seed`, `stop`; null means "not set";
- every keep field appears in `kept`, with None where the row lacks it, so every
  output row has the same columns (a Parquet writer needs that, and so does anyone
  loading the JSONL into a data frame).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from batching.config import InputConfig
from batching.records import (
    ERROR_INVALID_INPUT,
    SAMPLING_FIELDS,
    InvalidRow,
    Request,
    RowError,
    Sampling,
)

__all__ = ["describe", "invalid_row", "missing_kept", "parse_row"]

# A float is accepted where an integer is expected when it is integral and exact:
# JSON Schema counts 16.0 as an integer, and pandas writes an integer column with
# gaps as float64. Past 2**53 a float no longer names one integer (orjson also
# turns integers beyond 64 bits into floats), so those are refused.
_MAX_EXACT_FLOAT_INT = 2**53

# Shared by every row that sets no sampling field or keeps no field (most rows):
# one object instead of one per row. Read-only, so sharing is safe.
_NO_SAMPLING = Sampling()
_NOTHING_KEPT: Mapping[str, Any] = MappingProxyType({})
_SAMPLING_KEYS = frozenset(SAMPLING_FIELDS)

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
        problem = _check_messages(messages, fields.messages_field, where)
    else:
        problem = (
            f"{where}: no {fields.prompt_field!r} or {fields.messages_field!r} field; "
            "set --prompt-field or --messages-field if the text is under another name"
        )
    if problem is None:
        sampling, problem = _parse_sampling(obj, where)
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


def _check_messages(messages: object, name: str, where: str) -> str | None:
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


def _parse_sampling(row: Mapping[str, Any], where: str) -> tuple[Sampling, str | None]:
    if _SAMPLING_KEYS.isdisjoint(row):
        return _NO_SAMPLING, None
    max_tokens = row.get("max_tokens")
    temperature = row.get("temperature")
    top_p = row.get("top_p")
    top_k = row.get("top_k")
    seed = row.get("seed")
    stop = row.get("stop")
    if (
        max_tokens is None
        and temperature is None
        and top_p is None
        and top_k is None
        and seed is None
        and stop is None
    ):
        return _NO_SAMPLING, None

    if max_tokens is not None:
        max_tokens = _as_int(max_tokens)
        if max_tokens is None or max_tokens < 1:
            return _NO_SAMPLING, _message(where, "max_tokens", "an integer >= 1", row["max_tokens"])
    if temperature is not None:
        temperature = _as_float(temperature)
        if temperature is None or temperature < 0:
            return _NO_SAMPLING, _message(
                where, "temperature", "a finite number >= 0", row["temperature"]
            )
    if top_p is not None:
        top_p = _as_float(top_p)
        if top_p is None or not 0 < top_p <= 1:
            return _NO_SAMPLING, _message(where, "top_p", "a number in (0, 1]", row["top_p"])
    if top_k is not None:
        top_k = _as_int(top_k)
        if top_k is None or top_k < -1:
            return _NO_SAMPLING, _message(
                where, "top_k", "an integer >= 1, or -1 or 0 for no limit", row["top_k"]
            )
    if seed is not None:
        seed = _as_int(seed)
        if seed is None:
            return _NO_SAMPLING, _message(where, "seed", "an integer", row["seed"])
    stops: tuple[str, ...] | None = None
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            return _NO_SAMPLING, _message(
                where, "stop", "a non-empty string or a list of them", row["stop"]
            )
        stops = tuple(stop)
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stops,
    )
    return sampling, None


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
