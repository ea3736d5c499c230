"""Driving an engine in tests: an `Engine` stepped directly, or `run --engine openai`
against a server."""

from __future__ import annotations

from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from batching.engine import Engine, EngineOutput
from cli.app import app

__all__ = ["drain", "run_on_server"]


def drain(engine: Engine) -> dict[int, EngineOutput]:
    """Step the engine until nothing is unfinished: its outputs by key, each key once."""
    outputs: dict[int, EngineOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            assert output.key not in outputs
            outputs[output.key] = output
    return outputs


def run_on_server(
    source: Path, base_url: str, *options: str, env: dict[str, str] | None = None
) -> Result:
    """`run SOURCE --engine openai --base-url BASE_URL OPTIONS...`, in this process."""
    command = ["run", str(source), "--engine", "openai", "--base-url", base_url, *options]
    return CliRunner().invoke(app, command, env=env)
