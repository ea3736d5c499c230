"""Prompt token figures for `validate`: counted a chunk at a time with the model's
own tokenizer (`batching.prompt_tokens`: no vLLM, no torch), and the rows whose
prompts leave no room for output within the model's context.

Also the problem record both halves of `validate` list (`RowProblem`), and how many
of them a report keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batching.config import InputConfig
from batching.figures import figure, figures_dict
from batching.quantiles import TokenHistogram
from batching.readers import RowPlace, row_place
from batching.records import Request

if TYPE_CHECKING:
    from batching.prompt_tokens import PromptTokenizer

__all__ = ["MAX_LISTED_ERRORS", "NoTokenFigures", "RowProblem", "TokenStats", "TokenTally"]

# Enough to see the pattern in a broken file; a file with a million bad rows
# should not print a million lines (or keep them in memory).
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One row's problem; `message` starts with the place (file:line) and names the field."""

    line: int = figure(doc="the row's line in the input")
    message: str = figure(doc="what is wrong, where, and what to do")

    def to_dict(self) -> dict[str, Any]:
        return figures_dict(self)


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Prompt token figures from the model's tokenizer, over the valid rows it counted.

    `run` gives the rows counted in `rows_too_long` a prompt_too_long error, so they
    are among the report's invalid rows too.
    """

    tokenizer_dir: str = figure(doc="the model directory whose tokenizer counted")
    rows: int = figure(doc="rows counted: valid, not too long, and renderable")
    min: int | None = figure(doc="fewest prompt tokens of a row counted")
    median: int | None = figure(doc="median prompt tokens")
    p95: int | None = figure(doc="95th percentile of prompt tokens")
    max: int | None = figure(doc="most prompt tokens of a row counted")
    total: int = figure(doc="prompt tokens of the rows counted, summed")
    max_model_len: int | None = figure(doc="the model's context length, if known")
    max_model_len_from: str | None = figure(
        doc='where max_model_len came from ("given", or the config.json key)'
    )
    rows_too_long: int | None = figure(
        doc="prompts that leave no room for one output token (tokens >= max_model_len); "
        "None without a max_model_len"
    )
    chat_rows_skipped: int = figure(doc="chat rows not counted for want of a chat template")
    template_errors: int = figure(doc="chat rows the template could not render (not counted)")
    first_template_errors: tuple[RowProblem, ...] = figure(
        doc=f"the first {MAX_LISTED_ERRORS} of those, each with its place and the error"
    )

    def to_dict(self) -> dict[str, Any]:
        return figures_dict(self)


class NoTokenFigures(Exception):
    """No token figures this time; the message tells the user why."""


class TokenTally:
    """Token counts of the valid rows, fed a chunk at a time."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        tokenizer_dir: str,
        context: tuple[int, str] | None,
        cfg: InputConfig,
        place: RowPlace | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._tokenizer_dir = tokenizer_dir
        self._context = context
        self._cfg = cfg
        # The readers' form of a place, so these read like the schema's messages;
        # `place` names the file too where the input is several.
        self._place: RowPlace = place or row_place(cfg)
        self._histogram = TokenHistogram()
        self._too_long = 0
        self._chat_skipped = 0
        self._template_errors = 0
        self._first_template_errors: list[RowProblem] = []

    @classmethod
    def start(
        cls,
        tokenizer_dir: str,
        max_model_len: int | None,
        cfg: InputConfig,
        place: RowPlace | None = None,
    ) -> TokenTally:
        try:
            # Imported here: tokenizers and jinja2 come with vLLM, and `validate`
            # without --model must work without either.
            from batching.prompt_tokens import PromptTokenizer, TokenizerUnavailable, context_length
        except ImportError as exc:
            raise NoTokenFigures(
                f"token statistics need the tokenizers and jinja2 packages ({exc}); "
                "pip install tokenizers jinja2"
            ) from None
        try:
            tokenizer = PromptTokenizer.load(tokenizer_dir)
        except TokenizerUnavailable as exc:
            raise NoTokenFigures(str(exc)) from None
        context: tuple[int, str] | None = (max_model_len, "given") if max_model_len else None
        if context is None:
            found = context_length(tokenizer_dir)
            context = None if found is None else (found[0], f"config.json {found[1]}")
        return cls(tokenizer, tokenizer_dir, context, cfg, place)

    def add(self, requests: Sequence[Request]) -> dict[int, RowProblem]:
        """Count the prompt tokens of `requests`; the problems of those too long, by index."""
        plain = [r for r in requests if r.prompt is not None]
        chats: list[Request] = []
        rendered: list[str] = []
        for request in requests:
            if request.messages is not None:
                text = self._render(request)
                if text is not None:
                    chats.append(request)
                    rendered.append(text)
        texts = [r.prompt for r in plain if r.prompt is not None]  # for the type checker
        counts = self._tokenizer.count(texts, add_special_tokens=True)
        counts += self._tokenizer.count(rendered, add_special_tokens=False)
        too_long: dict[int, RowProblem] = {}
        for request, tokens in zip([*plain, *chats], counts, strict=True):
            if self._context is not None and tokens >= self._context[0]:
                self._too_long += 1
                too_long[request.index] = self._too_long_problem(request, tokens)
            else:
                # Invalid rows are no work: the statistics cover the rows that run.
                self._histogram.add(tokens)
        return too_long

    def _too_long_problem(self, request: Request, tokens: int) -> RowProblem:
        assert self._context is not None
        limit, source = self._context
        field = self._cfg.prompt_field if request.prompt is not None else self._cfg.messages_field
        what = "template" if self._cfg.template is not None else f"field {field!r}"
        where = self._place(request.index, request.line)
        message = (
            f"{where}: {what}: {tokens:,} prompt tokens leave no "
            f"room for output within max_model_len {limit:,} ({source}); run gives this row "
            "a prompt_too_long error: shorten it"
        )
        return RowProblem(request.line, message)

    def _render(self, request: Request) -> str | None:
        from batching.prompt_tokens import ChatTemplateError

        assert request.messages is not None
        if not self._tokenizer.has_chat_template:
            self._chat_skipped += 1
            return None
        try:
            return self._tokenizer.render_chat(request.messages)
        except ChatTemplateError as exc:
            self._template_errors += 1
            if len(self._first_template_errors) < MAX_LISTED_ERRORS:
                where = self._place(request.index, request.line)
                message = f"{where}: the chat template fails on this row ({exc})"
                self._first_template_errors.append(RowProblem(request.line, message))
            return None

    def finish(self) -> TokenStats:
        h = self._histogram
        context = self._context
        return TokenStats(
            tokenizer_dir=self._tokenizer_dir,
            rows=h.count,
            min=h.min,
            median=h.quantile(0.5),
            p95=h.quantile(0.95),
            max=h.max,
            total=h.total,
            max_model_len=None if context is None else context[0],
            max_model_len_from=None if context is None else context[1],
            rows_too_long=None if context is None else self._too_long,
            chat_rows_skipped=self._chat_skipped,
            template_errors=self._template_errors,
            first_template_errors=tuple(self._first_template_errors),
        )
