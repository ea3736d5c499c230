"""OpenAI batch lines for the pooling tasks: `/v1/embeddings`, `/v1/score`, `/v1/rerank`.

The request bodies are read as vLLM's run-batch reads them (its `EmbeddingRequest`,
`ScoreRequest` and `RerankRequest`), one row per line:

- `/v1/embeddings`: `input` (a string, or a list of one string), optional
  `dimensions`; `encoding_format` "float" only;
- `/v1/score`: `text_1` and `text_2` (or `queries` and `documents`), one pair;
- `/v1/rerank`: `query` and `documents` (a list of strings), scored in one row.

Other body fields (`model`, `user`, ...) are ignored, as vLLM's server ignores
them. The response bodies are vLLM's `EmbeddingResponse`, `ScoreResponse` and
`RerankResponse` (results sorted by relevance, as vLLM sorts them; a document's
text is not repeated back).

>>> body_texts("/v1/rerank", {"query": "q", "documents": ["a", "b"]}, "b:1")
(Rerank(query='q', documents=['a', 'b']), None, None)
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from batching.compression import CorruptStream, DecompressedReader, codec_of
from batching.location import Location
from batching.records import Result
from batching.sampling_rules import message as _message
from batching.tasks import Rerank, Task, TextPair

__all__ = [
    "EMBEDDINGS_URL",
    "POOLING_URLS",
    "RERANK_URL",
    "SCORE_URL",
    "body_texts",
    "implied_task",
    "pooling_body",
    "url_task",
]

EMBEDDINGS_URL = "/v1/embeddings"
SCORE_URL = "/v1/score"
RERANK_URL = "/v1/rerank"
POOLING_URLS = (EMBEDDINGS_URL, SCORE_URL, RERANK_URL)


def url_task(url: str) -> Task:
    """The task a line's url asks for.

    >>> url_task("/v1/rerank"), url_task("/v1/chat/completions")
    ('score', 'generate')
    """
    if url == EMBEDDINGS_URL:
        return "embed"
    if url in (SCORE_URL, RERANK_URL):
        return "score"
    return "generate"


# A first line longer than this is not looked at: the task is then "generate".
_SNIFF_BYTES = 16 * 1024 * 1024


def implied_task(path: str) -> Task:
    """The task a local input implies: its first line's url if it is an OpenAI batch
    line for a pooling endpoint, else "generate" (also for stdin and remote inputs,
    which cannot be read twice cheaply).

    >>> implied_task("-")
    'generate'
    """
    location = Location.of(path)
    if location.is_stdio or location.is_remote or location.format == "parquet":
        return "generate"
    try:
        first = _first_line(location)
    except (OSError, EOFError, CorruptStream):
        return "generate"  # the reader says what is wrong with the file
    if len(first) > _SNIFF_BYTES:
        return "generate"
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return "generate"
    if isinstance(obj, dict) and isinstance(obj.get("url"), str) and "custom_id" in obj:
        return url_task(obj["url"])
    return "generate"


def _first_line(location: Location) -> bytes:
    # Only a regular file: a named pipe (`run <(...)`, `mkfifo`) read here would lose
    # the rows read to the run, which opens it again (seen: the first row went missing).
    if not stat.S_ISREG(os.stat(location.path).st_mode):
        return b""
    with open(location.path, "rb") as raw:
        buffered = io.BufferedReader(raw)
        # The content decides, as for the reader: gzip and zstd alike.
        codec = codec_of(buffered.peek(4)[:4])
        stream: Any = buffered
        if codec is not None:
            stream = io.BufferedReader(DecompressedReader(buffered.read1, codec))
        lines: Iterator[bytes] = (line for line in stream if line.strip())
        return next(lines, b"")


def body_texts(
    url: str, body: Mapping[str, Any], where: str
) -> tuple[str | TextPair | Rerank | None, int | None, str | None]:
    """A pooling line's text (or pair), its `dimensions`, or a problem naming the field."""
    if url == EMBEDDINGS_URL:
        return _embedding_input(body, where)
    if url == RERANK_URL:
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not query:
            return None, None, _message(where, "body.query", "a non-empty string", query)
        if isinstance(documents, str):
            documents = [documents]
        if not isinstance(documents, list) or not _strings(documents):
            expected = "a non-empty list of strings"
            return None, None, _message(where, "body.documents", expected, documents)
        if body.get("top_n"):
            return (
                None,
                None,
                (
                    f"{where}: field 'body.top_n' is not supported by bizra-batch (every "
                    "document is scored); remove it"
                ),
            )
        return Rerank(query, documents), None, None
    names = ("queries", "documents") if "queries" in body else ("text_1", "text_2")
    texts = []
    for name in names:
        value = body.get(name)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str) or not value:
            expected = "a non-empty string (one pair per line; /v1/rerank scores several)"
            return None, None, _message(where, f"body.{name}", expected, value)
        texts.append(value)
    return TextPair(texts[0], texts[1]), None, None


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _embedding_input(
    body: Mapping[str, Any], where: str
) -> tuple[str | None, int | None, str | None]:
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str) or not text:
        expected = "a non-empty string (one input per line)"
        return None, None, _message(where, "body.input", expected, text)
    encoding = body.get("encoding_format")
    if encoding not in (None, "float"):
        return None, None, _message(where, "body.encoding_format", '"float"', encoding)
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        return None, None, _message(where, "body.dimensions", "an integer >= 1", dimensions)
    return text, dimensions, None


def pooling_body(result: Result, token: str, model: str, created: int) -> dict[str, Any]:
    """The response body of a finished pooling line, as vLLM's server writes it.

    >>> pooling_body(Result(index=0, id="a", prompt_tokens=2, values={"score": 0.5}),
    ...              "t-0", "m", 0)["data"]
    [{'index': 0, 'object': 'score', 'score': 0.5}]
    """
    values = result.values or {}
    tokens = result.prompt_tokens or 0
    usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
    if "embedding" in values:
        data: list[dict[str, Any]] = [
            {"index": 0, "object": "embedding", "embedding": values["embedding"]}
        ]
        return _listing(f"embd-{token}", model, created, data, usage)
    if "scores" in values:
        results = [
            {"index": n, "document": {"text": None}, "relevance_score": score}
            for n, score in enumerate(values["scores"])
        ]
        results.sort(key=lambda r: r["relevance_score"], reverse=True)
        return {
            "id": f"rerank-{token}",
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
        }
    data = [{"index": 0, "object": "score", "score": values.get("score")}]
    return _listing(f"score-{token}", model, created, data, usage)


def _listing(
    body_id: str, model: str, created: int, data: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": body_id,
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": usage,
    }
