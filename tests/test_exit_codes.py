"""The exit-code policy every command shares: which failure gets which code."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from batching.errors import EngineStartError, InputError, OutputError, UsageError
from batching.interrupts import Interrupted
from cli.exit_codes import exit_code_for, exit_on_error, finished_code, is_interrupted


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UsageError("bad flag"), 2),
        (InputError("in.jsonl: no such file"), 2),
        (OutputError("out.jsonl exists"), 2),
        (EngineStartError("no such model"), 1),
        (RuntimeError("the engine died"), 1),
        (Interrupted(signal.SIGINT), 130),
        (Interrupted(signal.SIGTERM), 143),
        (BrokenPipeError(), 141),
    ],
)
def test_each_failure_has_its_documented_code(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_a_finished_command_exits_1_only_for_failed_rows() -> None:
    assert (finished_code(0), finished_code(1)) == (0, 1)
    assert [is_interrupted(c) for c in (0, 1, 2, 130, 141, 143)] == [False] * 3 + [True] * 3


def test_an_error_inside_becomes_one_line_and_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped, exit_on_error():
        raise OutputError("out.jsonl: exists; pass --overwrite or --resume")
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == (
        "bizra-batch: error: out.jsonl: exists; pass --overwrite or --resume\n"
    )


def test_other_exceptions_are_caught_only_when_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped, exit_on_error(ValueError):
        raise ValueError("prompt too long")
    assert stopped.value.exit_code == 1
    assert capsys.readouterr().err == "bizra-batch: error: prompt too long\n"
    with pytest.raises(KeyError), exit_on_error(ValueError):
        raise KeyError("not ours")


# The process end after a heavy run skips the interpreter's teardown (cli/process_exit);
# what a user sees must not change: the status, every byte of stdout, atexit work.
_FAST_EXIT = """
import atexit, sys, types
sys.modules["torch"] = types.ModuleType("torch")  # what makes teardown slow
atexit.register(lambda: open(sys.argv[1], "w").write("ran"))
from cli.process_exit import exit_process
sys.stdout.write("x" * 200_000)  # more than any pipe buffer holds
exit_process(int(sys.argv[2]))
print("normal exit")
"""


@pytest.mark.parametrize("status", [0, 1, 2])
def test_the_quick_exit_keeps_status_output_and_atexit_work(tmp_path: Path, status: int) -> None:
    marker = tmp_path / "atexit"
    done = subprocess.run(
        [sys.executable, "-c", _FAST_EXIT, str(marker), str(status)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == status
    assert done.stdout == "x" * 200_000  # flushed, and it did not return
    assert marker.read_text() == "ran"


def test_the_quick_exit_waits_for_a_running_thread() -> None:
    code = _FAST_EXIT.replace(
        "exit_process(",
        "import threading, time; threading.Thread(target=time.sleep, args=(0.2,)).start(); "
        "exit_process(",
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "/dev/null", "3"], capture_output=True, text=True, check=False
    )
    assert done.stdout.endswith("normal exit\n")  # returned: the interpreter waits
