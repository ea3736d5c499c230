"""Shared fixtures: the tiny local model, and one real vLLM engine per test session.

Tests that use `vllm_engine` (or start vLLM some other way) are marked
`@pytest.mark.vllm`, and tests that take a second or more (Ray, subprocesses) are
marked `@pytest.mark.slow`; `pytest -m "not vllm and not slow"` runs the rest in seconds.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from batching.config import DEFAULT_MAX_LINE_BYTES, EngineConfig, InputConfig
from batching.readers import RowSource, open_source
from samples.build_tiny_model import ensure_tiny_model
from tests.reading_helpers import Open

if TYPE_CHECKING:
    from batching.engines.vllm import VllmEngine

# Helpers that assert: pytest shows the values of a failing assert there too (it
# rewrites only test modules and conftest unless told).
pytest.register_assert_rewrite("tests.engine_helpers", "tests.output_helpers")

# CI runs the same examples every time (a red CI must mean a changed behaviour, not
# a new random draw) and never fails on a slow example on a loaded 2-core box;
# locally, hypothesis keeps exploring new inputs.
# No deadline anywhere: an example that took 200 ms on a box busy with other work says
# nothing about our code (one failed test_id_registry that way), and .ci/run may not
# set CI.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the `closes_vllm` tests after every other test, in their own order.

    Closing an in-process vLLM engine tears down vLLM's process group, which the
    session's `vllm_engine` shares: any test that ran after one of them and used the
    session engine found it dead ("the engine died 4 times in a row"), so the suite
    passed only in the order the files happen to sort in.
    """
    items.sort(key=lambda item: item.get_closest_marker("closes_vllm") is not None)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Path of the tiny random model, built on first use (a few seconds)."""
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_engine_config(tiny_model: Path) -> EngineConfig:
    """Engine settings for the tiny model that keep tests fast on a CPU.

    float32: 2.7x the throughput of the bfloat16 vLLM picks for "auto" on CPUs
    without AVX-512 BF16. enforce_eager: start-up in ~3 s instead of ~15 s of
    torch.compile, which the tests never get back.
    """
    return EngineConfig(model=str(tiny_model), dtype="float32", extra={"enforce_eager": True})


@pytest.fixture(scope="session")
def vllm_engine(tiny_engine_config: EngineConfig) -> Iterator[VllmEngine]:
    """One real engine on the tiny model for the whole session; tests must drain it."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/setup installs it)")
    from batching.engines.vllm import VllmEngine, create_vllm_engine

    # The tiny model needs little KV cache; allocating the default takes seconds.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = create_vllm_engine(tiny_engine_config)
    assert isinstance(engine, VllmEngine)
    yield engine
    engine.close()


@pytest.fixture(params=["file", "stdin"])
def open_jsonl(request: pytest.FixtureRequest, tmp_path: Path) -> Open:
    """open(data, **config) for JSONL bytes, as a file or as stdin: same rows either way."""

    def open_(
        data: bytes, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, **config: Any
    ) -> RowSource:
        if request.param == "stdin":
            cfg = InputConfig(path="-", **config)
            return open_source(cfg, stdin=io.BytesIO(data), max_line_bytes=max_line_bytes)
        path = tmp_path / "prompts.jsonl"
        path.write_bytes(data)
        return open_source(InputConfig(path=str(path), **config), max_line_bytes=max_line_bytes)

    return open_
