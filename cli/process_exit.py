"""Ending the process once a command is done, without the interpreter's slow teardown.

After vLLM (with torch and transformers) has been imported, Python's own
finalisation, tearing down some thousands of modules, took 1.9 s of every run on
the 2-core box (measured: from the command's return to the process's end, against
0.03 s for the same run ending with `os._exit`). A shell pipeline or a cron job
waits for that time and gets nothing for it.

So `exit_process` does what finalisation does that anybody can see: it runs the
`atexit` handlers (Ray's shutdown, multiprocessing's reaping of child processes,
logging's flush, `weakref.finalize` callbacks), flushes stdout and stderr, then
ends the process with the command's exit code. It keeps the normal exit where the
shortcut could lose something: a non-daemon thread still running (the interpreter
would wait for it), or an exit that is not a plain status code.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

__all__ = ["exit_process", "teardown_is_slow"]

# Modules whose import makes finalisation slow; without them a normal exit is quick
# (`bizra-batch validate`, `--help`) and the shortcut is not worth taking.
_HEAVY_MODULES = ("vllm", "torch")


def teardown_is_slow(modules: dict[str, object] | None = None) -> bool:
    """Whether the interpreter's finalisation would be slow: vLLM or torch is loaded.

    >>> teardown_is_slow({"json": object()}), teardown_is_slow({"vllm": object()})
    (False, True)
    """
    loaded = sys.modules if modules is None else modules
    return any(name in loaded for name in _HEAVY_MODULES)


def _other_threads_running() -> bool:
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())


def exit_process(code: object) -> None:
    """End the process with `code` (a `SystemExit` code) as quickly as is safe.

    Returns (for the caller to exit normally) when the shortcut is not safe or not
    worth it; otherwise it does not return.
    """
    if code is None:
        code = 0
    if not isinstance(code, int) or not teardown_is_slow() or _other_threads_running():
        return
    # Not in the public docs, but what the interpreter itself calls at exit, and
    # stable since Python 3.0; it runs every handler once, in reverse order.
    atexit._run_exitfuncs()
    streams = [sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]
    for stream in dict.fromkeys(s for s in streams if s is not None):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (BrokenPipe), or closed already
            if stream in (sys.stdout, sys.__stdout__) and code == 0:
                code = 120  # what the interpreter's own exit gives when this flush fails
    os._exit(code)
