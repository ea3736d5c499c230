"""Build tiny random LoRA adapters for the tiny Llama (`samples/build_tiny_model.py`).

Written by hand in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`,
tensors named `base_model.model.<module>.lora_A.weight`), so no `peft` install is
needed. PEFT starts `lora_B` at zero, which would leave the outputs unchanged; here
both matrices are random and large enough that greedy outputs differ from the base
model's, so a test can tell which weights ran.

    python samples/build_tiny_lora.py          # builds samples/tiny-lora-a and -b
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["ADAPTER_SEEDS", "RANK", "TARGET_MODULES", "build_lora", "ensure_tiny_loras"]

SAMPLES_DIR = Path(__file__).resolve().parent
RANK = 8
ALPHA = 16
TARGET_MODULES = ("q_proj", "v_proj", "o_proj", "down_proj")
# One adapter per seed: "a" and "b" differ from each other and from the base model.
ADAPTER_SEEDS = {"a": 11, "b": 22}
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _module_shapes(config: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target module of the tiny Llama."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    return {
        "q_proj": (hidden, heads * head_dim),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "down_proj": (config["intermediate_size"], hidden),
    }


def build_lora(base_model: Path, path: Path, seed: int) -> Path:
    """Write a random rank-`RANK` adapter for `base_model` into `path` (replaced).

    >>> build_lora(Path("samples/tiny-model"), Path("/tmp/tiny-lora"), seed=1)  # doctest: +SKIP
    PosixPath('/tmp/tiny-lora')
    """
    import torch
    from safetensors.torch import save_file

    config = json.loads((base_model / "config.json").read_text(encoding="utf-8"))
    shapes = _module_shapes(config)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(config["num_hidden_layers"]):
        for module in TARGET_MODULES:
            parent = "mlp" if module == "down_proj" else "self_attn"
            name = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            fan_in, fan_out = shapes[module]
            # The update B @ A * (ALPHA / RANK) is about as large as the weights
            # themselves (initializer_range 0.3), so it changes the greedy tokens.
            a = torch.randn(RANK, fan_in, generator=generator) * 0.3
            b = torch.randn(fan_out, RANK, generator=generator) * 0.05
            tensors[f"{name}.lora_A.weight"] = a.contiguous()
            tensors[f"{name}.lora_B.weight"] = b.contiguous()
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model),
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": list(TARGET_MODULES),
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-lora-", dir=path.parent))
    try:
        (tmp / "adapter_config.json").write_text(
            json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8"
        )
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        if path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if not all((path / name).exists() for name in REQUIRED_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_tiny_loras(base_model: Path, out_dir: Path = SAMPLES_DIR) -> dict[str, Path]:
    """The tiny adapters by name ("a", "b"), each built under `out_dir` if missing.

    >>> ensure_tiny_loras(Path("samples/tiny-model"))["a"].name  # doctest: +SKIP
    'tiny-lora-a'
    """
    paths: dict[str, Path] = {}
    for name, seed in ADAPTER_SEEDS.items():
        path = out_dir / f"tiny-lora-{name}"
        if not all((path / file).exists() for file in REQUIRED_FILES):
            build_lora(base_model, path, seed)
        paths[name] = path
    return paths


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(SAMPLES_DIR))
    from build_tiny_model import ensure_tiny_model

    for name, built in ensure_tiny_loras(ensure_tiny_model()).items():
        print(name, built)
