"""kill -9 mid-run, then `--resume`: the output must be the uninterrupted run's, exactly.

The real CLI runs as a process on real vLLM and the tiny model, greedy, so one
uninterrupted run per session is the reference. Each test starts a run, waits
(bounded polling, no fixed sleep) until some rows are durable on disk, kills the
whole process group with SIGKILL, checks that what is left is a prefix of the
reference, resumes, and compares byte for byte (JSONL) or table for table (Parquet).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from batching.config import OutputConfig
from batching.records import Result
from batching.writers import open_writer

pytestmark = pytest.mark.vllm

REPO_ROOT = Path(__file__).resolve().parent.parent
# Enough for 16 chunks; engine start-up (five times here) dominates the file's time on CPU.
ROWS = 1000
CHUNK_SIZE = 64
# A cold start imports torch and vLLM; on a busy 2-core box that can take a while.
DEADLINE_S = 240.0


def _prompt_rows(count: int) -> bytes:
    subjects = ("the moon", "sourdough", "a B-tree", "tides", "a sonnet", "jazz", "rooks")
    return b"".join(
        orjson.dumps({"id": f"p{i}", "prompt": f"Say something about {subjects[i % 7]} ({i})"})
        + b"\n"
        for i in range(count)
    )


def _command(source: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli", "run", str(source), "-m", str(model), "-o", str(out),
        "--temperature", "0", "--max-tokens", "8", "--chunk-size", str(CHUNK_SIZE),
        # Test speed only: float32 is faster than bf16 on CPUs without AVX-512 BF16,
        # and eager mode skips seconds of torch.compile.
        "--dtype", "float32", "--engine-arg", "enforce_eager=true", "-q", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # The tiny model needs little KV cache, and a small one is allocated faster.
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def _run(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=_env(), capture_output=True, timeout=DEADLINE_S
    )


def _rows_on_disk(out: Path) -> Callable[[], bool]:
    """Whether the run has made some rows durable: whole JSONL lines, or a sealed part."""
    if out.suffix == ".jsonl":
        return lambda: out.exists() and out.stat().st_size > 0
    parts = out.with_name(out.name + ".parts")
    return lambda: parts.is_dir() and any(parts.glob("part-*.parquet"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/setup installs it)")
    path = tmp_path_factory.mktemp("crash") / "prompts.jsonl"
    path.write_bytes(_prompt_rows(ROWS))
    return path


@pytest.fixture(scope="module")
def reference(source: Path, tiny_model: Path) -> Path:
    """The JSONL output of one uninterrupted run: the only reference run per session."""
    out = source.with_name("reference.jsonl")
    done = _run(_command(source, out, tiny_model))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert out.read_bytes().count(b"\n") == ROWS
    return out


@pytest.fixture(scope="module")
def parquet_reference(reference: Path) -> Path:
    """The reference's rows written as Parquet by the output writer, in one go.

    A second engine run would cost this file a third of its time budget (engine
    start-up dominates on CPU); the writer turns the same results into the same
    file, since the finished file does not depend on where flushes fell.
    """
    out = reference.with_suffix(".parquet")
    rows = [orjson.loads(line) for line in reference.read_bytes().splitlines()]
    assert all(row["error"] is None for row in rows)
    results = [
        Result(
            index=index,
            id=row["id"],
            output=row["output"],
            finish_reason=row["finish_reason"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
        )
        for index, row in enumerate(rows)
    ]
    with open_writer(OutputConfig(path=str(out))) as writer:
        writer.write(results)
    return out


def _start_then_kill_9(command: list[str], out: Path, logs: Path) -> None:
    """Start the run, wait until some rows are durable, then SIGKILL its process group."""
    has_rows = _rows_on_disk(out)
    with logs.open("wb") as stderr:
        # Its own process group, so SIGKILL takes any engine helper process with it.
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not has_rows() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended ({process.returncode}) before it could be killed: "
        f"{logs.read_text(errors='replace')}"
    )
    assert has_rows(), "killed before any row was written"


def _resume(command: list[str]) -> None:
    resumed = _run([*command, "--resume"])
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")


def test_jsonl_kill_9_then_resume_is_byte_identical(
    source: Path, reference: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    command = _command(source, out, tiny_model)
    _start_then_kill_9(command, out, tmp_path / "stderr.txt")

    expected = reference.read_bytes()
    left = out.read_bytes()
    whole = left[: left.rfind(b"\n") + 1]  # resume cuts a torn last line off
    assert 0 < len(whole) < len(expected), "the kill must land mid-run"
    assert whole == expected[: len(whole)]  # a prefix, not just any rows

    _resume(command)
    assert out.read_bytes() == expected


def test_parquet_kill_9_then_resume_gives_the_same_table(
    source: Path, parquet_reference: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    parts = out.with_name(out.name + ".parts")
    command = _command(source, out, tiny_model)
    _start_then_kill_9(command, out, tmp_path / "stderr.txt")

    expected = pq.read_table(parquet_reference)
    assert not out.exists(), "a killed run must not leave a finished-looking file"
    sealed = [pq.read_table(part).to_pylist() for part in sorted(parts.glob("part-*.parquet"))]
    saved = [row for rows in sealed for row in rows]
    assert 0 < len(saved) < ROWS, "the kill must land mid-run"
    assert saved == expected.slice(0, len(saved)).to_pylist()

    _resume(command)
    table = pq.read_table(out)
    assert table.num_rows == ROWS
    assert table.equals(expected, check_metadata=True)
    assert not parts.exists()
