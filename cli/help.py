"""`--help` with each option under its panel's heading, in plain text.

The app's help is plain (no rich boxes: it greps, and reads the same in a log), and
Typer's plain formatter ignores `rich_help_panel`, listing every option in one
column. This command class lays the panels out as Click sections instead.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

__all__ = ["OTHER", "PanelledCommand", "panels"]

# The heading of options declared without a panel (--help itself).
OTHER = "Options"


def panels(command: Any, ctx: Any) -> dict[str, list[tuple[str, str]]]:
    """The command's help records by panel, panels in the order they first appear;
    arguments first, options without a panel last.

    >>> from cli.app import app
    >>> import typer
    >>> command = typer.main.get_command(app).commands["validate"]
    >>> list(panels(command, command.make_context("validate", ["in.jsonl"])))[:2]
    ['Arguments', 'Model (optional: prompt token statistics, prompts too long for it)']
    """
    grouped: dict[str, list[tuple[str, str]]] = {"Arguments": []}
    other: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            grouped["Arguments"].append(record)
            continue
        panel = getattr(param, "rich_help_panel", None)
        if panel is None:
            other.append(record)
        else:
            grouped.setdefault(panel, []).append(record)
    if other:
        grouped[OTHER] = other
    return {name: records for name, records in grouped.items() if records}


class PanelledCommand(TyperCommand):
    """A Typer command whose plain `--help` groups options by `rich_help_panel`."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        for name, records in panels(self, ctx).items():
            with formatter.section(name):
                formatter.write_dl(records)
