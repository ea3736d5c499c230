"""LoRA adapters a run loads (`--lora NAME=PATH`), and the engine settings they need.

A row names its adapter (`adapter` field, or an OpenAI body's `model`); rows without
one run on the base model. `LoraAdapter.parse` checks an option once, when the
config is built: a local path must be a PEFT adapter directory (it holds an
`adapter_config.json` of type LORA), so a wrong path is a usage error before the
engine spends seconds starting. Anything else that is not a local path (a Hugging
Face id, a URI) is passed to vLLM, which resolves it itself.

>>> adapters = LoraAdapters.parse(["sql=org/sql-lora"])
>>> adapters.names, adapters.llm_kwargs()["max_loras"]
(('sql',), 2)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batching.errors import UsageError
from batching.sampling_rules import describe

__all__ = ["ADAPTER_FIELD", "LoraAdapter", "LoraAdapters", "adapter_problem"]

ADAPTER_FIELD = "adapter"
"""The input field that names a row's adapter."""

# vLLM 0.32 preallocates LoRA slots only of these ranks (config/lora.py, MaxLoRARanks).
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's own default, for adapters whose rank cannot be read here (remote ones).
_DEFAULT_RANK = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """One adapter: the name rows use, where it is, and its rank (None: unknown).

    >>> LoraAdapter.parse("sql=org/sql-lora")
    LoraAdapter(name='sql', path='org/sql-lora', rank=None)
    """

    name: str
    path: str
    rank: int | None = None

    @classmethod
    def parse(cls, option: str) -> LoraAdapter:
        """An adapter from `NAME=PATH`; a usage error names what is wrong with it.

        >>> LoraAdapter.parse("sql")
        Traceback (most recent call last):
        ...
        batching.errors.UsageError: --lora sql: expected NAME=PATH, e.g. --lora sql=./sql-lora
        >>> LoraAdapter.parse("sql=./no-such-dir")
        Traceback (most recent call last):
        ...
        batching.errors.UsageError: --lora sql=./no-such-dir: no such directory
        """
        name, sep, path = option.partition("=")
        name, path = name.strip(), path.strip()
        if len(path) > 1 and path[0] == path[-1] == '"':
            # A config file's table (`lora = { sql = "./sql-lora" }`) arrives as
            # KEY=VALUE pairs with the value as JSON, as --engine-arg's do.
            with contextlib.suppress(ValueError):
                path = str(json.loads(path))
        if not sep or not name or not path:
            raise UsageError(f"--lora {option}: expected NAME=PATH, e.g. --lora sql=./sql-lora")
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"--lora {option}: the name may hold letters, digits and . _ : / - only"
            )
        expanded = os.path.expanduser(path)
        if os.path.exists(expanded):
            return cls(name, os.path.abspath(expanded), _local_rank(expanded, option))
        # As `checked_model`: only a path starts so or has two slashes; an id is
        # `org/name`, and a URI vLLM resolves itself.
        if "://" not in path and (path.startswith(("/", "./", "../", "~")) or path.count("/") > 1):
            raise UsageError(f"--lora {option}: no such directory")
        return cls(name, path)


def _local_rank(path: str, option: str) -> int:
    """The rank a local PEFT LoRA adapter declares; a usage error if it is none."""
    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise UsageError(
            f"--lora {option}: not a LoRA adapter (no adapter_config.json); give a directory "
            "saved by PEFT (save_pretrained)"
        )
    try:
        with open(config_path, "rb") as file:
            config = json.loads(file.read())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--lora {option}: cannot read adapter_config.json ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else config
        raise UsageError(f"--lora {option}: not a LoRA adapter (peft_type {found!r})")
    rank = config.get("r")
    if type(rank) is not int or rank < 1:
        raise UsageError(f"--lora {option}: adapter_config.json has no rank 'r'")
    return rank


@dataclass(frozen=True, slots=True)
class LoraAdapters:
    """The run's adapters, by name; empty when the run loads none.

    >>> LoraAdapters().llm_kwargs()
    {}
    """

    adapters: tuple[LoraAdapter, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for adapter in self.adapters:
            if adapter.name in seen:
                raise UsageError(f"--lora {adapter.name}: the name is given twice")
            seen.add(adapter.name)

    @classmethod
    def parse(cls, options: Iterable[str] | None) -> LoraAdapters:
        """The adapters of repeated `--lora NAME=PATH` options."""
        return cls(tuple(LoraAdapter.parse(option) for option in options or ()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(adapter.name for adapter in self.adapters)

    def __bool__(self) -> bool:
        return bool(self.adapters)

    def ids(self) -> dict[str, tuple[int, str]]:
        """Each name's vLLM adapter id (1-based; vLLM reserves 0) and path.

        >>> LoraAdapters.parse(["a=org/a", "b=org/b"]).ids()
        {'a': (1, 'org/a'), 'b': (2, 'org/b')}
        """
        return {a.name: (number, a.path) for number, a in enumerate(self.adapters, start=1)}

    def llm_kwargs(self) -> dict[str, Any]:
        """The `vllm.LLM` arguments that let every adapter run in one batch.

        `max_loras` is one more than the adapters: vLLM 0.32's CPU LoRA kernels read
        the base model's "no adapter" index -1 as the last slot, so with every slot
        holding an adapter, base-model rows beside adapter rows ran with the last
        slot's adapter (tests/test_lora_vllm.py catches it). A slot that is never
        filled holds zeros: the base model. One spare slot costs rank x (in + out)
        floats per target module; a few MB for a 7B model at rank 16.

        >>> LoraAdapters((LoraAdapter("a", "/x", rank=12),)).llm_kwargs()
        {'enable_lora': True, 'max_loras': 2, 'max_lora_rank': 16}
        """
        if not self.adapters:
            return {}
        known = [a.rank for a in self.adapters if a.rank is not None]
        wanted = max(known) if len(known) == len(self.adapters) else max([_DEFAULT_RANK, *known])
        rank = next((r for r in _VLLM_RANKS if r >= wanted), _VLLM_RANKS[-1])
        return {"enable_lora": True, "max_loras": len(self.adapters) + 1, "max_lora_rank": rank}


def adapter_problem(value: object, names: tuple[str, ...], where: str, field: str) -> str | None:
    """None if `value` names one of the run's adapters, else the row's error message.

    >>> adapter_problem("sql", ("sql",), "p:1", ADAPTER_FIELD) is None
    True
    >>> adapter_problem("chat", ("sql", "math"), "p:2", ADAPTER_FIELD)
    "p:2: field 'adapter': unknown adapter 'chat'; the run loads sql, math (--lora NAME=PATH)"
    >>> adapter_problem("chat", (), "p:3", ADAPTER_FIELD)
    "p:3: field 'adapter': unknown adapter 'chat'; the run loads none: add --lora chat=PATH"
    """
    if not isinstance(value, str) or not value:
        return f"{where}: field {field!r}: expected an adapter name, found {describe(value)}"
    if value in names:
        return None
    if not names:
        return (
            f"{where}: field {field!r}: unknown adapter {value!r}; the run loads none: "
            f"add --lora {value}=PATH"
        )
    return (
        f"{where}: field {field!r}: unknown adapter {value!r}; the run loads "
        f"{', '.join(names)} (--lora NAME=PATH)"
    )
