"""A stream entry as a row, and a result as the fields of a results-stream entry.

Pure functions, no Redis: `stream` reads entries and writes what these make.

An entry carries one request, either as a `data` field holding a JSON row exactly as
a line of an input file, or as the row's fields directly (`XADD prompts * prompt Hi
max_tokens 16`). Redis keeps every field value as a string, so a field given directly
is read as JSON when it parses as JSON (`16` is an integer, `[...]` a list) and as a
string otherwise; the prompt and id fields are always strings. Either way the row goes
through `schema.parse_row`, so templates, sampling fields and kept fields apply as in
a file. A row without an id gets the entry's id, which is unique in the stream, so a
`result:<id>` key never mixes two requests.

>>> from batching.config import InputConfig
>>> entry = Entry("1-0", {"data": '{"prompt": "Hi", "max_tokens": 4}'})
>>> row = entry_row(entry, index=0, fields=InputConfig(path="<redis>"))
>>> row.prompt, row.id, row.sampling.max_tokens
('Hi', '1-0', 4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batching.config import InputConfig
from batching.output_format import dumps
from batching.records import InvalidRow, Result, Row
from batching.schema import invalid_row, missing_kept, parse_row

__all__ = ["DATA_FIELD", "Entry", "entry_place", "entry_row", "id_text", "result_fields"]

DATA_FIELD = "data"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its id, its fields decoded as text, and how many times the
    group has delivered it (1 for a new entry; more once claimed from a dead worker)."""

    entry_id: str
    fields: Mapping[str, str]
    deliveries: int = 1


def entry_place(entry_id: str) -> str:
    """How messages name an entry.

    >>> entry_place("1700000000000-0")
    'entry 1700000000000-0'
    """
    return f"entry {entry_id}"


def entry_row(entry: Entry, *, index: int, fields: InputConfig) -> Row:
    """The entry's request, checked as a file's row is; a malformed entry is an
    `InvalidRow` whose id is the entry's id (its error result says what is wrong).

    >>> cfg = InputConfig(path="<redis>")
    >>> print(entry_row(Entry("2-0", {"data": "{oops"}), index=0, fields=cfg).error.message)
    entry 2-0: field 'data': not valid JSON (unexpected character, expected a string key:
    line 1 column 2 (char 1))
    >>> entry_row(Entry("3-0", {"prompt": "Hi", "n": "2"}), index=1, fields=cfg).sampling.n
    2
    """
    where = entry_place(entry.entry_id)
    line = index + 1
    obj: Any
    if DATA_FIELD in entry.fields:
        try:
            obj = orjson.loads(entry.fields[DATA_FIELD])
        except orjson.JSONDecodeError as exc:
            return invalid_row(
                index,
                line,
                f"{where}: field '{DATA_FIELD}': not valid JSON ({exc})",
                row_id=entry.entry_id,
                kept=missing_kept(fields),
            )
    else:
        obj = _direct_fields(entry.fields, fields)
    if isinstance(obj, dict) and obj.get(fields.id_field) is None:
        obj[fields.id_field] = entry.entry_id
    row = parse_row(obj, index=index, line=line, fields=fields, where=where)
    if isinstance(row, InvalidRow) and not isinstance(obj, dict):
        row = dataclasses.replace(row, id=entry.entry_id)  # not the index parse_row gave it
    return row


def _direct_fields(raw: Mapping[str, str], fields: InputConfig) -> dict[str, Any]:
    text_only = (fields.prompt_field, fields.id_field)
    obj: dict[str, Any] = {}
    for name, value in raw.items():
        if name in text_only:
            obj[name] = value
            continue
        try:
            obj[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj[name] = value
    return obj


def id_text(row_id: Any) -> str:
    """A row id as the text of a stream field and of a `result:<id>` key: a string as
    it is, anything else as its JSON.

    >>> id_text("a-1"), id_text(7), id_text(True)
    ('a-1', '7', 'true')
    """
    return row_id if isinstance(row_id, str) else dumps(row_id).decode()


def result_fields(result: Result, entry_id: str) -> dict[str, str]:
    """A results-stream entry: `id` (the row's), `entry` (the request's entry id, to
    tell a duplicate from a second request with the same id) and `data`, the JSON of
    exactly the row an output file would hold.

    >>> result_fields(Result(index=0, id="a", output="yo", finish_reason="stop"), "5-0")["data"]
    '{"id":"a","output":"yo","finish_reason":"stop","prompt_tokens":null,"completion_tokens":null,"error":null}'
    """
    return {
        "id": id_text(result.id),
        "entry": entry_id,
        DATA_FIELD: dumps(result.to_dict()).decode(),
    }
