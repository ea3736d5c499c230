"""The exit-code policy every command shares: which failure gets which code."""

from __future__ import annotations

import signal

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
