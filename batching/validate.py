"""Check an input file without running the model: what `bizra-batch validate` reports.

The rows come through `open_source` and the row schema exactly as in `run`, so a
row `validate` accepts is one `run` accepts, and the other way round. Memory is
bounded as in `run`: rows are read a chunk at a time, and everything kept across
chunks is a counter, a histogram of token counts, or the first few errors.

Given a model directory, it also counts prompt tokens with the model's own
tokenizer (`batching.prompt_tokens`: no vLLM, no torch), which approximates the
tokens vLLM will see closely enough for statistics and planning. A prompt too long
for the model's context is an invalid row then: `run` would give it an error.

>>> with open("prompts.jsonl", "wb") as prompts:
...     _ = prompts.write(b'{"prompt": "Hi"}\\n{"prompt": 5}\\n')
>>> report = validate(InputConfig(path="prompts.jsonl"), tokenizer_dir=None,
...                   max_model_len=None, default_max_tokens=256,
...                   max_line_bytes=16 * 1024 * 1024)
>>> report.rows, report.invalid
(2, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from batching.config import InputConfig
from batching.readers import open_source, rows_place
from batching.records import NO_SAMPLING, InvalidRow, Request
from batching.token_figures import (
    MAX_LISTED_ERRORS,
    NoTokenFigures,
    RowProblem,
    TokenStats,
    TokenTally,
)

__all__ = [
    "MAX_LISTED_ERRORS",
    "RowProblem",
    "TokenStats",
    "ValidationReport",
    "format_report",
    "validate",
]


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
    With a model's tokenizer (not run as a test: it needs the model's files):

    >>> validate(InputConfig(path="p.jsonl"), tokenizer_dir="samples/tiny-model",
    ...          max_model_len=None, default_max_tokens=256,
    ...          max_line_bytes=16 * 1024 * 1024).token_stats.median  # doctest: +SKIP
    57
    """
    with (
        _reader_warnings() as warnings,
        open_source(cfg, max_line_bytes=max_line_bytes, stdin=stdin) as source,
    ):
        tally: TokenTally | None = None
        skipped: str | None = None
        if tokenizer_dir is not None:
            try:
                tally = TokenTally.start(tokenizer_dir, max_model_len, cfg, rows_place(source, cfg))
            except NoTokenFigures as reason:
                skipped = str(reason)
        rows = valid = plain = chat = overrides = max_new_tokens = 0
        errors: list[RowProblem] = []
        for chunk in source.chunks():
            # Counted first: a row too long for the model is invalid, in its place.
            too_long: dict[int, RowProblem] = {}
            if tally is not None:
                # A score row's pairs are tokenized together by the model's
                # cross-encoder, which the tokenizer alone does not reproduce: not counted.
                too_long = tally.add(
                    [
                        row
                        for row in chunk
                        if isinstance(row, Request) and (row.pooling is None or row.prompt)
                    ]
                )
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
                if row.prompt is not None or row.pooling is not None:  # a pair is no chat
                    plain += 1
                else:
                    chat += 1
                if row.sampling != NO_SAMPLING:
                    overrides += 1
                if row.pooling is not None:
                    continue  # a pooling row generates nothing
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
