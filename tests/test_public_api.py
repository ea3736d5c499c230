"""The package's public face: `import batching` gives the API, and stays cheap."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest

import batching
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("name", batching.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(batching, name) is not None


def test_public_names_are_listed_once() -> None:
    assert len(set(batching.__all__)) == len(batching.__all__)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from batching import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(batching.__all__)


def test_submodules_stay_reachable_under_their_own_names() -> None:
    import batching.validate

    assert isinstance(batching.validate, types.ModuleType)
    assert batching.validate_input is batching.validate.validate


def test_the_public_api_runs_a_job_without_a_model(tmp_path: Path) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"id": "a", "prompt": "abc"}\n')
    config = batching.RunConfig(
        batching.InputConfig(path=str(source)), batching.OutputConfig(path=str(target))
    )
    report = batching.run(config, batching.FakeEngine)
    assert (report.rows, report.rows_ok) == (1, 1)
    assert orjson.loads(target.read_bytes())["output"] == "cba"


@pytest.mark.slow
def test_importing_the_package_loads_neither_vllm_torch_nor_ray() -> None:
    code = (
        "import sys, batching\n"
        "print(sorted(m for m in ('vllm', 'torch', 'ray') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
