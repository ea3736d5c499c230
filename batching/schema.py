"""Turn one decoded input row into a `Request` or an `InvalidRow`.

Pure functions, no I/O: the readers decode bytes into Python objects, this module
decides whether an object is a usable request. A row that breaks a rule becomes an
`InvalidRow` whose message names the place (file:line), the field, what was
expected and what was found, so one bad row costs one error record, not the run.

Rules, per row (an object):

- with a template (`InputConfig.template`), the prompt is the template rendered with
  the row's fields and the row's own prompt and messages fields are not read;
  without one, exactly one of the prompt field (a non-empty string) and the messages field (a
  non-empty list of `{"role": str, "content": str | [part, ...]}`, each part
  `{"type": "text", "text": str}` or `{"type": "image_url", "image_url": {"url": str}}`,
  whose images are decoded here (`batching.media`));
- the id field, if present and not null, is a string, integer, finite number or
  boolean; absent or null, the id is the row's 0-based index;
- an optional `adapter`: the name of one of the run's LoRA adapters (`--lora`);
- optional sampling overrides at the top level: `max_tokens`, `temperature`,
  `top_p`, `top_k`, `seed`, `stop`, `n`, `logprobs`, and structured output as
  `json_schema` (a JSON Schema) or OpenAI's `response_format`; null means "not set";
- in a pooling run (`InputConfig.task` embed, classify or score) the row's text
  comes from `batching.tasks.row_texts` and its sampling fields are not read; an
  embed row may set `dimensions`;
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
from batching.lora import ADAPTER_FIELD, adapter_problem
from batching.media import check_image_part, decode_images
from batching.records import ERROR_INVALID_INPUT, InvalidRow, Request, RowError
from batching.sampling_rules import ROW_SAMPLING_FIELDS, describe, parse_sampling
from batching.sampling_rules import message as _message
from batching.tasks import request_texts, row_texts

__all__ = [
    "ROW_SAMPLING_FIELDS",
    "check_messages",
    "describe",
    "invalid_row",
    "missing_kept",
    "parse_row",
    "parse_sampling",
]

# Shared by every row that keeps no field (most rows), as NO_SAMPLING is by every
# row that sets no sampling field: one object instead of one per row. Read-only.
_NOTHING_KEPT: Mapping[str, Any] = MappingProxyType({})


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

    if fields.task != "generate":
        return _pooling_row(obj, index, line, fields, where, row_id, kept)
    problem: str | None = None
    messages: Any = None
    if fields.template is not None:
        prompt, problem = fields.template.render(obj, where)
    else:
        prompt = obj.get(fields.prompt_field)
        messages = obj.get(fields.messages_field)
        if prompt is not None and messages is not None:
            problem = (
                f"{where}: fields {fields.prompt_field!r} and {fields.messages_field!r} are "
                "both set; give one of them"
            )
        elif prompt is not None:
            if not isinstance(prompt, str) or not prompt:
                problem = _message(where, fields.prompt_field, "a non-empty string", prompt)
        elif messages is not None:
            problem = check_messages(messages, fields.messages_field, where)
            if problem is None:
                messages, problem = decode_images(
                    messages, fields.media, where, fields.messages_field
                )
        else:
            problem = (
                f"{where}: no {fields.prompt_field!r} or {fields.messages_field!r} field; "
                "set --prompt-field or --messages-field if the text is under another name"
            )
    if problem is None:
        sampling, problem = parse_sampling(obj, where)
    adapter = obj.get(ADAPTER_FIELD)
    if problem is None and adapter is not None:
        problem = adapter_problem(adapter, fields.adapter_names, where, ADAPTER_FIELD)
    if problem is not None:
        return invalid_row(index, line, problem, row_id=row_id, kept=kept)
    if fields.framing is not None:
        messages, prompt = fields.framing.frame(prompt, messages), None
    return Request(
        index=index,
        id=row_id,
        line=line,
        prompt=prompt,
        messages=None if messages is None else tuple(messages),
        sampling=sampling,
        kept=kept,
        adapter=adapter,
    )


def _pooling_row(
    obj: Mapping[str, Any],
    index: int,
    line: int,
    fields: InputConfig,
    where: str,
    row_id: Any,
    kept: Mapping[str, Any],
) -> Request | InvalidRow:
    """A row of a pooling task: its text (or pair) and its own `dimensions`, if any.

    Sampling fields are not read: nothing is generated.
    """
    texts: Any
    if fields.template is not None:
        texts, problem = fields.template.render(obj, where)
    else:
        texts, problem = row_texts(obj, fields.task, fields.prompt_field, where)
    dimensions = obj.get("dimensions") if fields.task == "embed" else None
    if (
        problem is None
        and dimensions is not None
        and (type(dimensions) is not int or dimensions < 1)
    ):
        problem = _message(where, "dimensions", "an integer >= 1", dimensions)
    if problem is not None:
        return invalid_row(index, line, problem, row_id=row_id, kept=kept)
    prompt, messages = request_texts(texts)
    return Request(
        index=index,
        id=row_id,
        line=line,
        prompt=prompt,
        messages=messages,
        kept=kept,
        pooling=fields.pooling(dimensions),
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
            return _message(where, f"{at}.content", "a string or a list of parts", content)
        for part_position, part in enumerate(content):
            part_at = f"{at}.content[{part_position}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                bad = check_image_part(part)
                if bad is not None:
                    return _message(where, f"{part_at}.{bad[0]}", bad[1], part.get(bad[0]))
                continue
            if kind != "text":
                expected = 'a {"type": "text", "text": ...} or {"type": "image_url", ...} part'
                return _message(where, part_at, expected, part)
            if not isinstance(part.get("text"), str):
                return _message(where, f"{part_at}.text", "a string", part.get("text"))
    return None
