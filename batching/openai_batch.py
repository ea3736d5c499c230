"""The OpenAI Batch API line format, in and out.

Input lines look like `{"custom_id": "q-1", "method": "POST", "url":
"/v1/chat/completions", "body": {"messages": [...], "max_tokens": 64}}` (or `url`
"/v1/completions" with a `prompt` in the body). `parse_openai_row` turns one into a
`Request` whose id is the `custom_id`, or an `InvalidRow` naming the bad field, so
one bad line costs one error line. The body's sampling fields map onto `Sampling`:
`max_completion_tokens` (or `max_tokens`), `temperature`, `top_p`, `top_k`, `n`,
`stop`, `seed`, `response_format` and logprobs (chat: `logprobs` + `top_logprobs`;
completions: `logprobs` as a count). A body `model` that names one of the run's
LoRA adapters (`--lora`) runs the line with it, as vLLM's server does; any other
`model` means the base model, and other body fields (`user`, ...) are ignored.

`OpenAIBatchLines` writes a `Result` as an output line in the shape of OpenAI's (and
vLLM's `BatchRequestOutput`): `id`, `custom_id`, `response` (`status_code`,
`request_id`, `body`: a `chat.completion` or `text_completion` with `usage`) and
`error` (`{"code": <error type>, "message": ...}` on failed rows, whose response
has no body).

Repeated `custom_id`s are allowed, as vLLM's own runner allows them, but reported:
`CustomIdRegistry` logs a warning naming both lines. That includes a `custom_id`
equal to the one written for a line without a valid one: its row number ("4").
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from batching.config import InputConfig
from batching.id_registry import DefaultIdRuns
from batching.media import decode_images
from batching.openai_pooling import POOLING_URLS, body_texts, pooling_body, url_task
from batching.output_format import dumps, not_ours
from batching.records import (
    ERROR_ENGINE,
    InvalidRow,
    Request,
    Result,
    Row,
    RowError,
)
from batching.sampling_rules import describe, parse_sampling
from batching.sampling_rules import message as _message
from batching.schema import check_messages, invalid_row
from batching.tasks import request_texts

__all__ = [
    "CHAT_URL",
    "COMPLETIONS_URL",
    "CustomIdRegistry",
    "OpenAIBatchLines",
    "check_line",
    "custom_id",
    "id_token",
    "is_openai_line",
    "parse_openai_row",
    "result_from_line",
    "same_custom_id",
]

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
_URLS = (CHAT_URL, COMPLETIONS_URL, *POOLING_URLS)

# Body fields that would change what is asked for but that this runner cannot do;
# silently dropping them would return answers to a different question.
_UNSUPPORTED_BODY_FIELDS = ("tools", "functions", "echo", "suffix", "best_of", "logit_bias")

# How many duplicate custom_ids are named one by one before only the count is.
_DUPLICATES_NAMED = 10

logger = logging.getLogger("bizra_batch")


def is_openai_line(obj: object) -> bool:
    """Whether a decoded input line is an OpenAI batch request line.

    >>> is_openai_line({"custom_id": "a", "url": "/v1/completions", "body": {}})
    True
    """
    return type(obj) is dict and "custom_id" in obj and "url" in obj and "body" in obj


def parse_openai_row(
    obj: object, *, index: int, line: int, fields: InputConfig, where: str
) -> Request | InvalidRow:
    """Validate one OpenAI batch line; `where` ("batch.jsonl:3") starts any message.

    A pooling url (`batching.openai_pooling`) is read when the run's task is its
    own; a line whose url asks for another task is an invalid row.

    >>> row = parse_openai_row({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
    ...     "body": {"input": "Hi"}}, index=0, line=1, fields=InputConfig("b.jsonl"), where="b:1")
    >>> row.error.message
    "b:1: field 'url': '/v1/embeddings' asks for --task embed, and this run's task is generate"
    """
    if type(obj) is not dict:
        return invalid_row(
            index, line, f"{where}: expected a JSON object per line, found {describe(obj)}"
        )
    kept: Mapping[str, Any] = {name: obj.get(name) for name in fields.keep_fields}
    raw_id = obj.get("custom_id")
    if not isinstance(raw_id, str) or not raw_id:
        message = _message(where, "custom_id", "a non-empty string", raw_id)
        return invalid_row(index, line, message, kept=kept)
    problem = _check_envelope(obj, where)
    if problem is not None:
        return invalid_row(index, line, problem, row_id=raw_id, kept=kept)
    body: dict[str, Any] = obj["body"]
    wanted = url_task(obj["url"])
    if wanted != fields.task:
        problem = (
            f"{where}: field 'url': {obj['url']!r} asks for --task {wanted}, and this run's "
            f"task is {fields.task}"
        )
        return invalid_row(index, line, problem, row_id=raw_id, kept=kept)
    if wanted != "generate":
        texts, dimensions, problem = body_texts(obj["url"], body, where)
        if problem is not None:
            return invalid_row(index, line, problem, row_id=raw_id, kept=kept)
        text, pair = request_texts(texts)
        return Request(
            index=index,
            id=raw_id,
            line=line,
            prompt=text,
            messages=pair,
            kept=kept,
            pooling=fields.pooling(dimensions),
        )
    chat = obj["url"] == CHAT_URL
    prompt: str | None = None
    messages: list[Any] | None = None
    if chat:
        messages = body.get("messages")
        problem = check_messages(messages, "body.messages", where)
        if problem is None and isinstance(messages, list):
            messages, problem = decode_images(messages, fields.media, where, "body.messages")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            problem = _message(where, "body.prompt", "a non-empty string", prompt)
    if problem is None:
        problem = next(
            (
                f"{where}: field 'body.{name}' is not supported by bizra-batch; remove it"
                for name in _UNSUPPORTED_BODY_FIELDS
                if body.get(name) is not None
            ),
            None,
        )
    if problem is None:
        sampling_fields, problem = _sampling_fields(body, chat, where)
    if problem is None:
        sampling, problem = parse_sampling(sampling_fields, where, prefix="body.")
    if problem is not None:
        return invalid_row(index, line, problem, row_id=raw_id, kept=kept)
    return Request(
        index=index,
        id=raw_id,
        line=line,
        prompt=prompt,
        messages=None if messages is None else tuple(messages),
        sampling=sampling,
        kept=kept,
        adapter=_adapter(body.get("model"), fields.adapter_names),
    )


def _adapter(model: object, names: tuple[str, ...]) -> str | None:
    """The adapter a body's `model` names; None (the base model) for any other model,
    since OpenAI batch files carry the model name they were written for.

    >>> _adapter("sql", ("sql",)), _adapter("gpt-4o", ("sql",))
    ('sql', None)
    """
    return model if isinstance(model, str) and model in names else None


def _check_envelope(obj: Mapping[str, Any], where: str) -> str | None:
    method = obj.get("method", "POST")
    if method != "POST":
        return _message(where, "method", '"POST"', method)
    url = obj.get("url")
    if url not in _URLS:
        found = repr(url) if isinstance(url, str) else describe(url)
        urls = ", ".join(_URLS[:-1])
        return f"{where}: field 'url': unsupported url {found}; use {urls} or {_URLS[-1]}"
    if type(obj.get("body")) is not dict:
        return _message(where, "body", "an object", obj.get("body"))
    return None


def _sampling_fields(
    body: Mapping[str, Any], chat: bool, where: str
) -> tuple[dict[str, Any], str | None]:
    """The body's sampling fields under the names `parse_sampling` reads."""
    values = {
        name: body.get(name)
        for name in ("temperature", "top_p", "top_k", "n", "stop", "seed", "response_format")
    }
    # max_completion_tokens is the newer name; OpenAI takes it over max_tokens.
    values["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    logprobs = body.get("logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            return values, _message(where, "body.logprobs", "a boolean", logprobs)
        top = body.get("top_logprobs")
        if top is not None and not logprobs:
            return values, f"{where}: field 'body.top_logprobs' needs 'body.logprobs': true"
        if logprobs:
            values["logprobs"] = 0 if top is None else top
    elif logprobs is not None:
        values["logprobs"] = logprobs
    return values, None


class CustomIdRegistry(DefaultIdRuns):
    """Notes each custom_id's first line and warns (via logging) about repeats.

    Repeats still run and each gets its own output line; `duplicates` counts them.
    A line without a valid custom_id is an error line whose custom_id is its 0-based
    row number as text ("4"); a line giving that custom_id is a repeat too.
    Memory grows with the input as `IdRegistry`'s does (~120 MB per million ids).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._first_seen: dict[str, int] = {}
        self.duplicates = 0

    def check(self, row: Row) -> None:
        row_id = row.id
        if type(row_id) is not str:  # no valid custom_id: the row index
            self.no_id(row.index)
            if self._first_seen:
                self._check_default(row)
            return
        if self._gap_start is not None:
            self._close_gap(row.index, row.line)
        first = self._first_seen.setdefault(row_id, row.line)
        if first != row.line:
            self._warn(row, f"custom_id {row_id!r} was first used at line {first}")
        elif self._runs_end:
            self._check_explicit(row, row_id)

    def _check_explicit(self, row: Row, row_id: str) -> None:
        # A row index as text: ASCII digits, no leading zero, and short enough for
        # int() (which refuses over 4,300 digits); 2**63 has 19.
        if not (row_id.isascii() and row_id.isdigit() and len(row_id) <= 19):
            return
        index = int(row_id)
        line = self._default_line(index)
        if line is not None and custom_id(index) == row_id:
            self._first_seen[row_id] = line  # a later repeat is told of the earliest line
            self._warn(
                row,
                f"custom_id {row_id!r} was first used at line {line}, a line without a "
                "valid custom_id, whose output line gets its 0-based row number",
            )

    def _check_default(self, row: Row) -> None:
        text = custom_id(row.id)
        first = self._first_seen.get(text)
        if first is not None:
            self._warn(
                row,
                f"this line has no valid custom_id, so its output line gets its 0-based "
                f"row number, {text!r}, which line {first} uses as its custom_id",
            )

    def _warn(self, row: Row, what: str) -> None:
        self.duplicates += 1
        if self.duplicates <= _DUPLICATES_NAMED:
            logger.warning(
                "%s:%d: %s; each line gets its own output line, so the output has two "
                "with this custom_id",
                self._name,
                row.line,
                what,
            )

    def finish(self) -> None:
        """Log the total, once the whole input is read, if any id repeated."""
        if self.duplicates > _DUPLICATES_NAMED:
            logger.warning(
                "%s: %d lines repeat an earlier line's custom_id (the first %d are named above)",
                self._name,
                self.duplicates,
                _DUPLICATES_NAMED,
            )


def custom_id(row_id: Any) -> str:
    """The custom_id written for a row id: a string as is, any other id as JSON text.

    >>> custom_id("q-1"), custom_id(7)
    ('q-1', '7')
    """
    return row_id if isinstance(row_id, str) else dumps(row_id).decode()


def same_custom_id(written: Any, given: Any) -> bool:
    """Whether an output line's custom_id was written for input id `given` (resume)."""
    return bool(written == custom_id(given))


class OpenAIBatchLines:
    """Turns results into OpenAI batch output lines for one run.

    Ids are unique across runs (a random run token) and stable within one (the row
    index), which is all OpenAI promises and makes two lines easy to tell apart.

    >>> lines = OpenAIBatchLines("tiny", created=0)
    >>> line = lines(Result(index=0, id="a", output="Hi", finish_reason="stop",
    ...                     prompt_tokens=3, completion_tokens=1, chat=True))
    >>> line["response"]["body"]["choices"][0]["message"]
    {'role': 'assistant', 'content': 'Hi'}
    """

    def __init__(self, model: str, created: int | None = None, token: str | None = None) -> None:
        self.model = model
        self.created = int(time.time()) if created is None else created
        # Ids are `batch_req_<token>-<row index>`; a resumed run passes the earlier
        # run's token, so one output (and its errors file) keeps one id scheme.
        self._token = token or secrets.token_hex(6)

    def __call__(self, result: Result) -> dict[str, Any]:
        token = f"{self._token}-{result.index}"
        if result.error is not None:
            response: dict[str, Any] = {
                "status_code": 500 if result.error.type == ERROR_ENGINE else 400,
                "request_id": f"req-{token}",
                "body": None,
            }
            error: Any = {"code": result.error.type, "message": result.error.message}
        else:
            response = {"status_code": 200, "request_id": f"req-{token}", "body": None}
            if result.values is not None:
                response["body"] = pooling_body(result, token, self.model, self.created)
            else:
                response["body"] = self._body(result, token)
            error = None
        return {
            "id": f"batch_req_{token}",
            "custom_id": custom_id(result.id),
            "response": response,
            "error": error,
        }

    def _body(self, result: Result, token: str) -> dict[str, Any]:
        if isinstance(result.output, list):
            texts = result.output
            reasons = list(result.finish_reason or [None] * len(texts))
            logprobs = result.logprobs
        else:
            texts = [result.output or ""]
            reasons = [result.finish_reason if isinstance(result.finish_reason, str) else None]
            logprobs = None if result.logprobs is None else [result.logprobs]
        choices = []
        for number, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
            tokens = None if logprobs is None else logprobs[number]
            choice: dict[str, Any] = {"index": number}
            if result.chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = None if tokens is None else {"content": tokens}
            else:
                choice["text"] = text
                choice["logprobs"] = None if tokens is None else _completion_logprobs(tokens)
            choice["finish_reason"] = reason
            choices.append(choice)
        prompt_tokens = result.prompt_tokens or 0
        completion_tokens = result.completion_tokens or 0
        return {
            "id": f"{'chatcmpl' if result.chat else 'cmpl'}-{token}",
            "object": "chat.completion" if result.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _completion_logprobs(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """The legacy completions form: parallel lists, top alternatives as dicts."""
    offsets = []
    offset = 0
    for token in tokens:
        offsets.append(offset)
        offset += len(token["token"])
    return {
        "tokens": [token["token"] for token in tokens],
        "token_logprobs": [token["logprob"] for token in tokens],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in token["top_logprobs"]} for token in tokens
        ],
        "text_offset": offsets,
    }


def check_line(row: object, where: str) -> dict[str, Any]:
    """An output line read back, if it is one this module writes; else `OutputError`."""
    if type(row) is not dict or type(row.get("custom_id")) is not str or "response" not in row:
        raise not_ours(where, 'not an OpenAI batch output line (no "custom_id" and "response")')
    return row


def result_from_line(index: int, row: Mapping[str, Any], where: str) -> Result:
    """The failed result an error line was written from, for rewriting an errors file.

    Only the id and the error come back; an error line holds nothing else.
    """
    error = row.get("error")
    if type(error) is not dict or not all(type(error.get(k)) is str for k in ("code", "message")):
        raise not_ours(where, 'an "error" that is not {"code": ..., "message": ...}')
    return Result(index=index, id=row["custom_id"], error=RowError(error["code"], error["message"]))


def id_token(line: Mapping[str, Any]) -> str | None:
    """The run token in an output line's `batch_req_<token>-<index>` id, if it has one.

    >>> id_token({"id": "batch_req_1a2b3c-0"})
    '1a2b3c'
    """
    line_id = line.get("id")
    if not isinstance(line_id, str) or not line_id.startswith("batch_req_"):
        return None
    token, dash, index = line_id[len("batch_req_") :].rpartition("-")
    return token if dash and token and index.isdigit() else None
