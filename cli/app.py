"""The `bizra-batch` command: a Typer app with one module per subcommand."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from cli import bench as bench_command
from cli import run as run_command
from cli import validate as validate_command
from cli.config_file import CONTEXT_SETTINGS
from cli.help import PanelledCommand

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


app.command(
    "run",
    short_help="Run prompts through a model: one result row per input row, in order.",
    no_args_is_help=True,
    context_settings=CONTEXT_SETTINGS,
    cls=run_command.RunCommand,
)(run_command.run)
app.command(
    "validate",
    short_help="Check an input file without running the model.",
    no_args_is_help=True,
    context_settings=CONTEXT_SETTINGS,
    cls=PanelledCommand,
)(validate_command.validate)
app.command(
    "bench",
    short_help="Measure batching on the real engine: serial, batch sizes, and run.",
    context_settings=CONTEXT_SETTINGS,
    cls=PanelledCommand,
)(bench_command.bench)


def main() -> None:
    """Console-script entry point."""
    app()
