"""`bizra-batch validate`: options -> InputConfig -> `batching.validate.validate`."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from batching.lora import LoraAdapters
from cli.config_file import ConfigOption
from cli.exit_codes import FAILED, OK, exit_on_error
from cli.options import (
    DEFAULT_MAX_LINE_BYTES,
    OUTPUT,
    AllowedMediaPath,
    AllowRemoteMedia,
    ChatOption,
    IdField,
    InputFormatOption,
    LoraOption,
    MaxLineBytes,
    MessagesField,
    PromptField,
    SystemOption,
    TaskOption,
    TemplateFileOption,
    TemplateOption,
    input_config,
)

__all__ = ["validate"]

MODEL = "Model (optional: prompt token statistics, prompts too long for it)"


def validate(
    input_path: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            help="JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet file or URI; - for stdin. "
            "Several: files, "
            "directories or quoted globs, checked in order as one input, as run reads them.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            envvar="BIZRA_BATCH_MODEL",
            help="Local model directory: count prompt tokens with its tokenizer.json and "
            "chat template (vLLM and torch are not loaded); a prompt too long for its "
            "context is an invalid row.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Check prompts against this context. Default: the model's config.json.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=1, help="Default max new tokens per row, as in run.", rich_help_panel=MODEL
        ),
    ] = 256,
    input_format: InputFormatOption = None,
    prompt_field: PromptField = "prompt",
    messages_field: MessagesField = "messages",
    id_field: IdField = "id",
    template: TemplateOption = None,
    template_file: TemplateFileOption = None,
    chat: ChatOption = False,
    system: SystemOption = None,
    task: TaskOption = None,
    max_line_bytes: MaxLineBytes = DEFAULT_MAX_LINE_BYTES,
    lora: LoraOption = None,
    allowed_media_path: AllowedMediaPath = None,
    allow_remote_media: AllowRemoteMedia = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            # Named after the option: the parameter's name would make it _JSON_OUTPUT.
            envvar="BIZRA_BATCH_JSON",
            help="Print the report as JSON (all figures).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Check every row of a file against the schema run uses, without running the model.

    Prints the report on stdout: counts of rows (valid, invalid, plain, chat, with
    sampling overrides), the first 20 invalid rows with file:line and field, the work
    ahead and, with --model, prompt token statistics. A prompt too long for that
    model's context is an invalid row too: run would fail it.

    Exit codes: 0 every row valid; 1 invalid rows found (too-long prompts included);
    2 usage error or unreadable input.
    """
    from batching.validate import format_report
    from batching.validate import validate as validate_input

    with exit_on_error():
        # Inside: the config refuses a path it cannot resolve (file://host/).
        config = input_config(
            input_path[0], input_format, prompt_field, messages_field, id_field,
            template=template, template_file=template_file, chat=chat, system=system,
            more_paths=tuple(input_path[1:]),
            adapter_names=LoraAdapters.parse(lora).names,
            allowed_media_path=allowed_media_path, allow_remote_media=allow_remote_media,
            task=task,
        )  # fmt: skip
        report = validate_input(
            config,
            tokenizer_dir=model or None,  # an empty BIZRA_BATCH_MODEL means none
            max_model_len=max_model_len,
            default_max_tokens=max_tokens,
            max_line_bytes=max_line_bytes,
        )
    if json_output:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        if report.token_stats_skipped is not None:
            # JSON readers rarely look at a null; say it where a person will see it.
            sys.stderr.write(f"bizra-batch: note: {report.token_stats_skipped}\n")
    else:
        sys.stdout.write(format_report(report) + "\n")
    raise typer.Exit(OK if report.ok else FAILED)
