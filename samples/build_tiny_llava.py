"""Build a tiny random LLaVA into `samples/tiny-llava/` for the image tests.

A 56-pixel CLIP vision tower (16 patches of 14 px) in front of a Llama the size of
`samples/tiny-model`'s, whose tokenizer it reuses with one `<image>` token added.
The chat template writes `<image>` for each image part; the processor expands it to
the 16 image tokens. Nothing is downloaded, the weights are random (fixed seed):
the outputs are gibberish, but the same gibberish in vLLM and in transformers.

vLLM 0.32's CPU build runs it only with `model_impl="transformers"`: its native
LLaVA imports torchvision, whose build here is CUDA-only.

    python samples/build_tiny_llava.py     # builds if missing, prints the path
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_PATH", "IMAGE_SIZE", "IMAGE_TOKENS", "build_llava", "ensure_tiny_llava"]

SAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = SAMPLES_DIR / "tiny-llava"
SEED = 4321
IMAGE_SIZE = 56
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # the CLS token is dropped ("default")
IMAGE = "<image>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
)


def _write_tokenizer(text_model: Path, out_dir: Path) -> tuple[int, int]:
    """The text model's tokenizer plus `<image>`; (vocabulary size, image token id)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(text_model / "tokenizer.json"))
    tokenizer.add_special_tokens([IMAGE])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = json.loads((text_model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["additional_special_tokens"] = [*config.get("additional_special_tokens", []), IMAGE]
    config["chat_template"] = CHAT_TEMPLATE
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return int(tokenizer.get_vocab_size()), int(tokenizer.token_to_id(IMAGE))


def build_llava(text_model: Path, path: Path = DEFAULT_PATH) -> Path:
    """Build the tiny LLaVA into `path` (replaced), its text side shaped as `text_model`.

    >>> build_llava(Path("samples/tiny-model"), Path("/tmp/tiny-llava"))  # doctest: +SKIP
    PosixPath('/tmp/tiny-llava')
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llava-", dir=path.parent))
    try:
        vocab_size, image_token_id = _write_tokenizer(text_model, tmp)
        text = json.loads((text_model / "config.json").read_text(encoding="utf-8"))
        text_config = LlamaConfig(**{**text, "vocab_size": vocab_size})
        vision_config = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            projection_dim=64,
        )
        config = LlavaConfig(
            vision_config=vision_config,
            text_config=text_config,
            image_token_index=image_token_id,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
            image_seq_length=IMAGE_TOKENS,
        )
        config.torch_dtype = "float32"
        torch.manual_seed(SEED)
        model = LlavaForConditionalGeneration(config)
        # As the text model's: wide random weights give peaked logits, so greedy
        # decoding has clear winners in both engines.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, 0.3)
        generation = json.loads((text_model / "generation_config.json").read_text())
        model.generation_config = GenerationConfig(**generation)
        model.save_pretrained(tmp, safe_serialization=True)
        processor = CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        )
        processor.save_pretrained(tmp)
        (tmp / "processor_config.json").write_text(
            json.dumps(
                {
                    "processor_class": "LlavaProcessor",
                    "patch_size": PATCH_SIZE,
                    "vision_feature_select_strategy": "default",
                    "image_token": IMAGE,
                    "num_additional_image_tokens": 1,
                },
                indent=2,
            )
            + "\n"
        )
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


def ensure_tiny_llava(text_model: Path, path: Path = DEFAULT_PATH) -> Path:
    """`path`, built first if missing.

    >>> ensure_tiny_llava(Path("samples/tiny-model")).name  # doctest: +SKIP
    'tiny-llava'
    """
    if not all((path / name).exists() for name in REQUIRED_FILES):
        build_llava(text_model, path)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(SAMPLES_DIR))
    from build_tiny_model import ensure_tiny_model

    print(ensure_tiny_llava(ensure_tiny_model()))
