"""What the CLI handed the core, for tests that check an option reached the config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

import batching.job
import batching.vllm_engine
from batching import EngineConfig, FakeEngine, Report, RunConfig


@dataclass
class Reached:
    """What the CLI handed the core: the run's config and the vLLM engine's.

    The vLLM engine is replaced by the fake one, so a test sees the engine settings a
    config file or env var gave without loading a model. Both are patched where the
    CLI looks them up when it runs (`batching.job.run`,
    `batching.vllm_engine.create_vllm_engine`); a CLI that bound them at import
    would leave the lists empty, and `run_config` / `engine_config` then fail.
    """

    run_configs: list[RunConfig] = field(default_factory=list)
    engine_configs: list[EngineConfig] = field(default_factory=list)

    @classmethod
    def spy(cls, monkeypatch: pytest.MonkeyPatch) -> Reached:
        reached = cls()
        real_run = batching.job.run

        def run_job(config: RunConfig, *args: Any, **kwargs: Any) -> Report:
            reached.run_configs.append(config)
            return real_run(config, *args, **kwargs)

        def create_engine(config: EngineConfig, **_: Any) -> FakeEngine:
            reached.engine_configs.append(config)
            return FakeEngine()

        monkeypatch.setattr(batching.job, "run", run_job)
        monkeypatch.setattr(batching.vllm_engine, "create_vllm_engine", create_engine)
        return reached

    @property
    def run_config(self) -> RunConfig:
        (config,) = self.run_configs
        return config

    @property
    def engine_config(self) -> EngineConfig:
        (config,) = self.engine_configs
        return config
