"""The remote engine against hand-written fake servers: httpx.MockTransport for the
engine itself, a real http.server on 127.0.0.1 for the CLI path."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from batching.engine import EngineDeadError, EngineOutput, EngineRequest
from batching.engines.openai import (
    OpenAIConfig,
    OpenAIEngine,
    ServerUnavailableError,
    create_openai_engine,
)
from batching.engines.openai_wire import parse_output, request_body
from batching.errors import UsageError
from batching.records import Sampling
from batching.retry import RetryPolicy
from cli.app import app
from tests.engine_helpers import drain, run_on_server
from tests.reading_helpers import jsonl

Handler = Callable[[httpx.Request], httpx.Response]


def completion(text: str, prompt_tokens: int = 3, completion_tokens: int = 2) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def echo(request: httpx.Request) -> httpx.Response:
    """A server whose completion is the prompt upper-cased (chat: the last message)."""
    body = orjson.loads(request.content)
    if "messages" in body:
        text = body["messages"][-1]["content"].upper()
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4},
            },
        )
    return httpx.Response(200, json=completion(body["prompt"].upper()))


class Recorder:
    """A MockTransport handler that answers from a script, then falls back to echo."""

    def __init__(self, script: list[httpx.Response | Exception] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.bodies.append(orjson.loads(request.content))
            step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        return step if step is not None else echo(request)


def make_engine(
    handler: Handler, sleeps: list[float] | None = None, max_retries: int = 3
) -> OpenAIEngine:
    retry = RetryPolicy(
        max_retries=max_retries, sleep=(sleeps.append if sleeps is not None else lambda _: None)
    )
    config = OpenAIConfig("http://server.test/v1", "m", concurrency=4, max_retries=max_retries)
    return OpenAIEngine(config, retry=retry, transport=httpx.MockTransport(handler))


def plain(key: int, prompt: str, **sampling: Any) -> EngineRequest:
    return EngineRequest(key, [0], Sampling(**sampling), prompt=prompt)


def test_plain_prompts_go_to_completions_and_chats_to_chat_completions() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return echo(request)

    engine = make_engine(handler)
    engine.add(plain(0, "abc"))
    engine.add(EngineRequest(1, [0], Sampling(), prompt=[{"role": "user", "content": "hi"}]))
    outputs = drain(engine)
    engine.close()
    assert sorted(seen) == ["/v1/chat/completions", "/v1/completions"]
    assert outputs[0] == EngineOutput(0, "ABC", "stop", 3, 2)
    assert outputs[1] == EngineOutput(1, "HI", "length", 9, 4)


def test_sampling_maps_onto_the_request_body() -> None:
    sampling = Sampling(
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        top_k=4,
        seed=7,
        stop=("x",),
        n=2,
        logprobs=3,
        json_schema='{"type": "object"}',
    )
    path, body = request_body("m", EngineRequest(0, [0], sampling, prompt="p"))
    assert path == "/completions"
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }
    assert body == {
        "model": "m",
        "prompt": "p",
        "max_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 4,
        "seed": 7,
        "stop": ["x"],
        "n": 2,
        "logprobs": 3,
        "response_format": response_format,
    }
    chat = EngineRequest(0, [0], Sampling(logprobs=3), prompt=[{"role": "user", "content": "q"}])
    path, body = request_body("m", chat)
    assert path == "/chat/completions"
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "logprobs": True,
        "top_logprobs": 3,
    }


def test_429_waits_as_retry_after_says_and_5xx_backs_off() -> None:
    recorder = Recorder(
        [
            httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"message": "slow"}}),
            httpx.Response(500, text="boom"),
            httpx.ReadTimeout("too slow"),
        ]
    )
    sleeps: list[float] = []
    engine = make_engine(recorder, sleeps)
    engine.add(plain(0, "abc"))
    outputs = drain(engine)
    assert outputs[0].text == "ABC" and outputs[0].error is None
    assert len(recorder.bodies) == 4
    assert sleeps[0] == 7.0  # the server's own figure, not the backoff
    assert len(sleeps) == 3 and all(0 <= s <= 30 for s in sleeps[1:])


def test_a_request_that_keeps_failing_becomes_its_rows_error_record() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content)["prompt"] == "bad":
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return echo(request)

    engine = make_engine(handler, max_retries=2)
    engine.add(plain(0, "good"))
    engine.add(plain(1, "bad"))
    outputs = drain(engine)
    assert outputs[0].text == "GOOD"
    error = outputs[1].error
    assert error is not None and error.type == "engine_error"
    assert error.message == "failed after 3 attempts: HTTP 503: overloaded"


@pytest.mark.parametrize(
    ("message", "error_type"),
    [
        ("temperature must be non-negative", "invalid_request"),
        ("This model's maximum context length is 2048 tokens. However, ...", "prompt_too_long"),
    ],
)
def test_other_4xx_fail_the_row_at_once(message: str, error_type: str) -> None:
    recorder = Recorder([httpx.Response(400, json={"error": {"message": message}})])
    engine = make_engine(recorder)
    engine.add(plain(0, "abc"))
    outputs = drain(engine)
    assert len(recorder.bodies) == 1
    error = outputs[0].error
    assert error is not None and error.type == error_type
    assert error.message == f"HTTP 400: {message}"


def test_a_server_that_stays_unreachable_is_a_dead_engine() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    engine = make_engine(handler, max_retries=1)
    engine.add(plain(0, "abc"))
    with pytest.raises(EngineDeadError, match=r"cannot reach http://server\.test/v1"):
        drain(engine)


def test_an_aborted_request_is_not_reported_and_a_resubmission_is() -> None:
    gate = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        gate.wait(10)
        return echo(request)

    engine = make_engine(handler)
    engine.add(plain(0, "first"))
    engine.abort([0])
    assert not engine.has_unfinished()
    engine.add(plain(0, "again"))
    gate.set()
    outputs = drain(engine)
    engine.close()
    assert outputs == {0: EngineOutput(0, "AGAIN", "stop", 3, 2)}


def test_encode_counts_with_a_local_tokenizer_or_estimates(tiny_model: Path) -> None:
    from batching.prompt_tokens import PromptTokenizer

    prompt = "Hello there, how are you today?"
    estimated = OpenAIEngine(OpenAIConfig("http://x", "m")).encode([prompt, ""])
    assert [len(t) for t in estimated] == [8, 0]  # 31 characters / 4, rounded up
    exact = OpenAIEngine(OpenAIConfig("http://x", "m", tokenizer_dir=str(tiny_model)))
    expected = PromptTokenizer.load(tiny_model).count([prompt], add_special_tokens=True)
    assert [len(t) for t in exact.encode([prompt])] == expected


def models(*entries: dict[str, Any]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json={"object": "list", "data": list(entries)})

    return handler


def test_start_up_reads_the_context_length_and_checks_the_model_name() -> None:
    transport = httpx.MockTransport(models({"id": "m", "max_model_len": 2048}, {"id": "other"}))
    engine = create_openai_engine(OpenAIConfig("http://server.test", "m"), transport=transport)
    assert engine.max_model_len == 2048
    engine.close()
    with pytest.raises(UsageError, match=r"does not serve 'nope'; it serves: m, other"):
        create_openai_engine(OpenAIConfig("http://server.test", "nope"), transport=transport)


def test_start_up_failures_say_what_to_fix() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ServerUnavailableError, match="is it running"):
        create_openai_engine(
            OpenAIConfig("http://server.test", "m"), transport=httpx.MockTransport(refused)
        )
    locked = httpx.MockTransport(lambda request: httpx.Response(401))
    with pytest.raises(UsageError, match="--api-key-env"):
        create_openai_engine(OpenAIConfig("http://server.test", "m"), transport=locked)


# -- the CLI against a real HTTP server ------------------------------------------------


class FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that upper-cases; answers 429 once on cue."""

    throttle_once: set[str]  # prompts that get one 429 first
    api_key: str | None = None
    auth_seen: list[str | None]

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": "served", "max_model_len": 4096}]})

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.auth_seen.append(self.headers.get("Authorization"))
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        if prompt in self.throttle_once:
            self.throttle_once.discard(prompt)
            self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        elif prompt == "reject me":
            self._send(400, {"error": {"message": "bad request"}})
        else:
            self._send(200, echo(httpx.Request("POST", "/", content=orjson.dumps(body))).json())

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[FakeServer]]]:
    handler = type("Server", (FakeServer,), {"throttle_once": {"two"}, "auth_seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_cli_runs_rows_through_a_server_in_input_order(
    tmp_path: Path, server: tuple[str, type[FakeServer]]
) -> None:
    url, handler = server
    rows = [{"prompt": w} for w in ("one", "two", "reject me", "four")]
    rows.insert(1, {"id": "chat", "messages": [{"role": "user", "content": "hey"}]})
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(*rows))
    result = run_on_server(
        source, url, "-m", "served", "-q", "--api-key-env", "TEST_KEY", env={"TEST_KEY": "sekrit"}
    )
    assert result.exit_code == 1, result.output  # one row failed
    out = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["output"] for r in out] == ["ONE", "HEY", "TWO", None, "FOUR"]
    assert [r["id"] for r in out] == [0, "chat", 2, 3, 4]
    # The server's refusal, led by the row's place as every error record is.
    message = f"{source}:4: HTTP 400: bad request"
    assert out[3]["error"] == {"type": "invalid_request", "message": message}
    assert set(handler.auth_seen) == {"Bearer sekrit"}
    assert "sekrit" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "openai"], "--engine openai needs --base-url"),
        (["--engine", "fake", "--base-url", "http://x"], "--base-url is for --engine openai"),
        (
            ["--engine", "openai", "--base-url", "http://x", "--api-key-env", "UNSET_KEY_VAR"],
            "--api-key-env UNSET_KEY_VAR: that env var is not set",
        ),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    result = CliRunner().invoke(app, ["run", str(source), "-m", "m", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_exit_does_not_wait_for_requests_still_open() -> None:
    # Ctrl-C closes the engine while requests are open; the process must then exit
    # instead of waiting for the server (here: never) to answer them.
    script = """
import threading, httpx
from batching.engine import EngineRequest
from batching.engines.openai import OpenAIConfig, OpenAIEngine
from batching.records import Sampling
entered = threading.Event()
def hang(request):
    entered.set()
    threading.Event().wait()
engine = OpenAIEngine(OpenAIConfig("http://x", "m"), transport=httpx.MockTransport(hang))
engine.add(EngineRequest(0, [0], Sampling(), prompt="p"))
entered.wait()
engine.close()
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 0


def test_every_choice_of_an_n_2_response_is_a_sample() -> None:
    data = {
        "choices": [
            {"index": 1, "text": "second", "finish_reason": "length"},
            {"index": 0, "text": "first", "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }
    output = parse_output(plain(0, "p", n=2), data)
    assert [(s.text, s.finish_reason) for s in output.all_samples()] == [
        ("first", "stop"),
        ("second", "length"),
    ]
    assert output.completion_tokens == 9
