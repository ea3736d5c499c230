"""Engine choice: the model check, the server settings and the factory each engine
gets, shared by `run` and `bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from batching.config import EngineConfig
from batching.engine_choice import (
    EngineChoice,
    checked_model,
    engine_factory,
    ray_options,
    remote_config,
)
from batching.errors import UsageError
from batching.sim_engine import SimEngine
from batching.testing import FakeEngine


@pytest.mark.parametrize("choice", [EngineChoice.fake, EngineChoice.sim])
def test_engines_without_a_model_are_named_for_themselves(choice: EngineChoice) -> None:
    assert checked_model(None, choice) == choice.value


@pytest.mark.parametrize("choice", [EngineChoice.vllm, EngineChoice.openai])
def test_engines_with_a_model_need_one(choice: EngineChoice) -> None:
    with pytest.raises(UsageError) as refused:
        checked_model(None, choice)
    assert str(refused.value) == (
        "--model is required: a model name or local path (or BIZRA_BATCH_MODEL)"
    )


def test_a_missing_local_path_is_refused_only_where_vllm_loads_it_here(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-model")
    with pytest.raises(UsageError) as refused:
        checked_model(missing, EngineChoice.vllm)
    assert str(refused.value) == f"--model {missing}: no such file or directory"
    # A remote Ray cluster's nodes have their own disks; a server names its own models.
    assert checked_model(missing, EngineChoice.vllm, local=False) == missing
    assert checked_model(missing, EngineChoice.openai) == missing


def test_each_choice_gets_its_own_engine() -> None:
    config = EngineConfig(model="m", max_num_seqs=4)
    assert isinstance(engine_factory(EngineChoice.fake, config)(), FakeEngine)
    sim = engine_factory(EngineChoice.sim, config)()
    assert isinstance(sim, SimEngine) and sim.max_num_seqs == 4
    # vLLM is not imported until the factory is called.
    assert callable(engine_factory(EngineChoice.vllm, config))


def test_openai_needs_its_server_settings() -> None:
    with pytest.raises(UsageError) as refused:
        engine_factory(EngineChoice.openai, EngineConfig(model="m"))
    assert str(refused.value) == (
        "--engine openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1"
    )


def test_the_api_key_comes_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    remote = remote_config(
        EngineChoice.openai, "http://127.0.0.1:8000", "MY_KEY", model="served", concurrency=4
    )
    assert remote is not None
    assert (remote.api_key, remote.model, remote.concurrency) == ("sk-test", "served", 4)
    assert remote.tokenizer_dir is None  # not a local directory
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(UsageError) as refused:
        remote_config(EngineChoice.openai, "http://127.0.0.1:8000", "MY_KEY", model="served")
    assert str(refused.value) == "--api-key-env MY_KEY: that env var is not set or empty"


def test_a_base_url_is_only_for_openai() -> None:
    with pytest.raises(UsageError) as refused:
        remote_config(EngineChoice.vllm, "http://127.0.0.1:8000", None, model="m")
    assert str(refused.value) == "--base-url is for --engine openai"


def test_replicas_need_ray() -> None:
    assert ray_options(None, None, EngineChoice.vllm) is None
    with pytest.raises(UsageError) as refused:
        ray_options(None, 2, EngineChoice.vllm)
    assert str(refused.value) == "--replicas needs --ray; without it the run has one engine"
