"""The OpenAI HTTP API as bizra-batch speaks it: request bodies and responses.

Pure functions over `httpx` values, kept apart from the engine's threads and
retries so the mapping (which fields go where, how errors and Retry-After read) reads
and tests on its own.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import orjson

from batching.engine import EngineOutput, EngineRequest
from batching.media import has_images, with_image_urls
from batching.records import Sample, Sampling

__all__ = ["error_message", "parse_output", "request_body", "retry_after_s"]


def request_body(model: str, request: EngineRequest) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for one request.

    >>> request_body("m", EngineRequest(0, [1], Sampling(max_tokens=8), prompt="Hi"))
    ('/completions', {'model': 'm', 'prompt': 'Hi', 'max_tokens': 8})
    >>> request_body("m", EngineRequest(0, [1], Sampling(), prompt="Hi", adapter="sql"))[1]
    {'model': 'sql', 'prompt': 'Hi'}
    """
    prompt = request.prompt
    # A server with LoRA adapters (vLLM's) serves each under its own model name.
    body: dict[str, Any] = {"model": request.adapter or model}
    chat = not (prompt is None or isinstance(prompt, str))
    if prompt is None or isinstance(prompt, str):
        # No raw prompt (a caller that only has tokens): servers take token ids too.
        body["prompt"] = prompt if prompt is not None else list(request.prompt_token_ids)
    else:
        body["messages"] = (
            with_image_urls(prompt) if has_images(prompt) else [dict(m) for m in prompt]
        )
    body.update(_sampling_fields(request.sampling, chat))
    return ("/chat/completions" if chat else "/completions"), body


def _sampling_fields(sampling: Sampling, chat: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        # top_k is not in OpenAI's API; vLLM, TGI and llama.cpp accept it.
        "top_k": sampling.top_k,
        "seed": sampling.seed,
        "stop": list(sampling.stop) if sampling.stop else None,
        "n": sampling.n,
    }
    if sampling.logprobs is not None:
        if chat:
            fields["logprobs"] = True
            fields["top_logprobs"] = sampling.logprobs
        else:
            fields["logprobs"] = sampling.logprobs
    if sampling.json_schema is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": orjson.loads(sampling.json_schema)},
        }
    return {k: v for k, v in fields.items() if v is not None}


def parse_output(request: EngineRequest, data: Any) -> EngineOutput:
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    # Every sample is kept (n > 1); the server counts tokens only in total, so a
    # sample's own count is unknown (0). Logprobs are not read back yet.
    samples = []
    for choice in choices:
        message = choice.get("message")
        text = (message.get("content") or "") if message is not None else choice["text"]
        samples.append(Sample(text, choice.get("finish_reason"), 0))
    usage = data.get("usage") or {}
    return EngineOutput(
        key=request.key,
        text=samples[0].text,
        finish_reason=samples[0].finish_reason,
        prompt_tokens=int(usage.get("prompt_tokens", len(request.prompt_token_ids))),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        samples=tuple(samples) if len(samples) > 1 else (),
    )


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}} or older shapes."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return response.text.strip()[:500]


def retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
