"""Live pipes: rows that trickle in on stdin are answered while the input is still open.

The producer paces the input (one row every 200 ms, as `tail -f` of a queue would);
the test never sleeps to wait for the run, it reads the run's stdout as it comes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batching.config import InputConfig
from batching.errors import InputError
from batching.jsonl_source import JsonlSource, LiveLines
from batching.prefetch import Arrival, LiveChunks, LiveSupply
from batching.records import Request, Row
from batching.testing import expected_output
from tests.clocks import FakeClock

REPO_ROOT = Path(__file__).resolve().parent.parent
PACE_S = 0.2
# The producer stops after this many rows whatever happens: a run that held rows
# until end of input would print its first row only then, and fail the test.
MAX_ROWS = 150  # 30 s of input: room for a slow interpreter start on a busy box
OUTPUTS_WHILE_OPEN = 3
DEADLINE_S = 60.0


def _row(i: int) -> bytes:
    return orjson.dumps({"id": f"q{i}", "prompt": f"live row {i}"}) + b"\n"


class _Producer(threading.Thread):
    """Writes a row every PACE_S seconds until told to stop or MAX_ROWS are sent."""

    def __init__(self, stdin: object) -> None:
        super().__init__(daemon=True)
        self.stdin = stdin
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        stdin = self.stdin
        assert hasattr(stdin, "write") and hasattr(stdin, "flush") and hasattr(stdin, "close")
        try:
            while self.sent < MAX_ROWS and not self.stop.is_set():
                stdin.write(_row(self.sent))
                stdin.flush()
                self.sent += 1
                self.stop.wait(PACE_S)  # the input's pace, not a wait for the run
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()


def _read_while_open(
    process: subprocess.Popen[bytes], producer: _Producer
) -> tuple[list[bytes], list[int], bytes]:
    """The first output lines, with how many rows had been sent when each arrived,
    then the rest once the producer has stopped and closed the input. A run still
    alive when this fails is killed, not left behind."""
    assert process.stdout is not None
    try:
        lines: list[bytes] = []
        sent_when_read: list[int] = []
        while len(lines) < OUTPUTS_WHILE_OPEN:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            sent_when_read.append(producer.sent)
        producer.stop.set()
        producer.join(timeout=DEADLINE_S)
        rest = process.stdout.read()  # the producer closed the input: the run ends
        process.wait(timeout=DEADLINE_S)
        return lines, sent_when_read, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_slow_pipe_gets_results_before_its_input_ends(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "cli", "run", "-", "-o", "-", "--engine", "fake", "-m", "x"]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        producer = _Producer(process.stdin)
        producer.start()
        lines, sent_when_read, rest = _read_while_open(process, producer)
    messages = stderr_path.read_text(errors="replace")
    assert process.returncode == 0, messages
    assert len(sent_when_read) == OUTPUTS_WHILE_OPEN, messages
    # Results came out while the producer was still sending, not at end of input.
    assert sent_when_read[-1] < MAX_ROWS, sent_when_read
    rows = [orjson.loads(line) for line in [*lines, *rest.splitlines()]]
    assert len(rows) == producer.sent
    for i, row in enumerate(rows):
        assert row["id"] == f"q{i}"
        assert row["output"] == expected_output(f"live row {i}", 256)


class _FifoProducer(_Producer):
    """A `_Producer` that writes into a named pipe (opening it waits for the reader)."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(None)
        self.fifo = fifo

    def run(self) -> None:
        self.stdin = self.fifo.open("wb")
        super().run()


@pytest.mark.slow
def test_a_named_pipe_given_as_input_is_read_live_like_stdin(tmp_path: Path) -> None:
    # `run <(tail -f q.jsonl)` or `mkfifo p; run p`: a pipe by name, not on stdin.
    fifo = tmp_path / "queue.jsonl"
    os.mkfifo(fifo)
    stderr_path = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "cli", "run", str(fifo), "-o", "-", "--engine", "fake"]
    producer = _FifoProducer(fifo)
    producer.start()
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "-m", "x"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            lines, sent_when_read, rest = _read_while_open(process, producer)
        finally:
            if producer.is_alive():  # the run never opened the pipe: free the writer
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    messages = stderr_path.read_text(errors="replace")
    assert process.returncode == 0, messages
    assert len(sent_when_read) == OUTPUTS_WHILE_OPEN, messages
    assert sent_when_read[-1] < MAX_ROWS, sent_when_read
    rows = [orjson.loads(line) for line in [*lines, *rest.splitlines()]]
    assert [row["id"] for row in rows] == [f"q{i}" for i in range(producer.sent)]


@pytest.mark.slow
def test_on_invalid_abort_refuses_a_named_pipe_instead_of_hanging(tmp_path: Path) -> None:
    # The check reads the input once and the run again; a pipe opened a second time
    # would wait for a writer forever. No writer here: a refusal must not open it.
    fifo = tmp_path / "queue.jsonl"
    os.mkfifo(fifo)
    child = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(fifo), "-m", "x", "--engine", "fake",
         "--on-invalid", "abort"],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert child.returncode == 2, child.stderr
    assert str(fifo) in child.stderr and "pipe it to stdin" in child.stderr
    assert child.stdout == ""


# -- the pieces -------------------------------------------------------------------


@contextlib.contextmanager
def _pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        for fd in (read_fd, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_live_lines_knows_whether_the_next_line_is_here() -> None:
    with _pipe() as (r, w):
        lines = LiveLines(r)
        os.write(w, b'{"a": 1}\n{"b": 2}\n{"c"')
        assert lines.readline() == b'{"a": 1}\n'
        assert lines.ready()
        assert lines.readline() == b'{"b": 2}\n'
        assert not lines.ready()  # half a line is not a line
        os.write(w, b": 3}\nno newline at the end")
        os.close(w)
        assert lines.readline() == b'{"c": 3}\n'
        assert lines.readline() == b"no newline at the end"
        assert lines.readline() == b""
        assert lines.ready()


def test_live_lines_hands_an_over_long_line_out_in_pieces() -> None:
    with _pipe() as (r, w):
        lines = LiveLines(r)
        os.write(w, b"x" * 10 + b"\nshort\n" + b"y" * 7)
        os.close(w)
        assert lines.readline(4) == b"xxxx"
        assert lines.readline(4) == b"xxxx"
        assert lines.readline(4) == b"xx\n"
        assert lines.readline(4) == b"shor"
        assert lines.readline() == b"t\n"
        assert lines.readline(4) == b"yyyy"
        assert lines.readline(4) == b"yyy"


def _next_in_thread(chunks: Iterator[list[Row]]) -> list[Row]:
    """next(chunks), failing instead of hanging if it blocks for good."""
    got: queue.Queue[list[Row]] = queue.Queue()
    threading.Thread(target=lambda: got.put(next(chunks)), daemon=True).start()
    try:
        return got.get(timeout=DEADLINE_S)
    except queue.Empty:
        pytest.fail("the reader held the rows waiting for a full chunk")


def test_jsonl_source_hands_over_what_is_there_when_the_pipe_is_quiet() -> None:
    with _pipe() as (r, w):
        source = JsonlSource(InputConfig(path="-"), "<stdin>", LiveLines(r), None, None, 1 << 20)
        chunks = source.chunks()
        os.write(w, _row(0) + b"\n" + _row(1) + b"not json\n")
        assert [row.index for row in _next_in_thread(chunks)] == [0, 1, 2]
        os.write(w, _row(3))
        assert [row.id for row in _next_in_thread(chunks)] == ["q3"]
        os.close(w)
        assert next(chunks, None) is None


def _request(i: int) -> Request:
    return Request(index=i, id=i, line=i + 1, prompt=f"p{i}")


def _live(chunk_size: int = 4) -> tuple[queue.Queue[Arrival], LiveChunks, FakeClock]:
    clock = FakeClock()
    arrivals: queue.Queue[Arrival] = queue.Queue()
    return (
        arrivals,
        LiveChunks(arrivals, chunk_size=chunk_size, max_wait_s=0.05, clock=clock),
        clock,
    )


def test_a_partial_chunk_is_handed_over_once_its_first_row_has_waited() -> None:
    arrivals, chunks, clock = _live()
    assert chunks.poll(wait=False) == []
    arrivals.put((0.0, [_request(0)]))
    clock.now = 0.01
    arrivals.put((0.01, [_request(1)]))
    assert chunks.poll(wait=False) == []  # too early: more rows may come to join them
    clock.now = 0.05
    assert [row.index for row in chunks.poll(wait=False) or []] == [0, 1]
    assert chunks.poll(wait=False) == []


def test_a_full_chunk_is_handed_over_at_once_and_the_rest_waits() -> None:
    arrivals, chunks, _ = _live(chunk_size=2)
    arrivals.put((0.0, [_request(i) for i in range(5)]))
    assert [row.index for row in chunks.poll(wait=False) or []] == [0, 1]
    assert [row.index for row in chunks.poll(wait=False) or []] == [2, 3]
    assert chunks.poll(wait=False) == []


def test_waiting_blocks_until_rows_come_and_the_end_flushes_the_rest() -> None:
    arrivals, chunks, clock = _live()
    threading.Thread(target=lambda: arrivals.put((0.0, [_request(0)])), daemon=True).start()
    clock.now = 1.0  # the row has waited long enough once it is there
    assert [row.index for row in chunks.poll(wait=True) or []] == [0]
    arrivals.put((1.0, [_request(1)]))
    arrivals.put((1.0, LiveChunks.END))
    assert [row.index for row in chunks.poll(wait=True) or []] == [1]
    assert chunks.poll(wait=True) is None


def test_a_reader_error_comes_after_the_rows_read_before_it() -> None:
    class Failing:
        def chunks(self) -> Iterator[list[Row]]:
            yield [_request(0)]
            raise InputError("<stdin>: cannot read")

        def estimated_total_rows(self) -> int | None:
            return None

    chunks = LiveSupply(Failing(), chunk_size=8, max_wait_s=10.0).chunks()
    try:
        assert [row.index for row in next(chunks)] == [0]
        with pytest.raises(InputError, match="cannot read"):
            next(chunks)
    finally:
        chunks.close()
