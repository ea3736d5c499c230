"""The real CLI process under SIGTERM, SIGINT and a closed stdout, on the fake engine.

The fake engine finishes every row at once, so a run is kept in progress by its
input: rows come through a pipe from the test, which decides when the run has
something to stop. Every wait is a bounded poll on what the process has written,
never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

# Every test here runs the CLI in a subprocess and signals it: seconds each.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cli", "run"]
CHUNK_SIZE = 16
ROWS = 20_000
# read(2)'s number, to see in /proc/PID/syscall that a run waits for input.
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())
# Generous: the box is shared, and a cold interpreter imports typer, rich and pyarrow.
DEADLINE_S = 60.0


def _row(index: int) -> bytes:
    # Prompts of different lengths, so a row that got a neighbour's result shows.
    return orjson.dumps({"id": f"q{index}", "prompt": f"prompt {index} " + "x" * (index % 37)})


def _jsonl(count: int) -> bytes:
    return b"".join(_row(i) + b"\n" for i in range(count))


def _fake_run(*args: str) -> list[str]:
    return [*CLI, *args, "--engine", "fake", "-m", "fake", "--chunk-size", str(CHUNK_SIZE)]


def _wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    """Poll `condition` until it holds; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {DEADLINE_S:.0f} s")
        time.sleep(0.01)


def _complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def full_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "full.jsonl"
    path.write_bytes(_jsonl(ROWS))
    return path


@pytest.fixture(scope="module")
def reference(full_input: Path) -> bytes:
    """The output of one uninterrupted run over the whole input."""
    out = full_input.with_name("reference.jsonl")
    done = subprocess.run(
        [*_fake_run(str(full_input), "-o", str(out)), "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    data = out.read_bytes()
    assert data.count(b"\n") == ROWS
    return data


def _blocked_reading_stdin(pid: int) -> bool:
    """Whether a thread of the process sleeps in read(0, ...): it has used its input up.

    Any thread: the run reads its input in a read-ahead thread.
    """
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "syscall").read_text().split()
        except OSError:
            continue
        if len(fields) > 1 and fields[0] == str(READ_SYSCALL) and int(fields[1], 16) == 0:
            return True
    return False


def _feed_some_then_stop(process: subprocess.Popen[bytes], out: Path) -> threading.Thread | None:
    """Write some chunks, then wait until the run is blocked reading stdin for more."""
    if READ_SYSCALL is None or not Path(f"/proc/{os.getpid()}/syscall").exists():
        pytest.skip("needs Linux /proc/PID/syscall to see the run wait for input")
    assert process.stdin is not None
    # Several chunks' worth: rows are written as they finish, while the run waits
    # for the rest of its input.
    process.stdin.write(b"".join(_row(i) + b"\n" for i in range(40 * CHUNK_SIZE + 3)))
    process.stdin.flush()
    _wait_for(
        lambda: _complete_lines(out) > 0 and _blocked_reading_stdin(process.pid),
        "output rows and then a wait for input",
        process,
    )
    return None


def _feed_everything(process: subprocess.Popen[bytes], out: Path) -> threading.Thread | None:
    """Keep the pipe full from a thread, so the signal lands mid-work, not mid-read."""
    stdin = process.stdin
    assert stdin is not None

    def feed() -> None:
        try:
            for start in range(0, ROWS, CHUNK_SIZE):
                stdin.write(b"".join(_row(i) + b"\n" for i in range(start, start + CHUNK_SIZE)))
            stdin.flush()
        except (BrokenPipeError, ValueError):  # the run stopped reading, as it should
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    _wait_for(lambda: _complete_lines(out) > 10 * CHUNK_SIZE, "output rows", process)
    return feeder


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
    ids=["SIGTERM", "SIGINT"],
)
@pytest.mark.parametrize(
    "feed", [_feed_some_then_stop, _feed_everything], ids=["blocked-on-read", "mid-work"]
)
def test_signal_saves_a_prefix_and_resume_completes_it(
    signum: signal.Signals,
    exit_code: int,
    feed: Callable[[subprocess.Popen[bytes], Path], threading.Thread | None],
    full_input: Path,
    reference: bytes,
    tmp_path: Path,
) -> None:
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            _fake_run("-", "-o", str(out), "--report", str(report)),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        feeder = None
        try:
            feeder = feed(process, out)
            process.send_signal(signum)
            returncode = process.wait(timeout=DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if feeder is not None:  # its next write fails now the reader is gone
                feeder.join(timeout=DEADLINE_S)
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
    messages = stderr_path.read_text(errors="replace")
    assert returncode == exit_code, messages
    assert "Traceback" not in messages and "Exception ignored" not in messages, messages
    assert "interrupted" in messages

    written = out.read_bytes()
    lines = written.splitlines()
    assert lines, "the run was stopped after rows were written; they must be kept"
    assert written.endswith(b"\n"), "the last line is torn"
    for line in lines:
        orjson.loads(line)
    # A prefix of the uninterrupted output, in order, byte for byte.
    assert written == reference[: len(written)]
    figures = orjson.loads(report.read_bytes())

    resumed = subprocess.run(
        [*_fake_run(str(full_input), "-o", str(out), "--resume"), "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert out.read_bytes() == reference

    # The report describes exactly what the output holds, whenever the signal lands,
    # and says it covers only part of the input.
    assert figures["rows"] == len(lines)
    assert figures["interrupted"] == signum.name


def test_closed_stdout_ends_quietly(full_input: Path, tmp_path: Path) -> None:
    """`bizra-batch run big.jsonl | head -1`: one row out, no traceback, and the status
    of a program SIGPIPE ended (141), since rows went undelivered; the report says
    how many were written."""
    stderr_path, report = tmp_path / "stderr.txt", tmp_path / "report.json"
    script = 'set -o pipefail; "$@" 2>"$STDERR_PATH" | head -1; echo "status=${PIPESTATUS[0]}"'
    run = [*CLI, str(full_input), "--engine", "fake", "--report", str(report)]
    done = subprocess.run(
        ["bash", "-c", script, "bash", *run],
        cwd=REPO_ROOT,
        env={**os.environ, "STDERR_PATH": str(stderr_path)},
        capture_output=True,
        timeout=120,
    )
    first, status = done.stdout.splitlines()
    assert orjson.loads(first)["id"] == "q0"
    messages = stderr_path.read_text(errors="replace")
    assert status == b"status=141", messages
    assert "Traceback" not in messages and "Exception ignored" not in messages, messages
    assert "Error" not in messages, messages
    assert messages == ""  # no summary either: the user ended the run on purpose
    figures = orjson.loads(report.read_bytes())
    assert 1 <= figures["rows"] < ROWS
    assert figures["interrupted"] == "SIGPIPE"  # a partial run, and why


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_one_line_not_a_traceback(full_input: Path) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [*CLI, str(full_input), "--engine", "fake", "-q"],
            cwd=REPO_ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.decode() == (
        "bizra-batch: error: stdout: cannot write (No space left on device)\n"
    )


def test_an_interrupted_parquet_run_says_where_its_rows_are(tmp_path: Path) -> None:
    # A Parquet output is assembled at the end; until then its rows are in the parts
    # directory, and "completed rows are saved" alone sent users looking for out.parquet.
    out = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    process = subprocess.Popen(
        _fake_run("-", "-o", str(out)),
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(_jsonl(3 * CHUNK_SIZE))
        process.stdin.flush()

        def sealed() -> bool:
            return parts.is_dir() and any(p.suffix == ".parquet" for p in parts.iterdir())

        _wait_for(sealed, "a sealed part", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert not out.exists()
    assert (
        f"interrupted; completed rows are saved in {parts}/; run again with --resume to "
        f"finish and write {out}"
    ) in stderr.decode()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_file_too_large_is_one_line_and_resume_finishes_it(
    full_input: Path, reference: bytes, tmp_path: Path, suffix: str
) -> None:
    # `ulimit -f` makes writes past 256 KiB fail with EFBIG, as a full disk fails them.
    out = tmp_path / f"out{suffix}"
    capped = subprocess.run(
        ["bash", "-c", 'ulimit -f 256; exec "$@"', "bash", *_fake_run(str(full_input)),
         "-o", str(out), "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert capped.returncode == 1
    assert capped.stderr.decode() == (
        f"bizra-batch: error: {out}: cannot write (File too large); the rows before it are "
        "saved: --resume continues\n"
    )
    resumed = subprocess.run(
        [*_fake_run(str(full_input)), "-o", str(out), "--resume", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    if suffix == ".jsonl":
        assert out.read_bytes() == reference
    else:
        import pyarrow.parquet as pq

        assert pq.read_table(out).column("id").to_pylist() == [f"q{i}" for i in range(ROWS)]
