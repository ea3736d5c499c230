"""What a valid sampling setting is, decided once for every way one arrives.

A file's row (`schema.parse_row`), an OpenAI batch line's body, a `BatchQueue.submit()`
call, and the run's defaults (flags, env vars, a config file, a `RunConfig` built in
Python) are all held to these checks, with the same words for what was expected.

>>> parse_sampling({"temperature": float("inf")}, "p:1")[1]
"p:1: field 'temperature': expected a finite number >= 0, found number inf"
>>> setting_problem("n", 0)
'expected an integer >= 1, found integer 0'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from batching.errors import UsageError
from batching.records import NO_SAMPLING, SAMPLING_FIELDS, Sampling

__all__ = [
    "ROW_SAMPLING_FIELDS",
    "check_default_sampling",
    "describe",
    "is_deterministic",
    "message",
    "parse_sampling",
    "setting_problem",
]

# A float is accepted where an integer is expected when it is integral and exact:
# JSON Schema counts 16.0 as an integer, and pandas writes an integer column with
# gaps as float64. Past 2**53 a float no longer names one integer (orjson also
# turns integers beyond 64 bits into floats), so those are refused.
_MAX_EXACT_FLOAT_INT = 2**53

# How much of a string value an error message quotes: enough to recognise it, never
# a whole prompt in a log line.
_QUOTE_CHARS = 30


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
    if isinstance(value, (list, tuple)):  # a tuple: a setting given from Python
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        if not value:
            return "an empty object"
        keys = ", ".join(repr(str(key)) for key in list(value)[:5])
        more = ", ..." if len(value) > 5 else ""
        return f"an object with keys {keys}{more}"
    return f"a value of type {type(value).__name__}"


def message(where: str, field: str, expected: str, found: object) -> str:
    """How a row's bad field is named: place, field, what was expected, what was found.

    >>> message("p:3", "n", "an integer >= 1", 0)
    "p:3: field 'n': expected an integer >= 1, found integer 0"
    """
    return f"{where}: field {field!r}: expected {expected}, found {describe(found)}"


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
            return NO_SAMPLING, message(where, prefix + name, _EXPECTED[name], value)
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
    # A tuple is what `Sampling.stop` holds (a default, or a `submit()` argument).
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(item, str) and item for item in value):
        return None
    return tuple(value)


def _json_object(value: object) -> dict[str, Any] | None:
    """An object, or the object its JSON text holds; None for anything else."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def _check_json_schema(value: object) -> str | None:
    """A JSON Schema (an object, or its JSON text) as compact JSON text."""
    schema = _json_object(value)
    if schema is None:
        return None
    # Key order is kept: the grammar generates properties in the order given.
    return orjson.dumps(schema).decode()


def _check_response_format(value: object) -> str | None:
    """OpenAI's response_format (an object, or its JSON text) as schema text; "" for
    {"type": "text"}."""
    value = _json_object(value)
    if value is None:
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


def setting_problem(name: str, value: object) -> str | None:
    """None if `value` is a valid setting of the sampling field `name`, else what
    was expected and what was found.

    >>> setting_problem("top_p", 0.5) is None
    True
    """
    if value is None or name not in _SAMPLING_CHECKS:
        return None
    if _SAMPLING_CHECKS[name](value) is not None:
        return None
    return f"expected {_EXPECTED[name]}, found {describe(value)}"


def check_default_sampling(sampling: Sampling) -> None:
    """Raise `UsageError` unless every setting of `sampling` is one a row may make.

    The run's defaults (`--temperature`, its env var or config key) are named by
    their option, since no row carries them.

    >>> check_default_sampling(Sampling(temperature=float("inf")))
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --temperature: expected a finite number >= 0, found number inf
    """
    for name in SAMPLING_FIELDS:
        problem = setting_problem(name, getattr(sampling, name))
        if problem is not None:
            raise UsageError(f"--{name.replace('_', '-')}: {problem}")


def is_deterministic(sampling: Sampling) -> bool:
    """Whether a request with these (effective) settings always gets the same answer:
    greedy (temperature 0) or seeded, and one sample. Deduplication and the result
    cache rely on this one rule.

    An unset temperature is the engine's default (vLLM's is 1.0, or the model's
    generation_config), so it counts as sampled unless a seed fixes it.

    >>> is_deterministic(Sampling(temperature=0.0))
    True
    >>> is_deterministic(Sampling(temperature=0.8, seed=7)), is_deterministic(Sampling())
    (True, False)
    >>> is_deterministic(Sampling(temperature=0.0, n=2))
    False
    """
    if (sampling.n or 1) != 1:
        return False
    return sampling.temperature == 0.0 or sampling.seed is not None
