"""embed, classify and score on real vLLM, through the CLI, checked against transformers.

Each run is `python -m cli run --task ...` as a process on a tiny random model: the
tiny Llama as an embedding model (vLLM's pooling runner converts a causal LM to
embed), and two `LlamaForSequenceClassification` models saved by transformers
(`samples/build_tiny_classifier.py`: 3 named labels, and 1 label as a cross-encoder).
The values are compared with transformers' own forward pass on the same weights:
the last token's final hidden state, normalized; softmax of the logits; sigmoid of
the logit of the pair tokenized together.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from samples.build_tiny_classifier import (
    CLASSIFIER_LABELS,
    ensure_tiny_bert_scorer,
    ensure_tiny_classifier,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
# vLLM's float32 kernels on CPU and transformers' differ in summation order.
TOLERANCE = 2e-4
DEADLINE_S = 300.0

TEXTS = [
    "hello there",
    "The moon pulls the tides twice a day.",
    "a B-tree keeps its keys sorted",
    "jazz",
    "Sourdough needs time; a starter needs feeding.",
]
PAIRS = [("cats", "dogs"), ("where is the moon", "The moon pulls the tides.")]
RERANK = ("sourdough", ["bread rises slowly", "a rook moves in lines", "sourdough starter"])


def command(source: Path, model: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "cli", "run", str(source), "-m", str(model), "-q",
        # Test speed only: float32 is faster than bf16 on CPUs without AVX-512 BF16,
        # and eager mode skips seconds of torch.compile.
        "--dtype", "float32", "--engine-arg", "enforce_eager=true", *args,
    ]  # fmt: skip


def env() -> dict[str, str]:
    # The tiny models need little KV cache, and a small one is allocated faster.
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def bizra(source: Path, model: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command(source, model, *args),
        cwd=REPO,
        env=env(),
        capture_output=True,
        timeout=DEADLINE_S,
        check=False,
    )


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def read_output(out: Path) -> list[dict[str, Any]]:
    if out.suffix == ".parquet":
        return list(pq.read_table(out).to_pylist())
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def close(ours: list[float], theirs: list[float]) -> bool:
    return len(ours) == len(theirs) and all(
        abs(a - b) <= TOLERANCE for a, b in zip(ours, theirs, strict=True)
    )


@pytest.fixture(scope="module")
def models(tiny_model: Path) -> dict[str, Path]:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/setup installs it)")
    return {
        "embed": tiny_model,
        "classify": ensure_tiny_classifier(3),
        "score": ensure_tiny_classifier(1),
    }


class Reference:
    """transformers' forward pass on the tiny models, one text or pair at a time."""

    def __init__(self, models: dict[str, Path]) -> None:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(models["embed"])
        self.embedder = AutoModel.from_pretrained(models["embed"], dtype=torch.float32)
        self.classifier = AutoModelForSequenceClassification.from_pretrained(
            models["classify"], dtype=torch.float32
        )
        self.scorer = AutoModelForSequenceClassification.from_pretrained(
            models["score"], dtype=torch.float32
        )

    def tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def embedding(self, text: str) -> list[float]:
        with self.torch.no_grad():
            encoded = self.tokenizer(text, return_tensors="pt")
            last = self.embedder(**encoded).last_hidden_state[0, -1]
            return [float(v) for v in self.torch.nn.functional.normalize(last, dim=0)]

    def probs(self, text: str) -> list[float]:
        with self.torch.no_grad():
            logits = self.classifier(**self.tokenizer(text, return_tensors="pt")).logits
            return [float(v) for v in self.torch.softmax(logits[0], dim=0)]

    def score(self, query: str, document: str) -> float:
        with self.torch.no_grad():
            encoded = self.tokenizer(query, document, return_tensors="pt")
            return float(self.torch.sigmoid(self.scorer(**encoded).logits[0, 0]))


@pytest.fixture(scope="module")
def reference(models: dict[str, Path]) -> Reference:
    return Reference(models)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_embed_matches_transformers(
    models: dict[str, Path], reference: Reference, tmp_path: Path, suffix: str
) -> None:
    rows = [{"id": f"t{i}", "prompt": text} for i, text in enumerate(TEXTS)]
    rows.insert(2, {"id": "bad", "prompt": ""})
    # The tiny model has no Matryoshka support: that row alone fails, saying so.
    rows.append({"id": "dims", "prompt": "hi", "dimensions": 8})
    source, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / f"out{suffix}"
    done = bizra(source, models["embed"], "--task", "embed", "-o", str(out))
    assert done.returncode == 1, done.stderr.decode(errors="replace")  # the bad rows
    written = read_output(out)
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    assert written[2]["error"]["type"] == "invalid_input"
    assert written[-1]["error"] == {
        "type": "invalid_request",
        "message": f"{source}:{len(rows)}: Model {str(models['embed'])!r} does not support "
        "Matryoshka embeddings; dimensions must be unset (received dimensions=8).",
    }
    for row, text in zip(written[:2] + written[3:-1], TEXTS, strict=True):
        assert row["error"] is None
        assert close(row["embedding"], reference.embedding(text)), text
        assert row["prompt_tokens"] == reference.tokens(text)
    if suffix == ".parquet":
        column = pq.read_table(out).column("embedding")
        assert str(column.type) == "fixed_size_list<element: float>[128]"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_classify_matches_transformers(
    models: dict[str, Path], reference: Reference, tmp_path: Path, suffix: str
) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"input": text} for text in TEXTS])
    out = tmp_path / f"out{suffix}"
    done = bizra(source, models["classify"], "--task", "classify", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    written = read_output(out)
    assert len(written) == len(TEXTS)
    for row, text in zip(written, TEXTS, strict=True):
        probs = reference.probs(text)
        assert close(row["probs"], probs), text
        assert row["label"] == CLASSIFIER_LABELS[probs.index(max(probs))]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_score_pairs_and_rerank_rows_match_transformers(
    models: dict[str, Path], reference: Reference, tmp_path: Path, suffix: str
) -> None:
    query, documents = RERANK
    rows = [{"text_1": a, "text_2": b} for a, b in PAIRS]
    rows.append({"query": query, "documents": documents})
    source, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / f"out{suffix}"
    done = bizra(source, models["score"], "--task", "score", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    written = read_output(out)
    assert len(written) == len(rows)
    for row, (a, b) in zip(written[:-1], PAIRS, strict=True):
        assert abs(row["score"] - reference.score(a, b)) <= TOLERANCE, (a, b)
    theirs = [reference.score(query, document) for document in documents]
    assert close(written[-1]["scores"], theirs)  # in the documents' order


def test_a_bert_cross_encoder_scores_with_its_token_type_ids(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    model_dir = ensure_tiny_bert_scorer()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)

    def reference(query: str, document: str, types: bool = True) -> float:
        encoded = tokenizer(query, document, return_tensors="pt")
        if not types:
            encoded["token_type_ids"] = torch.zeros_like(encoded["token_type_ids"])
        with torch.no_grad():
            return float(torch.sigmoid(model(**encoded).logits[0, 0]))

    query, documents = RERANK
    rows = [{"text_1": a, "text_2": b} for a, b in PAIRS]
    rows.append({"query": query, "documents": documents})
    source, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    done = bizra(source, model_dir, "--task", "score", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    written = read_output(out)
    for row, (a, b) in zip(written[:-1], PAIRS, strict=True):
        assert abs(row["score"] - reference(a, b)) <= TOLERANCE, (a, b)
    assert close(written[-1]["scores"], [reference(query, d) for d in documents])
    # The type ids matter to this model: without them the scores would differ.
    assert any(
        abs(reference(a, b) - reference(a, b, types=False)) > 10 * TOLERANCE for a, b in PAIRS
    )


def test_a_causal_lm_is_refused_for_classify(models: dict[str, Path], tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    done = bizra(source, models["embed"], "--task", "classify", "-o", str(tmp_path / "o.jsonl"))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == (
        f"bizra-batch: error: --task classify needs a classification head; model "
        f"'{models['embed']}' (LlamaForCausalLM) can only embed in vLLM; pick a model made "
        "for classify"
    )


def test_a_classifier_with_three_labels_is_refused_for_score(
    models: dict[str, Path], tmp_path: Path
) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"text_1": "a", "text_2": "b"}])
    done = bizra(source, models["classify"], "--task", "score")
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == (
        "bizra-batch: error: --task score needs a cross-encoder, a classification head "
        f"with one label; model '{models['classify']}' has 3 labels (--task classify gives "
        "their probabilities)"
    )


def test_embed_kill_9_then_resume_completes_every_row(
    models: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    count = 20_000
    texts = [f"row {i}: " + TEXTS[i % len(TEXTS)] for i in range(count)]
    source = write_rows(
        tmp_path / "in.jsonl", [{"id": i, "prompt": t} for i, t in enumerate(texts)]
    )
    out = tmp_path / "out.jsonl"
    run = command(source, models["embed"], "--task", "embed", "-o", str(out))
    run += ["--chunk-size", "256"]
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        # Its own process group, so SIGKILL takes any engine helper process with it.
        process = subprocess.Popen(
            run, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + DEADLINE_S
            while process.poll() is None and time.monotonic() < deadline:
                if out.exists() and out.stat().st_size > 0:
                    break
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = out.read_bytes().count(b"\n")
    assert 0 < saved < count, "the kill must land mid-run"
    resumed = subprocess.run(
        [*run, "--resume"], cwd=REPO, env=env(), capture_output=True, timeout=DEADLINE_S
    )
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    written = read_output(out)
    assert [row["id"] for row in written] == list(range(count))
    assert all(row["error"] is None and len(row["embedding"]) == 128 for row in written)
    for index in (0, saved - 1, saved, count - 1):  # both sides of the kill
        assert close(written[index]["embedding"], reference.embedding(texts[index])), index


def openai_line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


@pytest.mark.parametrize(
    ("task", "lines", "body_type"),
    [
        (
            "embed",
            [
                openai_line("e", "/v1/embeddings", input="hi", model="m"),
                openai_line("x", "/v1/embeddings"),
            ],
            "EmbeddingResponse",
        ),
        ("score", [openai_line("s", "/v1/score", text_1="a", text_2="b")], "ScoreResponse"),
        (
            "score",
            [openai_line("r", "/v1/rerank", query="ab", documents=["b", "c"])],
            "RerankResponse",
        ),
    ],
)  # fmt: skip
def test_openai_pooling_lines_validate_against_vllms_batch_output_model(
    tmp_path: Path, task: str, lines: list[dict[str, Any]], body_type: str
) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/setup installs it)")
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    from batching.config import InputConfig, OutputConfig, RunConfig
    from batching.job import run
    from batching.records import Sampling
    from batching.testing import FakeEngine

    source, out = write_rows(tmp_path / "batch.jsonl", lines), tmp_path / "out.jsonl"
    config = RunConfig(
        input=InputConfig(str(source), task=task),  # type: ignore[arg-type]
        output=OutputConfig(str(out), format="openai", model="tiny"),
        sampling=Sampling(max_tokens=256),
    )
    run(config, FakeEngine)
    outputs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(outputs) == len(lines)
    for output in outputs:
        parsed = BatchRequestOutput.model_validate(output)
        if output["error"] is None:
            assert type(parsed.response.body).__name__ == body_type  # type: ignore[union-attr]
