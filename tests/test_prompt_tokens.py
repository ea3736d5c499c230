"""Token counts from a model's files: the histogram, the tokenizer and the chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from batching.prompt_tokens import (
    ChatTemplateError,
    PromptTokenizer,
    TokenizerUnavailable,
    context_length,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a tide."}]


def model_dir(tmp_path: Path, tiny_model: Path, **tokenizer_config: Any) -> Path:
    """A copy of the tiny model's tokenizer with its own tokenizer_config.json."""
    directory = tmp_path / "model"
    directory.mkdir()
    shutil.copy(tiny_model / "tokenizer.json", directory / "tokenizer.json")
    config = {"bos_token": "<s>", "eos_token": "</s>", **tokenizer_config}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_context_length_takes_the_smallest_key_and_looks_in_text_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"max_position_embeddings": 8192, "seq_length": 4096}})
    )
    assert context_length(tmp_path) == (4096, "seq_length")
    (tmp_path / "config.json").write_text("{}")
    assert context_length(tmp_path) is None
    assert context_length(tmp_path / "missing") is None


def test_plain_prompts_get_bos_and_chats_are_rendered_with_the_generation_prompt(
    tiny_model: Path,
) -> None:
    tokenizer = PromptTokenizer.load(tiny_model)
    plain = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    assert tokenizer.count(["Hello there"], add_special_tokens=True) == [
        len(plain.encode("Hello there").ids)
    ]
    text = tokenizer.render_chat(CHAT)
    assert text.startswith("<s><|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_text_parts_are_joined_with_newlines(tiny_model: Path) -> None:
    tokenizer = PromptTokenizer.load(tiny_model)
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert tokenizer.render_chat(parts) == tokenizer.render_chat(
        [{"role": "user", "content": "a\nb"}]
    )


@pytest.mark.slow  # imports transformers
def test_counts_match_transformers_apply_chat_template(tiny_model: Path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(str(tiny_model))
    tokenizer = PromptTokenizer.load(tiny_model)
    expected = reference.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert tokenizer.render_chat(CHAT) == expected
    ids = reference(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.count([expected], add_special_tokens=False) == [len(ids)]


def test_truncation_in_tokenizer_json_is_ignored(tmp_path: Path, tiny_model: Path) -> None:
    directory = model_dir(tmp_path, tiny_model)
    truncating = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    truncating.enable_truncation(4)
    truncating.save(str(directory / "tokenizer.json"))
    [count] = PromptTokenizer.load(directory).count(["word " * 50], add_special_tokens=True)
    assert count > 4


def test_template_helpers_as_transformers_provides_them(tmp_path: Path, tiny_model: Path) -> None:
    template = (
        "{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}"
        "{% endif %}{% if loop.index > 5 %}{% break %}{% endif %}"
        "{% generation %}{{ m | tojson }}{% endgeneration %}{% endfor %}{{ eos_token }}"
    )
    tokenizer = PromptTokenizer.load(
        model_dir(tmp_path, tiny_model, eos_token={"content": "</s>"}, chat_template=template)
    )
    rendered = tokenizer.render_chat([{"role": "user", "content": "<é>"}])
    assert rendered == '{"role": "user", "content": "<é>"}</s>'
    with pytest.raises(ChatTemplateError, match="no bad roles"):
        tokenizer.render_chat([{"role": "bad", "content": "x"}])


def test_the_sandbox_refuses_unsafe_templates(tmp_path: Path, tiny_model: Path) -> None:
    template = "{{ messages.__class__.__mro__ }}"
    tokenizer = PromptTokenizer.load(model_dir(tmp_path, tiny_model, chat_template=template))
    with pytest.raises(ChatTemplateError):
        tokenizer.render_chat(CHAT)


def test_chat_template_file_and_named_templates(tmp_path: Path, tiny_model: Path) -> None:
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    directory = model_dir(tmp_path, tiny_model, chat_template=named)
    assert PromptTokenizer.load(directory).render_chat(CHAT) == "D"
    (directory / "chat_template.jinja").write_text("J")
    assert PromptTokenizer.load(directory).render_chat(CHAT) == "J"


def test_no_chat_template(tmp_path: Path, tiny_model: Path) -> None:
    tokenizer = PromptTokenizer.load(model_dir(tmp_path, tiny_model))
    assert not tokenizer.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tokenizer.render_chat(CHAT)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no tokenizer.json"),
        ("corrupt", "cannot load the tokenizer"),
        ("bad_template", "does not compile"),
    ],
)
def test_unusable_directories_say_why(
    setup: str, message: str, tmp_path: Path, tiny_model: Path
) -> None:
    directory = model_dir(tmp_path, tiny_model, chat_template="{% for %}")
    if setup == "missing":
        (directory / "tokenizer.json").unlink()
    elif setup == "corrupt":
        (directory / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerUnavailable, match=message):
        PromptTokenizer.load(directory)
