"""LoRA adapters on real vLLM: the CLI's greedy outputs against transformers running
the tiny Llama with each adapter merged into its weights (W + B @ A * alpha / r).

One CLI run (a process, as a user runs it) holds base-model rows and rows of both
adapters in one batch: the regression test for vLLM 0.32's CPU LoRA kernels, which
run base rows with the last slot's adapter when every slot is full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from samples.build_tiny_lora import ALPHA, RANK, ensure_tiny_loras
from tests.test_integration import MAX_TOKENS, bizra

pytestmark = pytest.mark.vllm

PROMPTS = ["Once upon a time", "The weather today is"]


@pytest.fixture(scope="module")
def loras(tiny_model: Path) -> dict[str, Path]:
    return ensure_tiny_loras(tiny_model)


def merged_greedy(tiny_model: Path, adapter: Path | None, prompts: list[str]) -> list[str]:
    """Greedy completions of transformers' Llama, the adapter merged by hand."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    if adapter is not None:
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        modules = dict(model.named_modules())
        with torch.no_grad():
            for key, a in tensors.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                stem = key.removesuffix(".lora_A.weight")
                b = tensors[f"{stem}.lora_B.weight"]
                module = modules[stem.removeprefix("base_model.model.")]
                module.weight += (b @ a) * (ALPHA / RANK)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


@pytest.fixture(scope="module")
def mixed_run(
    tiny_model: Path, loras: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Base, a and b rows interleaved in one chunk and one engine batch."""
    work = tmp_path_factory.mktemp("lora")
    rows: list[dict[str, Any]] = []
    for number, prompt in enumerate(PROMPTS):
        for adapter in (None, "a", "b"):
            row: dict[str, Any] = {"id": f"{adapter or 'base'}-{number}", "prompt": prompt}
            if adapter is not None:
                row["adapter"] = adapter
            rows.append(row)
    rows.append({"id": "unknown", "prompt": PROMPTS[0], "adapter": "c"})
    source = work / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = work / "out.jsonl"
    result = bizra(
        str(source), "-o", str(out), "--lora", f"a={loras['a']}", "--lora", f"b={loras['b']}",
        "--max-num-seqs", "8", model=tiny_model,
    )  # fmt: skip
    outputs = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
    return {"result": result, "rows": rows, "out": {r["id"]: r for r in outputs}, "source": source}


@pytest.mark.parametrize("adapter", [None, "a", "b"])
def test_each_row_runs_with_its_adapter_as_transformers_with_it_merged(
    mixed_run: dict[str, Any], tiny_model: Path, loras: dict[str, Path], adapter: str | None
) -> None:
    # Base rows here share every step with rows of both adapters: this is the
    # regression test for the wrapped "no adapter" index (max_loras too small).
    assert mixed_run["result"].returncode == 1, mixed_run["result"].stderr.decode()[-2000:]
    expected = merged_greedy(tiny_model, None if adapter is None else loras[adapter], PROMPTS)
    got = [mixed_run["out"][f"{adapter or 'base'}-{n}"]["output"] for n in range(len(PROMPTS))]
    assert got == expected


def test_adapters_change_the_output(mixed_run: dict[str, Any]) -> None:
    out = mixed_run["out"]
    assert len({out["base-0"]["output"], out["a-0"]["output"], out["b-0"]["output"]}) == 3


def test_an_unknown_adapter_is_its_row_record_and_the_others_run(
    mixed_run: dict[str, Any],
) -> None:
    out = mixed_run["out"]
    assert list(out) == [r["id"] for r in mixed_run["rows"]]
    assert out["unknown"]["error"] == {
        "type": "invalid_input",
        "message": f"{mixed_run['source']}:7: field 'adapter': unknown adapter 'c'; the run "
        "loads a, b (--lora NAME=PATH)",
    }
    assert [r for r in out.values() if r["error"]] == [out["unknown"]]
