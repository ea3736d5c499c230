"""Images on real vLLM: the CLI's greedy outputs for chat rows with images against
transformers' LlavaForConditionalGeneration on the tiny LLaVA, the same images."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from samples.build_tiny_llava import IMAGE_TOKENS, ensure_tiny_llava
from tests.test_integration import MAX_TOKENS, bizra

pytestmark = pytest.mark.vllm

QUESTION = "What is in the picture?"


def checkerboard(size: tuple[int, int], colors: tuple[Any, Any], square: int) -> Any:
    from PIL import Image

    image = Image.new("RGB", size, colors[0])
    for x in range(size[0]):
        for y in range(size[1]):
            if (x // square + y // square) % 2:
                image.putpixel((x, y), colors[1])
    return image


IMAGES = {
    "board": lambda: checkerboard((80, 60), ((200, 30, 90), (10, 220, 40)), 10),
    "stripes": lambda: checkerboard((56, 56), ((0, 0, 0), (250, 250, 250)), 4),
}


def data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_chat(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]


@pytest.fixture(scope="module")
def tiny_llava(tiny_model: Path) -> Path:
    return ensure_tiny_llava(tiny_model)


def transformers_greedy(model_dir: Path, image: Any) -> tuple[str, int]:
    """LlavaForConditionalGeneration's greedy completion and its prompt's length."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    ]
    text = processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    inputs = processor(images=[image], text=[text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt_len = int(inputs["input_ids"].shape[1])
    completion = processor.tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)
    return completion, prompt_len


@pytest.fixture(scope="module")
def image_run(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("images")
    rows: list[dict[str, Any]] = [
        {"id": name, "messages": image_chat(data_url(make()))} for name, make in IMAGES.items()
    ]
    rows.append({"id": "text", "messages": [{"role": "user", "content": QUESTION}]})
    rows.append({"id": "broken", "messages": image_chat("data:image/png;base64,iVBORw0KGgo=")})
    source = work / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = work / "out.jsonl"
    result = bizra(
        str(source), "-o", str(out), "--engine-arg", "model_impl=transformers",
        "--max-model-len", "256", "--max-num-seqs", "4", model=tiny_llava,
    )  # fmt: skip
    outputs = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
    return {"result": result, "out": {r["id"]: r for r in outputs}, "source": source}


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_image_row_matches_transformers_on_the_same_image(
    image_run: dict[str, Any], tiny_llava: Path, name: str
) -> None:
    assert image_run["result"].returncode == 1, image_run["result"].stderr.decode()[-2000:]
    expected, prompt_len = transformers_greedy(tiny_llava, IMAGES[name]())
    row = image_run["out"][name]
    assert row["error"] is None
    assert row["output"] == expected
    # The image's tokens are counted: the expanded prompt, as transformers builds it.
    assert row["prompt_tokens"] == prompt_len
    assert prompt_len > IMAGE_TOKENS


def test_the_images_change_the_output(image_run: dict[str, Any]) -> None:
    outputs = {image_run["out"][name]["output"] for name in (*IMAGES, "text")}
    assert len(outputs) == 3


def test_a_broken_image_is_its_rows_record_and_the_others_run(image_run: dict[str, Any]) -> None:
    out = image_run["out"]
    assert out["broken"]["error"] == {
        "type": "invalid_input",
        "message": f"{image_run['source']}:4: field 'messages[0].content[0].image_url.url': "
        "not a readable image (cannot identify image file)",
    }
    assert [name for name, row in out.items() if row["error"]] == ["broken"]


def test_an_image_row_on_a_text_model_is_its_rows_error(vllm_engine: Any) -> None:
    from batching.engine import PermanentRequestError
    from batching.media import IMAGE_PART

    image = IMAGES["board"]()
    chat = [{"role": "user", "content": [{"type": IMAGE_PART, IMAGE_PART: image}]}]
    [encoded, text] = vllm_engine.encode([chat, [{"role": "user", "content": "Hi"}]])
    assert isinstance(encoded, PermanentRequestError)
    assert encoded.error_type == "invalid_request"
    assert str(encoded).startswith("cannot process the chat's images: ")
    assert isinstance(text, list)


@pytest.mark.closes_vllm
def test_an_aborted_image_request_runs_again_from_its_processed_input(
    tiny_llava: Path,
) -> None:
    """What a retry does: abort mid-decode, then add the same encoded prompt again."""
    import os

    from batching.config import EngineConfig
    from batching.engine import EngineRequest
    from batching.engines.vllm import create_vllm_engine
    from batching.media import IMAGE_PART
    from batching.records import Sampling

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = create_vllm_engine(
        EngineConfig(
            model=str(tiny_llava), dtype="float32", max_model_len=256, max_num_seqs=4,
            extra={"enforce_eager": True, "model_impl": "transformers"},
        )
    )  # fmt: skip
    try:
        chat = [{"role": "user", "content": [{"type": IMAGE_PART, IMAGE_PART: IMAGES["board"]()}]}]
        [ids] = engine.encode([chat])
        sampling = Sampling(max_tokens=6, temperature=0.0)
        request = EngineRequest(0, ids, sampling, multimodal=getattr(ids, "multimodal", None))
        engine.add(request)
        engine.step()
        engine.abort([0])
        finished = []
        for key in (1, 2):
            engine.add(EngineRequest(key, ids, sampling, multimodal=request.multimodal))
            while engine.has_unfinished():
                finished.extend(engine.step())
    finally:
        engine.close()
    assert [out.key for out in finished] == [1, 2]
    assert finished[0].text == finished[1].text
    assert finished[0].prompt_tokens == finished[1].prompt_tokens == len(ids)
