"""A throwaway redis-server for the worker's tests: a free port on 127.0.0.1, a temp
directory, no persistence; stopped when the fixture ends.

`scripts/setup` installs redis-server (Debian's package) and redis-py; without either
the tests that need them skip with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def redis_server(directory: Path, password: str | None = None) -> Iterator[str]:
    """Start redis-server; yield its URL (db 0, with `password` if one is required).
    Ready when it says so on stdout."""
    binary = shutil.which("redis-server")
    assert binary is not None
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice",
         *(["--requirepass", password] if password else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(seen))
        auth = f":{password}@" if password else ""
        yield f"redis://{auth}127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
