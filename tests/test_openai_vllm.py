"""OpenAI output lines against vLLM's own batch output model, and structured output on
the real engine (tiny random model).

vLLM's `BatchRequestOutput` types a response body as one of its server responses,
which (in 0.32) include `ChatCompletionResponse` but not `CompletionResponse`: its
batch runner does not serve /v1/completions. A `text_completion` line is therefore
checked as vLLM's envelope with its body checked as vLLM's `CompletionResponse`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.job import run
from batching.records import Sampling
from batching.testing import FakeEngine

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}},
    "required": ["color"],
}


def line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return line(custom_id, CHAT, messages=[{"role": "user", "content": content}], **body)


def validate_with_vllm(output: dict[str, Any]) -> None:
    """Raise unless `output` is a valid vLLM batch output line (see the module doc)."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse

    response = output["response"]
    body = response["body"] if response else None
    if body is not None and body["object"] == "text_completion":
        CompletionResponse.model_validate(body)
        envelope = {**output, "response": {**response, "body": None}}
        BatchRequestOutput.model_validate(envelope)
        return
    parsed = BatchRequestOutput.model_validate(output)
    if body is not None:
        assert isinstance(parsed.response.body, ChatCompletionResponse)  # type: ignore[union-attr]


def test_every_output_line_validates_against_vllms_batch_output_model(tmp_path: Path) -> None:
    lines = [
        chat("plain", "Hello", max_tokens=4),
        chat("many", "Hi", n=2, logprobs=True, top_logprobs=2),
        line("text", COMPLETIONS, prompt="abc", n=2, logprobs=1),
        chat("schema", "Who?", response_format={"type": "json_object"}),
        line("bad-url", "/v1/moderations", input="x"),
        {"method": "POST", "url": CHAT, "body": {}},
        chat("rejected", "REJECT me"),
    ]
    source = tmp_path / "batch.jsonl"
    source.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "out.jsonl"
    config = RunConfig(
        input=InputConfig(str(source)),
        output=OutputConfig(str(out), format="openai", model="tiny"),
        sampling=Sampling(max_tokens=16),
    )
    run(config, lambda: FakeEngine(reject=frozenset({"REJECT"})))
    outputs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(outputs) == len(lines)
    for output in outputs:
        validate_with_vllm(output)
    assert [o["error"] is None for o in outputs] == [True, True, True, True, False, False, False]


def matches(value: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema the schemas above use."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        if not isinstance(value, dict) or not set(schema.get("required", [])) <= set(value):
            return False
        if schema.get("additionalProperties") is False and not set(value) <= set(properties):
            return False
        return all(matches(v, properties[k]) for k, v in value.items() if k in properties)
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    if kind == "integer":
        return type(value) is int and schema.get("minimum", value) <= value <= schema.get(
            "maximum", value
        )
    return False


def test_structured_output_n_and_logprobs_on_the_real_engine(
    tiny_model: Path, tmp_path: Path
) -> None:
    color_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": COLOR}}
    lines = [
        chat("c0", "Name a person."),
        chat("c1", "Another one, please.", n=2, temperature=1.0, seed=5),
        line("t0", COMPLETIONS, prompt="A person:", logprobs=2),
        chat("own", "A color?", response_format=color_format),
    ]
    source, schema = tmp_path / "batch.jsonl", tmp_path / "person.json"
    source.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    schema.write_bytes(orjson.dumps(PERSON))
    out = tmp_path / "out.jsonl"
    command = [
        sys.executable, "-m", "cli", "run", str(source), "-o", str(out), "-q",
        "-m", str(tiny_model), "--output-format", "openai", "--json-schema", str(schema),
        "--max-tokens", "48", "--temperature", "0",
        "--dtype", "float32", "--engine-arg", "enforce_eager=true",
        # Compact JSON: a random model otherwise pads with whitespace until max_tokens.
        "--engine-arg",
        'structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": true}',
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    result = subprocess.run(
        command, capture_output=True, cwd=REPO, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    outputs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [o["custom_id"] for o in outputs] == ["c0", "c1", "t0", "own"]
    for output in outputs:
        validate_with_vllm(output)
    texts: dict[str, list[str]] = {}
    for output in outputs:
        body = output["response"]["body"]
        choices = body["choices"]
        assert {c["finish_reason"] for c in choices} == {"stop"}, choices
        texts[output["custom_id"]] = [c.get("text") or c["message"]["content"] for c in choices]
    assert len(texts["c1"]) == 2  # n = 2: both samples kept
    for custom_id, samples in texts.items():
        wanted = COLOR if custom_id == "own" else PERSON
        for text in samples:
            assert matches(orjson.loads(text), wanted), (custom_id, text)
    logprobs = outputs[2]["response"]["body"]["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == outputs[2]["response"]["body"]["usage"]["completion_tokens"]
    # Two alternatives a place, fewer where they decode to the same text (dict keys).
    assert all(1 <= len(top) <= 2 for top in logprobs["top_logprobs"])
    # The tokens spell the text, and then the end-of-sequence token it stopped on.
    assert "".join(logprobs["tokens"]).startswith(texts["t0"][0])
