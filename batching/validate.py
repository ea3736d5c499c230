"""Check an input file without running the model: what `bizra-batch validate` reports.

The rows come through `open_source` and the row schema exactly as in `run`, so a
row `validate` accepts is one `run` accepts, and the other way round. Memory is
bounded as in `run`: rows are read a chunk at a time, and everything kept across
chunks is a counter, a histogram of token counts, or the first few errors.

Given a model directory, it also counts prompt tokens with the model's own
tokenizer (`batching.prompt_tokens`: no vLLM, no torch), which approximates the
tokens vLLM will see closely enough for statistics and planning. A prompt too long
for the model's context is an invalid row then: `run` would give it an error.

>>> report = validate(InputConfig(path="prompts.jsonl"), tokenizer_dir=None,
...                   max_model_len=None, default_max_tokens=256,
...                   max_line_bytes=16 * 1024 * 1024)  # doctest: +SKIP
>>> report.rows, report.invalid  # doctest: +SKIP
(300, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from batching.config import InputConfig
from batching.readers import open_source, row_place
from batching.records import NO_SAMPLING, InvalidRow, Request

if TYPE_CHECKING:
    from batching.prompt_tokens import PromptTokenizer

__all__ = [
    "MAX_LISTED_ERRORS",
    "RowProblem",
    "TokenStats",
    "ValidationReport",
    "format_report",
    "validate",
]

# Enough to see the pattern in a broken file; a file with a million bad rows
# should not print a million lines (or keep them in memory).
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One row's problem; `message` starts with the place (file:line) and names the field."""

    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Prompt token figures from the model's tokenizer, over the valid rows it counted.

    `rows_too_long` counts prompts that leave no room for one output token
    (tokens >= `max_model_len`): `run` gives those a prompt_too_long error, so they
    are among the report's invalid rows too. Chat rows the template could not render
    are not counted; `template_errors` says how many, and `chat_rows_skipped` how
    many went uncounted for want of a template.
    """

    tokenizer_dir: str
    rows: int
    min: int | None
    median: int | None
    p95: int | None
    max: int | None
    total: int
    max_model_len: int | None
    max_model_len_from: str | None
    rows_too_long: int | None
    chat_rows_skipped: int
    template_errors: int
    first_template_errors: tuple[RowProblem, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer_dir": self.tokenizer_dir,
            "rows": self.rows,
            "min": self.min,
            "median": self.median,
            "p95": self.p95,
            "max": self.max,
            "total": self.total,
            "max_model_len": self.max_model_len,
            "max_model_len_from": self.max_model_len_from,
            "rows_too_long": self.rows_too_long,
            "chat_rows_skipped": self.chat_rows_skipped,
            "template_errors": self.template_errors,
            "first_template_errors": [p.to_dict() for p in self.first_template_errors],
        }


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What `validate` found; `ok` when every row is valid.

    With token figures against a context length, a prompt too long for it is
    invalid: counted in `invalid` and listed in `first_errors` like a schema error.
    `warnings` counts what the reader warned about (a field that looks misspelt, a
    repeated custom_id) and `first_warnings` holds the first of those messages;
    they do not make a row invalid.

    `max_new_tokens` is the most the run can generate: each valid row's
    `max_tokens`, or `default_max_tokens` where the row sets none, times its `n`.
    """

    source: str
    rows: int
    valid: int
    invalid: int
    plain_rows: int
    chat_rows: int
    sampling_override_rows: int
    first_errors: tuple[RowProblem, ...]
    default_max_tokens: int
    max_new_tokens: int
    token_stats: TokenStats | None = None
    # Why there are no token figures when a model was given (no tokenizer.json, ...).
    token_stats_skipped: str | None = None
    warnings: int = 0
    first_warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.invalid == 0

    def to_dict(self) -> dict[str, Any]:
        """Every figure, for `--json`; the same keys whether or not a model was given.

        >>> ValidationReport("p.jsonl", 1, 1, 0, 1, 0, 0, (), 256, 256).to_dict()["valid"]
        1
        """
        stats = self.token_stats
        return {
            "input": self.source,
            "ok": self.ok,
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "plain_rows": self.plain_rows,
            "chat_rows": self.chat_rows,
            "sampling_override_rows": self.sampling_override_rows,
            "errors": [p.to_dict() for p in self.first_errors],
            "errors_not_listed": self.invalid - len(self.first_errors),
            "warnings": list(self.first_warnings),
            "warnings_not_listed": self.warnings - len(self.first_warnings),
            "prompt_tokens": None if stats is None else stats.to_dict(),
            "prompt_tokens_skipped": self.token_stats_skipped,
            "work": {
                "prompt_tokens": None if stats is None else stats.total,
                "max_new_tokens": self.max_new_tokens,
                "default_max_tokens": self.default_max_tokens,
            },
        }


def validate(
    cfg: InputConfig,
    *,
    tokenizer_dir: str | None,
    max_model_len: int | None,
    default_max_tokens: int,
    max_line_bytes: int,
    stdin: BinaryIO | None = None,
) -> ValidationReport:
    """Read every row of `cfg`'s input and report on it; raises `InputError` if unreadable.

    `tokenizer_dir`: a local model directory for token figures (None: none).
    `max_model_len`: the context to check prompts against; None takes it from the
    model's config.json. `stdin` replaces `sys.stdin.buffer` for the path "-".

    >>> validate(InputConfig(path="p.jsonl"), tokenizer_dir="samples/tiny-model",
    ...          max_model_len=None, default_max_tokens=256,
    ...          max_line_bytes=16 * 1024 * 1024).token_stats.median  # doctest: +SKIP
    57
    """
    with (
        _reader_warnings() as warnings,
        open_source(cfg, max_line_bytes=max_line_bytes, stdin=stdin) as source,
    ):
        tally: _TokenTally | None = None
        skipped: str | None = None
        if tokenizer_dir is not None:
            try:
                tally = _TokenTally.start(tokenizer_dir, max_model_len, cfg)
            except _Skip as reason:
                skipped = str(reason)
        rows = valid = plain = chat = overrides = max_new_tokens = 0
        errors: list[RowProblem] = []
        for chunk in source.chunks():
            # Counted first: a row too long for the model is invalid, in its place.
            too_long: dict[int, RowProblem] = {}
            if tally is not None:
                too_long = tally.add([row for row in chunk if isinstance(row, Request)])
            for row in chunk:
                rows += 1
                if isinstance(row, InvalidRow) or row.index in too_long:
                    if len(errors) < MAX_LISTED_ERRORS:
                        if isinstance(row, InvalidRow):
                            errors.append(RowProblem(row.line, row.error.message))
                        else:
                            errors.append(too_long[row.index])
                    continue
                valid += 1
                if row.prompt is not None:
                    plain += 1
                else:
                    chat += 1
                if row.sampling != NO_SAMPLING:
                    overrides += 1
                samples = row.sampling.n or 1
                max_new_tokens += samples * (row.sampling.max_tokens or default_max_tokens)
        return ValidationReport(
            source=source.name,
            rows=rows,
            valid=valid,
            invalid=rows - valid,
            plain_rows=plain,
            chat_rows=chat,
            sampling_override_rows=overrides,
            first_errors=tuple(errors),
            default_max_tokens=default_max_tokens,
            max_new_tokens=max_new_tokens,
            token_stats=None if tally is None else tally.finish(),
            token_stats_skipped=skipped,
            warnings=warnings.count,
            first_warnings=tuple(warnings.first),
        )


class _Warnings(logging.Handler):
    """Counts the reader's warnings and keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < MAX_LISTED_ERRORS:
            self.first.append(record.getMessage())


@contextmanager
def _reader_warnings() -> Iterator[_Warnings]:
    """The readers' warnings while reading, for the report instead of stderr.

    They are logged (on "bizra_batch") where `run` shows them on stderr; with a
    handler of ours there, Python's last-resort handler prints none of them twice.
    """
    handler = _Warnings()
    logger = logging.getLogger("bizra_batch")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class _Skip(Exception):
    """No token figures this time; the message tells the user why."""


class _TokenTally:
    """Token counts of the valid rows, fed a chunk at a time."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        tokenizer_dir: str,
        context: tuple[int, str] | None,
        cfg: InputConfig,
    ) -> None:
        from batching.prompt_tokens import TokenHistogram

        self._tokenizer = tokenizer
        self._tokenizer_dir = tokenizer_dir
        self._context = context
        self._cfg = cfg
        # The readers' form of a place, so these read like the schema's messages.
        self._place: Callable[[int], str] = row_place(cfg)
        self._histogram = TokenHistogram()
        self._too_long = 0
        self._chat_skipped = 0
        self._template_errors = 0
        self._first_template_errors: list[RowProblem] = []

    @classmethod
    def start(cls, tokenizer_dir: str, max_model_len: int | None, cfg: InputConfig) -> _TokenTally:
        try:
            # Imported here: tokenizers and jinja2 come with vLLM, and `validate`
            # without --model must work without either.
            from batching.prompt_tokens import PromptTokenizer, TokenizerUnavailable, context_length
        except ImportError as exc:
            raise _Skip(
                f"token statistics need the tokenizers and jinja2 packages ({exc}); "
                "pip install tokenizers jinja2"
            ) from None
        try:
            tokenizer = PromptTokenizer.load(tokenizer_dir)
        except TokenizerUnavailable as exc:
            raise _Skip(str(exc)) from None
        context: tuple[int, str] | None = (max_model_len, "given") if max_model_len else None
        if context is None:
            found = context_length(tokenizer_dir)
            context = None if found is None else (found[0], f"config.json {found[1]}")
        return cls(tokenizer, tokenizer_dir, context, cfg)

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
        message = (
            f"{self._place(request.line)}: field {field!r}: {tokens:,} prompt tokens leave no "
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
                where = self._place(request.line)
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


def format_report(report: ValidationReport) -> str:
    """The report as a few aligned lines of plain text, verdict last.

    >>> print(format_report(ValidationReport("p.jsonl", 1, 1, 0, 1, 0, 0, (), 256, 256)))
    rows                  1 (1 valid, 0 invalid)
      plain prompts       1
      chat                0
      sampling overrides  0
    work
      max new tokens      256 (each row's max_tokens, else 256)
    p.jsonl: every row valid
    """
    lines: list[str] = []
    lines += _listing("warnings", report.warnings, report.first_warnings)
    lines += _listing("invalid rows", report.invalid, [p.message for p in report.first_errors])
    figure = "{:<22}{}".format
    lines.append(
        figure("rows", f"{report.rows:,} ({report.valid:,} valid, {report.invalid:,} invalid)")
    )
    lines.append(figure("  plain prompts", f"{report.plain_rows:,}"))
    lines.append(figure("  chat", f"{report.chat_rows:,}"))
    lines.append(figure("  sampling overrides", f"{report.sampling_override_rows:,}"))
    stats = report.token_stats
    if report.token_stats_skipped is not None:
        lines.append(figure("prompt tokens", f"skipped: {report.token_stats_skipped}"))
    elif stats is not None:
        lines += _token_lines(stats)
    lines.append("work")
    if stats is not None:
        lines.append(figure("  prompt tokens", f"{stats.total:,}"))
    lines.append(
        figure(
            "  max new tokens",
            f"{report.max_new_tokens:,} (each row's max_tokens, else {report.default_max_tokens})",
        )
    )
    if not report.rows:
        verdict = "no rows"
    elif report.ok:
        verdict = "every row valid"
    else:
        verdict = f"{report.invalid:,} of {report.rows:,} rows invalid"
    if report.warnings:
        verdict += f", {report.warnings:,} warning{'' if report.warnings == 1 else 's'}"
    lines.append(f"{report.source}: {verdict}")
    return "\n".join(lines)


def _listing(title: str, count: int, first: Sequence[str]) -> list[str]:
    """A titled list of the first messages, with how many more there are."""
    if not first:
        return []
    lines = [f"{title} ({count:,}):", *(f"  {message}" for message in first)]
    if count > len(first):
        lines.append(f"  ... and {count - len(first):,} more")
    return [*lines, ""]


def _token_lines(stats: TokenStats) -> list[str]:
    figure = "{:<22}{}".format
    lines = [figure("prompt tokens", f"{stats.tokenizer_dir} tokenizer, approximating vLLM")]
    if stats.rows:
        spread = f"{stats.min:,} / {stats.median:,} / {stats.p95:,} / {stats.max:,}"
        lines.append(figure("  min/med/p95/max", spread))
    else:
        lines.append(figure("  rows counted", "0"))
    if stats.max_model_len is not None:
        lines.append(
            figure(
                "  too long",
                f"{stats.rows_too_long:,} (>= max_model_len {stats.max_model_len:,}, "
                f"{stats.max_model_len_from})",
            )
        )
    if stats.chat_rows_skipped:
        lines.append(
            figure(
                "  not counted",
                f"{stats.chat_rows_skipped:,} chat rows: the model has no chat template",
            )
        )
    if stats.template_errors:
        lines.append(figure("  template errors", f"{stats.template_errors:,}"))
        lines += [f"    {problem.message}" for problem in stats.first_template_errors]
        if stats.template_errors > len(stats.first_template_errors):
            lines.append(
                f"    ... and {stats.template_errors - len(stats.first_template_errors):,} more"
            )
    return lines
