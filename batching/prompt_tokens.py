"""Prompt token counts from a local model directory, without vLLM, transformers or torch.

`validate` needs token figures for a whole file in seconds, before anyone pays for
an engine start-up (torch alone takes seconds to import). So this module reads the
model's files directly: `tokenizer.json` with the `tokenizers` library, the chat
template from `tokenizer_config.json` (or `chat_template.jinja`) with jinja2, and
the context length from `config.json`.

It approximates vLLM's rendering rather than reproducing it: plain prompts are
tokenized with special tokens (as `LLM.generate`), chats are rendered with
`add_generation_prompt=True` in a sandbox set up the way transformers sets up its
own, then tokenized without special tokens (the template writes them, as
`LLM.chat`). Text parts of a message are joined with newlines, as vLLM does for
templates that expect string content; image parts are not counted. Models whose
rendering vLLM or their own code customises (Mistral's tokenizer,
`trust_remote_code`) can count differently.

The examples here need a model's tokenizer files (`samples/build_tiny_model.py`
makes one; tests/test_prompt_tokens.py runs them), so they are not run as tests:

>>> tokenizer = PromptTokenizer.load("samples/tiny-model")  # doctest: +SKIP
>>> tokenizer.count(["Hello there"], add_special_tokens=True)  # doctest: +SKIP
[3]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

__all__ = [
    "ChatTemplateError",
    "PromptTokenizer",
    "TokenizerUnavailable",
    "context_length",
]

# The config keys vLLM reads for the context length (its `_get_and_verify_max_len`),
# of which it takes the smallest present. Rope scaling, which vLLM also applies, is
# left out: validate only needs a bound to count over-long prompts against.
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# The names transformers hands a chat template as variables (its special_tokens_map).
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class TokenizerUnavailable(Exception):
    """The directory gives no usable tokenizer; the message says why, for the user."""


class ChatTemplateError(Exception):
    """One chat could not be rendered (a template's raise_exception, a bad variable)."""


def context_length(model_dir: str | Path) -> tuple[int, str] | None:
    """The model's context length from config.json and the key it came from, if any.

    >>> import json, os
    >>> os.mkdir("model")
    >>> with open("model/config.json", "w") as config:
    ...     json.dump({"max_position_embeddings": 2048, "sliding_window": 4096}, config)
    >>> context_length("model")
    (2048, 'max_position_embeddings')
    """
    config = _read_json(Path(model_dir) / "config.json")
    if config is None:
        return None
    # Multimodal models keep the language model's settings under text_config.
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        config = text_config
    found = [
        (value, key)
        for key in _CONTEXT_KEYS
        if isinstance(value := config.get(key), int) and not isinstance(value, bool) and value > 0
    ]
    return min(found) if found else None


class PromptTokenizer:
    """A model's tokenizer and chat template, loaded from its files alone.

    >>> tokenizer = PromptTokenizer.load("samples/tiny-model")  # doctest: +SKIP
    >>> text = tokenizer.render_chat([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    >>> tokenizer.count([text], add_special_tokens=False)  # doctest: +SKIP
    [8]
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: jinja2.Template | None,
        special_tokens: Mapping[str, Any],
    ) -> None:
        self._tokenizer = tokenizer
        self._template = template
        self._special_tokens = dict(special_tokens)

    @classmethod
    def load(cls, model_dir: str | Path) -> PromptTokenizer:
        """Load `model_dir`'s tokenizer; raises `TokenizerUnavailable` saying why not."""
        directory = Path(model_dir)
        path = directory / "tokenizer.json"
        if not directory.is_dir():
            raise TokenizerUnavailable(
                f"{model_dir}: no tokenizer.json (not a local directory); pass the model's "
                "local path to count prompt tokens"
            )
        if not path.is_file():
            raise TokenizerUnavailable(
                f"{model_dir}: no tokenizer.json; prompt tokens are counted only with a fast "
                "tokenizer's tokenizer.json"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception for any bad file
            raise TokenizerUnavailable(f"{path}: cannot load the tokenizer ({exc})") from None
        # Some tokenizer.json files carry truncation (e.g. at 512) or padding settings;
        # either would make every count wrong.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        config = _read_json(directory / "tokenizer_config.json") or {}
        special_tokens: dict[str, Any] = {
            name: _token_text(config[name]) for name in _SPECIAL_TOKEN_NAMES if name in config
        }
        extra = config.get("additional_special_tokens")
        if isinstance(extra, list):
            special_tokens["additional_special_tokens"] = [_token_text(t) for t in extra]
        source = _chat_template_source(directory, config)
        template = None
        if source is not None:
            try:
                template = _environment().from_string(source)
            except jinja2.TemplateError as exc:
                raise TokenizerUnavailable(
                    f"{directory}: the chat template does not compile ({exc})"
                ) from None
        return cls(tokenizer, template, special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The chat as the prompt text; raises `ChatTemplateError` if it cannot be."""
        if self._template is None:
            raise ChatTemplateError("the model has no chat template")
        conversation = [_string_content(message) for message in messages]
        try:
            return self._template.render(
                messages=conversation,
                tools=None,
                documents=None,
                add_generation_prompt=True,
                **self._special_tokens,
            )
        except Exception as exc:  # a template can fail in any way its author wrote
            raise ChatTemplateError(str(exc) or type(exc).__name__) from None

    def count(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[int]:
        """Token counts of `texts`, tokenized in one batched call.

        `add_special_tokens`: True for plain prompts, False for rendered chats.
        """
        if not texts:
            return []
        # The fast variant skips character offsets, which counting never reads.
        encodings = self._tokenizer.encode_batch_fast(
            list(texts), add_special_tokens=add_special_tokens
        )
        return [len(encoding) for encoding in encodings]


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, which some templates use to mark the
    assistant's part for training masks; transformers accepts it, so must we. Here
    it only renders its body."""

    tags = {"generation"}  # noqa: RUF012 -- jinja2's own class attribute

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _environment() -> ImmutableSandboxedEnvironment:
    # The set-up transformers uses for chat templates (render_jinja_template), which
    # vLLM calls: a sandbox, trimmed blocks, loop controls, and its helper globals.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Not jinja2's built-in tojson, which escapes HTML characters and would change
    # the text (and so the token count) of any tool schema with < or &.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _string_content(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    # vLLM joins text parts with newlines for templates that take string content,
    # which is most of them. Image parts are left out: their tokens come from the
    # model's processor, which this module does not run, so `validate` counts an
    # image row's text alone (`run`'s prompt_tokens count the image too).
    text = "\n".join(part["text"] for part in content if part.get("type") == "text")
    return {**message, "content": text}


def _chat_template_source(directory: Path, config: Mapping[str, Any]) -> str | None:
    # transformers 4.43+ may save the template as its own file; it wins over the config.
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default = named.get("default")
        return default if isinstance(default, str) else None
    return None


def _token_text(token: Any) -> Any:
    # Written either as "<s>" or in AddedToken form, {"content": "<s>", ...}.
    if isinstance(token, dict):
        return token.get("content")
    return token


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
