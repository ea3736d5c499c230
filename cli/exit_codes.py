"""The exit codes of every command, and which failure gets which (README "Exit codes").

0 done and every row ok; 1 some rows failed, or the command stopped on a runtime
error; 2 a usage error or unreadable input (nothing ran); 128 + N stopped by signal
N (130 SIGINT, 143 SIGTERM); 141 stdout closed early, as SIGPIPE would end `cat`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from batching.errors import BatchError
from batching.interrupts import Interrupted
from cli.console import print_error, stderr_console

__all__ = [
    "CLOSED_STDOUT",
    "FAILED",
    "OK",
    "USAGE",
    "exit_code_for",
    "exit_on_error",
    "finished_code",
    "is_interrupted",
]

OK = 0
FAILED = 1
USAGE = 2
# 128 + SIGPIPE's 13: rows went undelivered, so not 0.
CLOSED_STDOUT = 128 + signal.SIGPIPE


def exit_code_for(exc: BaseException) -> int:
    """The code a command exits with when `exc` stopped it.

    >>> from batching.errors import UsageError
    >>> exit_code_for(UsageError("--n: expected an integer >= 1"))
    2
    >>> exit_code_for(Interrupted(signal.SIGTERM)), exit_code_for(BrokenPipeError())
    (143, 141)
    >>> exit_code_for(RuntimeError("the engine died"))
    1
    """
    if isinstance(exc, BatchError | Interrupted):
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return CLOSED_STDOUT
    return FAILED


def finished_code(failed: int) -> int:
    """The code of a command that went through every row: 1 if any failed (or was
    invalid), else 0.

    >>> finished_code(0), finished_code(3)
    (0, 1)
    """
    return FAILED if failed else OK


def is_interrupted(code: int) -> bool:
    """Whether `code` says a signal stopped the command (a closed stdout included).

    >>> is_interrupted(130), is_interrupted(2)
    (True, False)
    """
    return code >= 128


@contextmanager
def exit_on_error(*also: type[Exception], debug: bool = False) -> Iterator[None]:
    """A `BatchError` (or one of `also`) raised inside ends the command: one line on
    stderr and its exit code (`also`: 1). `debug` prints the traceback first.

    >>> with exit_on_error():
    ...     pass  # build the config; a UsageError here exits 2
    """
    caught: tuple[type[Exception], ...] = (BatchError, *also)
    try:
        yield
    except caught as exc:
        if debug:
            stderr_console().print_exception()
        print_error(str(exc))
        raise typer.Exit(exit_code_for(exc)) from None
