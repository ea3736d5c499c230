"""The `bizra-batch` command: a Typer app with one module per subcommand."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from cli import bench as bench_command
from cli import run as run_command
from cli import validate as validate_command
from cli import worker as worker_command
from cli.config_file import CONTEXT_SETTINGS
from cli.help import PanelledCommand
from cli.process_exit import exit_process

__all__ = ["app", "main"]

HELP = """Offline batch inference for LLMs on vLLM.

Streams a JSONL or Parquet file (or stdin) of prompts through vLLM's offline engine
and writes exactly one result row per input row, in input order.

Exit codes: 0 every row ok; 1 some rows failed (their error records are in the
output); 2 usage error or unreadable input; 130/143 interrupted (SIGINT/SIGTERM).
"""

app = typer.Typer(
    name="bizra-batch",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _package_version() -> str:
    try:
        return version("bizra-batch")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bizra-batch {_package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Offline batch inference for LLMs on vLLM."""


def _register(
    name: str,
    function: Callable[..., None],
    short_help: str,
    command_class: type[typer.core.TyperCommand],
    *,
    no_args_is_help: bool = True,
) -> None:
    """Add a subcommand; every one reads its options from BIZRA_BATCH_* env vars too."""
    app.command(
        name,
        short_help=short_help,
        no_args_is_help=no_args_is_help,
        context_settings=CONTEXT_SETTINGS,
        cls=command_class,
    )(function)


_register(
    "run",
    run_command.run,
    "Run prompts through a model: one result row per input row, in order.",
    run_command.RunCommand,
)
_register(
    "validate",
    validate_command.validate,
    "Check an input file without running the model.",
    PanelledCommand,
)
# `bench` with no arguments measures synthetic prompts.
_register(
    "bench",
    bench_command.bench,
    "Measure batching on the real engine: serial, batch sizes, and run.",
    PanelledCommand,
    no_args_is_help=False,
)
# A long-running service over a Redis stream; redis-py is the `redis` extra.
_register(
    "worker",
    worker_command.worker,
    "Serve requests from a Redis stream; results written back under their ids.",
    PanelledCommand,
)


def main() -> None:
    """Console-script entry point."""
    try:
        app()  # standalone: always ends in SystemExit with the status
    except SystemExit as done:
        exit_process(done.code)  # returns only where a normal exit is needed
        raise
