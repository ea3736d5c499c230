"""Build tiny random sequence-classification models beside the tiny text model.

`tiny-classifier` (3 labels, named) is for `--task classify`; `tiny-scorer` (1 label)
is a cross-encoder for `--task score`. Both are `LlamaForSequenceClassification`
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

__all__ = ["CLASSIFIER_LABELS", "ensure_tiny_classifier"]

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


if __name__ == "__main__":
    print(ensure_tiny_classifier(3))
    print(ensure_tiny_classifier(1))
