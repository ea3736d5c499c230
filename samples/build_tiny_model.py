"""Build a tiny random-weight Llama model into `samples/tiny-model/` for tests and demos.

Nothing is downloaded: the byte-level BPE tokenizer is trained on the sample prompts
plus generated text, and the weights are random with a fixed seed. The result loads in
`vllm.LLM(model=path)` on CPU in a few seconds, so integration tests run the real
engine without network access or a GPU. Its output is gibberish by design.

    python samples/build_tiny_model.py           # builds if missing, prints the path
    python samples/build_tiny_model.py --force   # rebuilds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DEFAULT_PATH", "build", "ensure_tiny_model"]

SAMPLES_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = SAMPLES_DIR / "tiny-model"
PROMPTS_PATH = SAMPLES_DIR / "prompts.jsonl"

SEED = 1234
VOCAB_SIZE = 4096
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]

# ChatML, as many instruction-tuned models use it. The template emits the BOS token
# itself, so chat prompts are tokenized without special tokens (as vLLM's LLM.chat does).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The files whose presence means a finished build (the build writes to a temporary
# folder and renames it, so a partial build never has all of them).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _corpus() -> Iterator[str]:
    """Training text: the sample prompts, then generated text for more merges."""
    sys.path.insert(0, str(SAMPLES_DIR))
    try:
        from make_prompts import make_rows
    finally:
        sys.path.pop(0)

    if PROMPTS_PATH.exists():
        for line in PROMPTS_PATH.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "prompt" in row:
                yield row["prompt"]
            for message in row.get("messages", ()):
                yield message["content"]
    # A different seed than the committed prompts: more of the same vocabulary in
    # new combinations, so the tokenizer does not simply memorise the sample file.
    for row in make_rows(3000, seed=SEED):
        yield row.get("prompt") or row["messages"][-1]["content"]
    # Digits, punctuation and code-like text, so numbers and symbols get merges too.
    for number in range(0, 5000, 7):
        yield f"{number} + {number * 3} = {number * 4}; x[{number % 97}] = {number / 8:.3f}"
    # Made-up words from fixed syllables: enough distinct pieces to fill the vocabulary.
    rng = random.Random(SEED)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    for _ in range(2000):
        yield " ".join(
            "".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(rng.randint(4, 12))
        )


def _train_tokenizer(out_dir: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    # BOS in front of every plain prompt, as Llama tokenizers do with
    # add_special_tokens=True (vLLM's LLM.generate passes that).
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )

    tokenizer.save(str(out_dir / "tokenizer.json"))
    # Written by hand rather than by `save_pretrained`: transformers 5 writes a
    # `TokenizersBackend` class and a separate chat_template.jinja that transformers 4
    # (which vLLM releases for CUDA may pin) cannot read; this form loads in both.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8"
    )
    return int(tokenizer.get_vocab_size())


def _build_model(out_dir: Path, vocab_size: int, token_ids: dict[str, int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=token_ids[BOS],
        eos_token_id=token_ids[EOS],
        pad_token_id=token_ids[PAD],
        tie_word_embeddings=False,
        # Wider than Llama's 0.02 so the random logits are peaked: greedy decoding
        # then has clear winners and is stable across batch shapes in tests.
        initializer_range=0.3,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[BOS],
        # Chat turns end with <|im_end|>; plain text ends with </s>.
        eos_token_id=[token_ids[EOS], token_ids[IM_END]],
        pad_token_id=token_ids[PAD],
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def _is_built(path: Path) -> bool:
    return all((path / name).exists() for name in REQUIRED_FILES)


def build(path: Path = DEFAULT_PATH, *, replace: bool = True) -> Path:
    """Build the model into `path`; an existing model there is replaced if `replace`.

    >>> build(Path("/tmp/tiny-model"))
    PosixPath('/tmp/tiny-model')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=path.parent))
    try:
        vocab_size = _train_tokenizer(tmp)
        tokenizer_json = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        token_ids = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
        _build_model(tmp, vocab_size, token_ids)
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            # Built aside and renamed into place, so a reader never sees half a model.
            os.replace(tmp, path)
        except OSError:
            # Another process (a parallel test run) got there first; theirs is as good.
            if replace or not _is_built(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_tiny_model(path: Path = DEFAULT_PATH, *, force: bool = False) -> Path:
    """Return `path`, building the model there first if it is missing (or `force`).

    >>> ensure_tiny_model()
    PosixPath('.../samples/tiny-model')
    """
    path = Path(path)
    if force or not _is_built(path):
        build(path, replace=force or path.exists())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--path", default=str(DEFAULT_PATH), help="where to build it")
    args = parser.parse_args(argv)
    print(ensure_tiny_model(Path(args.path), force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
