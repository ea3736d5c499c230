"""Errors that end a run before or outside any single row, with their exit codes.

A row's own failure is never one of these: it becomes an error record in the output
(`records.RowError`) and the run goes on.
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "CacheCorruptError",
    "CacheFileError",
    "EngineStartError",
    "InputError",
    "OutputError",
    "UsageError",
]


class BatchError(Exception):
    """A failure the CLI reports as one line on stderr, exiting with `exit_code`."""

    exit_code = 1


class UsageError(BatchError):
    """The command line or configuration is wrong; nothing was run."""

    exit_code = 2


class InputError(UsageError):
    """The input cannot be read at all (missing, unreadable, wrong format).

    The message names the file and, where it applies, the line and field.
    """


class OutputError(UsageError):
    """The output cannot be written as asked (exists, unwritable, unknown format)."""


class OutputWriteError(BatchError):
    """Writing the output failed mid-run (a full disk, an I/O error); the rows
    written before it are saved."""


class EngineStartError(BatchError):
    """The engine could not start (no such model, a bad engine argument); no row ran."""


class CacheFileError(UsageError):
    """The `--cache` file is not a result cache of ours (not SQLite, another program's
    database, another schema version); nothing was run."""


class CacheCorruptError(BatchError):
    """The result cache turned out damaged during a run; the rows written so far are
    saved, and no damaged result was used."""
