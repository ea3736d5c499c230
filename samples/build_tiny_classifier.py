"""Build tiny random sequence-classification models beside the tiny text model.

`tiny-classifier` (3 labels, named) is for `--task classify`; `tiny-scorer` (1 label)
is a cross-encoder for `--task score`; `tiny-bert-scorer` is a BERT cross-encoder
(its tokenizer marks each token's side of the pair with token type ids, as
ms-marco MiniLM rerankers do), with a WordPiece vocabulary trained on the sample
prompts. Both are `LlamaForSequenceClassification`
saved by transformers from the tiny model's own config and tokenizer, so vLLM loads
them natively as classifiers: their head is real (random, seeded) weights, never the
uninitialised one `convert="classify"` would give a causal LM.

    python samples/build_tiny_classifier.py   # builds both if missing, prints paths
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["CLASSIFIER_LABELS", "ensure_tiny_bert_scorer", "ensure_tiny_classifier"]

SAMPLES_DIR = Path(__file__).resolve().parent
SEED = 4321
CLASSIFIER_LABELS = ("negative", "neutral", "positive")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _build(path: Path, num_labels: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from transformers.utils import logging as transformers_logging

    sys.path.insert(0, str(SAMPLES_DIR))
    try:
        from build_tiny_model import ensure_tiny_model
    finally:
        sys.path.pop(0)

    transformers_logging.disable_progress_bar()
    base = ensure_tiny_model()
    config = LlamaConfig.from_pretrained(base)
    config.architectures = ["LlamaForSequenceClassification"]
    config.num_labels = num_labels
    if num_labels > 1:
        config.id2label = dict(enumerate(CLASSIFIER_LABELS[:num_labels]))
        config.label2id = {label: i for i, label in config.id2label.items()}
    torch.manual_seed(SEED + num_labels)
    model = LlamaForSequenceClassification(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in _TOKENIZER_FILES:
            shutil.copy(base / name, tmp / name)
        try:
            os.replace(tmp, path)  # built aside: a reader never sees half a model
        except OSError:
            if not (path / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny_classifier(num_labels: int = 3, path: Path | None = None) -> Path:
    """The tiny classifier with `num_labels` labels, built on first use.

    >>> ensure_tiny_classifier(1).name  # doctest: +SKIP
    'tiny-scorer'
    """
    name = "tiny-scorer" if num_labels == 1 else "tiny-classifier"
    path = Path(path) if path is not None else SAMPLES_DIR / name
    if not (path / "model.safetensors").exists():
        _build(path, num_labels)
    return path


def _build_bert(path: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    lines = (SAMPLES_DIR / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials)
    tokenizer.train_from_iterator(lines, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,  # 4 heads of 32: the CPU backend's smallest head size
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
        # Wider than BERT's 0.02, so the random scores spread out and the token type
        # embeddings move them measurably (a test checks that they are used).
        initializer_range=0.3,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        fast.save_pretrained(tmp)
        BertForSequenceClassification(config).save_pretrained(tmp, safe_serialization=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny_bert_scorer(path: Path | None = None) -> Path:
    """The tiny BERT cross-encoder (one label, token type ids), built on first use.

    >>> ensure_tiny_bert_scorer().name  # doctest: +SKIP
    'tiny-bert-scorer'
    """
    path = Path(path) if path is not None else SAMPLES_DIR / "tiny-bert-scorer"
    if not (path / "model.safetensors").exists():
        _build_bert(path)
    return path


if __name__ == "__main__":
    print(ensure_tiny_classifier(3))
    print(ensure_tiny_classifier(1))
    print(ensure_tiny_bert_scorer())
