"""An `Engine` that sends rows to a running OpenAI-compatible server.

vLLM's `vllm serve`, TGI and llama.cpp's server all speak the OpenAI HTTP API, so
one engine covers a model someone else already serves: a plain prompt goes to
`/v1/completions`, a chat to `/v1/chat/completions`. The pipeline around it is
unchanged (ordering, resume, error records, report); only the engine differs.

Requests run on `concurrency` worker threads over one pooled `httpx.Client`:
blocking HTTP in threads keeps the `add`/`step` interface synchronous, and the
thread count is the server's load, whatever the pipeline's in-flight window. The
workers are daemon threads, not a ThreadPoolExecutor: the executor's threads are
joined at interpreter exit, so Ctrl-C would wait for every open request to answer
(measured: 37 s against a slow server, instead of at once).

Each request retries on its own with the `RetryPolicy`'s backoff (429, 5xx,
timeouts, dropped connections), honouring Retry-After; any other 4xx is the row's
fault and becomes its error record. A server that stays unreachable after the
retries is reported as a dead engine, so the pipeline's restart logic (which checks
the server again) decides whether the run can go on.

Token counts: a server cannot in general tokenize for us, and the pipeline uses
prompt lengths only to group rows of similar length. With a local tokenizer (the
model path is a local directory holding tokenizer.json) the counts are exact;
otherwise they are estimated as one token per 4 characters. Output rows carry the
server's own `usage` counts, and the server decides what is too long.

The example is not run as a test: it needs a running server.

>>> engine = create_openai_engine(OpenAIConfig("http://127.0.0.1:8000/v1", "my-model"))
...     # doctest: +SKIP
"""

from __future__ import annotations

import math
import queue
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from batching.engine import (
    EngineDeadError,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.errors import BatchError, UsageError
from batching.openai_wire import error_message, parse_output, request_body, retry_after_s
from batching.prompt_tokens import PromptTokenizer, TokenizerUnavailable
from batching.records import (
    ERROR_ENGINE,
    ERROR_INVALID_REQUEST,
    ERROR_PROMPT_TOO_LONG,
    RowError,
)
from batching.retry import RetryPolicy

__all__ = [
    "CHARS_PER_TOKEN",
    "OpenAIConfig",
    "OpenAIEngine",
    "ServerUnavailableError",
    "create_openai_engine",
]

# Estimated characters per token when no local tokenizer is at hand: the usual
# figure for English text with BPE vocabularies. Only grouping uses it.
CHARS_PER_TOKEN = 4
# A Retry-After longer than this is not waited out in full: a run should not hang
# for an hour on one header; the retry budget still bounds the attempts.
MAX_RETRY_AFTER_S = 120.0
# One wait inside `step`; it loops while requests are open. Bounded only so that a
# bug leaving nothing to wait for shows up as a spin, not a hang.
STEP_WAIT_S = 1.0
_UNKNOWN_CONTEXT = 2**31 - 1
_TOO_LONG = re.compile(r"maximum context length|too long", re.I)


class ServerUnavailableError(BatchError):
    """The server cannot be reached or refuses us before any row runs (exit 1)."""


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """Where the server is and how to talk to it.

    `base_url` may end in `/v1` or not (`http://host:8000` means
    `http://host:8000/v1`). `model` is the served model name.

    >>> OpenAIConfig("http://127.0.0.1:8000", "Qwen/Qwen2.5-0.5B-Instruct").api_base
    'http://127.0.0.1:8000/v1'
    """

    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 16
    timeout_s: float = 600.0
    max_retries: int = 3
    # Used when the server's model list does not say (vLLM's does).
    max_model_len: int | None = None
    # A local directory with tokenizer.json for exact prompt token counts.
    tokenizer_dir: str | None = None

    @property
    def api_base(self) -> str:
        url = httpx.URL(self.base_url)
        if url.path in ("", "/"):
            url = url.copy_with(path="/v1")
        return str(url).rstrip("/")


class _Retryable(Exception):
    """One attempt failed in a way a later attempt may not."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Unreachable(Exception):
    """The server could not be reached on any attempt."""


@dataclass(frozen=True, slots=True)
class _Done:
    key: int
    ticket: int
    outcome: EngineOutput | PermanentRequestError | _Unreachable


class OpenAIEngine:
    """The `Engine` over HTTP. Build it with `create_openai_engine` (checks the server).

    `transport` replaces httpx's network transport (tests pass `httpx.MockTransport`);
    `retry.sleep` is the only clock the retries use.
    """

    def __init__(
        self,
        config: OpenAIConfig,
        *,
        max_model_len: int | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = config
        self._retry = retry or RetryPolicy(max_retries=config.max_retries)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(
            base_url=config.api_base,
            headers=headers,
            timeout=config.timeout_s,
            limits=httpx.Limits(
                max_connections=config.concurrency, max_keepalive_connections=config.concurrency
            ),
            transport=transport,
        )
        self._jobs: queue.SimpleQueue[tuple[EngineRequest, int] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        # key -> ticket of its live submission. A result whose ticket is not here
        # was aborted (and perhaps resubmitted under a new ticket): it is dropped.
        self._live: dict[int, int] = {}
        self._tickets = 0
        self._lock = threading.Lock()
        self._max_model_len = max_model_len or config.max_model_len or _UNKNOWN_CONTEXT
        self._tokenizer = _load_tokenizer(config.tokenizer_dir)
        self._closed = False
        for number in range(config.concurrency):
            worker = threading.Thread(target=self._work, name=f"bizra-http-{number}", daemon=True)
            worker.start()

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self._config.concurrency

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        """Placeholder token ids of the right (or estimated) length for each prompt.

        The server tokenizes for itself; these lists only carry a length for
        grouping, so their ids are zeros.
        """
        return [[0] * self._count(prompt) for prompt in prompts]

    def _count(self, prompt: str | Sequence[Mapping[str, Any]]) -> int:
        if self._tokenizer is not None:
            try:
                if isinstance(prompt, str):
                    return self._tokenizer.count([prompt], add_special_tokens=True)[0]
                rendered = self._tokenizer.render_chat(prompt)
                return self._tokenizer.count([rendered], add_special_tokens=False)[0]
            except Exception:
                pass  # the server renders for itself; an estimate will do here
        text = prompt if isinstance(prompt, str) else _chat_text(prompt)
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def add(self, request: EngineRequest) -> None:
        if self._closed:
            raise EngineDeadError("the OpenAI engine was closed")
        with self._lock:
            self._tickets += 1
            ticket = self._tickets
            self._live[request.key] = ticket
        self._jobs.put((request, ticket))

    def step(self) -> list[EngineOutput]:
        """Results finished since the last step; blocks until one is there.

        Blocking is safe: a signal raises in this (the main) thread, and every open
        request ends, at the latest at its timeout. It keeps the report honest too:
        a step is a wait that ended with rows, never an empty poll.
        """
        outputs: list[EngineOutput] = []
        while self._live and not outputs:
            outputs = self._collect(self._wait_for_done())
        return outputs

    def _wait_for_done(self) -> list[_Done]:
        finished: list[_Done] = []
        try:
            finished.append(self._done.get(timeout=STEP_WAIT_S))
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return finished

    def _collect(self, finished: list[_Done]) -> list[EngineOutput]:
        outputs: list[EngineOutput] = []
        for done in finished:
            with self._lock:
                if self._live.get(done.key) != done.ticket:
                    continue
                del self._live[done.key]
            outcome = done.outcome
            if isinstance(outcome, _Unreachable):
                raise EngineDeadError(str(outcome))
            if isinstance(outcome, PermanentRequestError):
                error = RowError(outcome.error_type, str(outcome))
                outputs.append(EngineOutput(done.key, "", None, 0, 0, error=error))
            else:
                outputs.append(outcome)
        return outputs

    def abort(self, keys: Iterable[int]) -> None:
        # A queued request is skipped by the worker; a running one's answer dropped.
        with self._lock:
            for key in keys:
                self._live.pop(key, None)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._live.clear()
        for _ in range(self._config.concurrency):
            self._jobs.put(None)
        self._client.close()

    # -- worker threads --------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            request, ticket = job
            if self._live.get(request.key) == ticket:
                self._run(request, ticket)

    def _run(self, request: EngineRequest, ticket: int) -> None:
        try:
            outcome: EngineOutput | PermanentRequestError | _Unreachable = self._attempts(
                request, ticket
            )
        except PermanentRequestError as exc:
            outcome = exc
        except _Unreachable as exc:
            outcome = exc
        except Exception as exc:  # a bug or a closed client must still finish the row
            outcome = PermanentRequestError(f"{type(exc).__name__}: {exc}", ERROR_ENGINE)
        self._done.put(_Done(request.key, ticket, outcome))

    def _attempts(self, request: EngineRequest, ticket: int) -> EngineOutput:
        path, body = request_body(self._config.model, request)
        content = orjson.dumps(body)
        attempt = 0
        while True:
            try:
                return self._post(path, content, request)
            except _Retryable as exc:
                attempt += 1
                unreachable = isinstance(exc.__cause__, httpx.ConnectError)
                if not self._retry.should_retry(attempt):
                    message = f"failed after {attempt} attempts: {exc}"
                    if unreachable:
                        raise _Unreachable(
                            f"cannot reach {self._config.api_base}: {message}"
                        ) from exc
                    raise PermanentRequestError(message, ERROR_ENGINE) from exc
                if self._live.get(request.key) != ticket:
                    raise PermanentRequestError("aborted", ERROR_ENGINE) from exc  # dropped
                if exc.retry_after_s is not None:
                    self._retry.sleep(min(exc.retry_after_s, MAX_RETRY_AFTER_S))
                else:
                    self._retry.wait(attempt)

    def _post(self, path: str, content: bytes, request: EngineRequest) -> EngineOutput:
        try:
            response = self._client.post(
                path, content=content, headers={"Content-Type": "application/json"}
            )
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {error_message(response)}", retry_after_s(response))
        if status >= 400:
            message = error_message(response)
            error_type = (
                ERROR_PROMPT_TOO_LONG if _TOO_LONG.search(message) else ERROR_INVALID_REQUEST
            )
            raise PermanentRequestError(f"HTTP {status}: {message}", error_type)
        try:
            return parse_output(request, orjson.loads(response.content))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"unreadable response: {type(exc).__name__}: {exc}") from exc


def _chat_text(messages: Sequence[Mapping[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        parts.append(f"{message.get('role', '')}: {content or ''}")
    return "\n".join(parts)


def _load_tokenizer(directory: str | None) -> PromptTokenizer | None:
    if directory is None or not (Path(directory) / "tokenizer.json").is_file():
        return None
    try:
        return PromptTokenizer.load(directory)
    except TokenizerUnavailable:
        return None


def create_openai_engine(
    config: OpenAIConfig,
    *,
    retry: RetryPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
) -> OpenAIEngine:
    """Check that the server answers and serves `config.model`, then build the engine.

    Fails fast with one line saying what to fix, instead of one error record per row.
    """
    url = f"{config.api_base}/models"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        with httpx.Client(timeout=min(config.timeout_s, 30.0), transport=transport) as client:
            response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise ServerUnavailableError(
            f"cannot reach the server at {config.api_base} ({type(exc).__name__}: {exc}); "
            "is it running? Check --base-url"
        ) from None
    if response.status_code in (401, 403):
        raise UsageError(
            f"{url}: HTTP {response.status_code}: the server wants an API key; put it in an "
            "env var and name it with --api-key-env"
        )
    served = _served_models(response)
    if served is None:
        # Not every server lists its models; requests will tell if the name is wrong.
        return OpenAIEngine(config, max_model_len=None, retry=retry, transport=transport)
    if config.model not in served:
        names = ", ".join(sorted(served)) or "none"
        raise UsageError(
            f"the server at {config.api_base} does not serve {config.model!r}; "
            f"it serves: {names} (pass one with --model)"
        )
    max_len = served[config.model]
    return OpenAIEngine(config, max_model_len=max_len, retry=retry, transport=transport)


def _served_models(response: httpx.Response) -> dict[str, int | None] | None:
    """Served model names -> their context length where the server says (vLLM does)."""
    if response.status_code != 200:
        return None
    try:
        data = orjson.loads(response.content)
        models = data["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    served: dict[str, int | None] = {}
    for model in models:
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            length = model.get("max_model_len")
            served[model["id"]] = length if isinstance(length, int) else None
    return served
