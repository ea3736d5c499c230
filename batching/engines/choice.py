"""Which engine a run gets: the choice (vllm, openai, fake, sim) and its settings
turned into an `EngineFactory`, with the checks that belong to that choice.

`run` and `bench` both start their engine through `engine_factory`, so an engine
added here is one both commands can offer. Every heavy engine module (vLLM and
torch, httpx, Ray) is imported only when its engine is chosen or started.

>>> factory = engine_factory(EngineChoice.fake, EngineConfig(model="fake"))
>>> type(factory()).__name__
'FakeEngine'
"""

from __future__ import annotations

import os
from enum import Enum
from typing import TYPE_CHECKING

from batching.config import EngineConfig
from batching.engine import Engine, EngineFactory
from batching.errors import UsageError
from batching.ray.runner import LOCAL as RAY_LOCAL
from batching.ray.runner import RayOptions, require_ray

if TYPE_CHECKING:
    from batching.engines.openai import OpenAIConfig

__all__ = [
    "RAY_LOCAL",
    "EngineChoice",
    "check_engine_task",
    "checked_model",
    "engine_factory",
    "ray_options",
    "remote_config",
]


class EngineChoice(str, Enum):
    """vllm: the model loads here; openai: a running OpenAI-compatible server;
    fake: no model, each output its prompt reversed; sim: fake outputs at an
    accelerator's pace."""

    vllm = "vllm"
    openai = "openai"
    fake = "fake"
    sim = "sim"

    @property
    def needs_model(self) -> bool:
        """Whether the engine runs a model (fake and sim run none).

        >>> EngineChoice.sim.needs_model
        False
        """
        return self in (EngineChoice.vllm, EngineChoice.openai)


def check_engine_task(choice: EngineChoice, task: str, ray: str | None = None) -> None:
    """Refuse a pooling task on an engine that only generates, before anything starts.

    >>> check_engine_task(EngineChoice.sim, "embed")
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --task embed runs on --engine vllm (or fake); --engine sim ...
    """
    if task == "generate":
        return
    if choice not in (EngineChoice.vllm, EngineChoice.fake):
        raise UsageError(
            f"--task {task} runs on --engine vllm (or fake); --engine {choice.value} only generates"
        )
    if ray is not None:
        raise UsageError(f"--task {task} does not run on Ray yet; drop --ray")


def checked_model(model: str | None, choice: EngineChoice, *, local: bool = True) -> str:
    """The model, refused up front where a start would only fail after seconds of
    loading: missing, or a local path that is not there (Hugging Face then says the
    name is not a valid repo id). `local`: the engine starts on this machine (not
    on a remote Ray cluster, whose nodes hold their own paths).

    >>> checked_model(None, EngineChoice.fake)
    'fake'
    >>> checked_model("org/name", EngineChoice.vllm)
    'org/name'
    >>> checked_model("./no-such-model", EngineChoice.vllm)
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --model ./no-such-model: no such file or directory
    """
    if model is None:
        if not choice.needs_model:
            return str(choice.value)
        raise UsageError("--model is required: a model name or local path (or BIZRA_BATCH_MODEL)")
    # Only a path can start so, or have two slashes; a Hugging Face id is `name` or
    # `org/name`, and a URI (s3://...) vLLM loads itself.
    looks_local = "://" not in model and (
        model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    )
    if (
        choice is EngineChoice.vllm
        and local
        and looks_local
        and not os.path.exists(os.path.expanduser(model))
    ):
        raise UsageError(f"--model {model}: no such file or directory")
    return model


def remote_config(
    choice: EngineChoice,
    base_url: str | None,
    api_key_env: str | None,
    *,
    model: str,
    concurrency: int = 16,
    timeout_s: float = 600.0,
    max_retries: int = 3,
    max_model_len: int | None = None,
) -> OpenAIConfig | None:
    """The server settings `--engine openai` needs; None for any other engine.

    The API key is read from the env var `api_key_env` names, never passed itself.

    >>> remote_config(EngineChoice.fake, None, None, model="fake") is None
    True
    >>> remote_config(EngineChoice.openai, None, None, model="m")
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --engine openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1
    """
    if choice is not EngineChoice.openai:
        if base_url is not None:
            raise UsageError("--base-url is for --engine openai")
        return None
    if not base_url:
        raise UsageError(
            "--engine openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1"
        )
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {api_key_env}: that env var is not set or empty")
    # Imported here: httpx is not needed for --help or the other engines.
    from batching.engines.openai import OpenAIConfig

    return OpenAIConfig(
        base_url=base_url,
        model=model,
        api_key=api_key,
        concurrency=concurrency,
        timeout_s=timeout_s,
        max_retries=max_retries,
        max_model_len=max_model_len,
        tokenizer_dir=model if os.path.isdir(model) else None,
    )


def engine_factory(
    choice: EngineChoice,
    config: EngineConfig,
    *,
    remote: OpenAIConfig | None = None,
    verbose: bool = False,
) -> EngineFactory:
    """What starts the chosen engine; nothing heavy is imported until it is called.

    `remote` is `remote_config`'s answer (required for openai); `verbose` lets
    vLLM log as it starts.

    >>> engine_factory(EngineChoice.sim, EngineConfig(model="sim", max_num_seqs=8))().max_num_seqs
    8
    """
    if choice is EngineChoice.fake:
        from batching.testing import FakeEngine

        return FakeEngine
    if choice is EngineChoice.sim:
        from batching.engines.sim import sim_engine_factory

        return sim_engine_factory(config)
    if choice is EngineChoice.openai:
        if remote is None:
            raise UsageError(
                "--engine openai needs --base-url, e.g. --base-url http://127.0.0.1:8000/v1"
            )
        server = remote

        def create_remote() -> Engine:
            from batching.engines.openai import create_openai_engine

            return create_openai_engine(server)

        return create_remote

    def create() -> Engine:
        # Imported when the engine starts, so `--help` and usage errors never load
        # vLLM and torch (seconds of start-up).
        from batching.engines.vllm import create_vllm_engine

        return create_vllm_engine(config, verbose=verbose)

    return create


def ray_options(
    address: str | None,
    replicas: int | None,
    choice: EngineChoice,
    tensor_parallel_size: int = 1,
    *,
    verbose: bool = False,
) -> RayOptions | None:
    """Where the engine replicas run on Ray; None (one engine, here) without an
    address. A vLLM replica asks Ray for `tensor_parallel_size` GPUs, the others none.

    >>> ray_options(None, None, EngineChoice.fake) is None
    True
    >>> ray_options(None, 2, EngineChoice.fake)
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --replicas needs --ray; without it the run has one engine
    """
    if address is None:
        if replicas is not None:
            raise UsageError("--replicas needs --ray; without it the run has one engine")
        return None
    require_ray()  # the optional extra, with its install hint if it is missing
    gpus = float(tensor_parallel_size) if choice is EngineChoice.vllm else 0.0
    return RayOptions(address=address, replicas=replicas, gpus_per_replica=gpus, verbose=verbose)
