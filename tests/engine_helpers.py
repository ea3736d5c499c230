"""Driving an `Engine` in tests the way the pipeline does, without the pipeline."""

from __future__ import annotations

from batching.engine import Engine, EngineOutput

__all__ = ["drain"]


def drain(engine: Engine) -> dict[int, EngineOutput]:
    """Step the engine until nothing is unfinished: its outputs by key, each key once."""
    outputs: dict[int, EngineOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            assert output.key not in outputs
            outputs[output.key] = output
    return outputs
