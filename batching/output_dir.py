"""`-o DIR/`: one output file per input file, under the same relative name.

Each output is its own writer, crash-safe and resumable on its own exactly as a
single `-o FILE` is (the same writers, the same `scan_output`); one engine runs all
the files, and results, which come back in the order across the files, are routed
to their file's writer by `InputSpans`. A file's writer is opened when its first
result comes (or when the run passes it, for a file with no rows) and closed as
soon as the next file's first result does, so a Parquet output is assembled file by
file and at most one output is open at a time.

An output's name is the input's relative name with its extension replaced by the
output format's: `sub/b.jsonl.gz` -> `DIR/sub/b.jsonl`, `a.parquet` -> `DIR/a.parquet`,
and with `--output-format jsonl`, `a.parquet` -> `DIR/a.jsonl`. The format is
`--output-format`, else the input's own (Parquet stays Parquet, JSON Lines of any
kind become JSON Lines).

>>> output_name("sub/b.jsonl.gz", "jsonl"), output_name("a.parquet", "jsonl")
('sub/b.jsonl', 'a.jsonl')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from batching.config import OutputConfig, RunConfig
from batching.errors import OutputError, UsageError
from batching.existing_output import ExistingOutput, scan_output
from batching.files_source import InputSpans
from batching.inputs import distinct_relatives
from batching.location import InputFormat, Location, OutputFormat
from batching.openai_batch import OpenAIBatchLines
from batching.parquet_format import PARTS_SUFFIX
from batching.records import Result
from batching.result_writer import ResultWriter
from batching.sink import exists_message
from batching.uri import check_remote_output
from batching.writers import open_writer

__all__ = ["FileOutput", "FilesWriter", "MadeDirectories", "output_name", "plan_outputs"]

# Longest first: ".jsonl.gz" must go whole, not leave ".jsonl" behind ".gz".
_INPUT_EXTENSIONS = (
    ".jsonl.gz",
    ".jsonl.zst",
    ".json.gz",
    ".ndjson.gz",
    ".jsonl",
    ".json",
    ".ndjson",
    ".parquet",
    ".pq",
)


def output_name(relative: str, fmt: OutputFormat) -> str:
    """The output's name under the directory for the input named `relative`."""
    lowered = relative.lower()
    stem = relative
    for extension in _INPUT_EXTENSIONS:
        if lowered.endswith(extension):
            stem = relative[: -len(extension)]
            break
    return stem + (".parquet" if fmt == "parquet" else ".jsonl")


@dataclass(frozen=True, slots=True)
class FileOutput:
    """One input file's output: where it goes, and what an earlier run left there."""

    config: OutputConfig
    existing: ExistingOutput | None = None

    @property
    def done(self) -> int:
        """The rows an earlier run wrote (0 without `--resume`)."""
        return self.existing.rows if self.existing is not None else 0

    @property
    def finished(self) -> bool:
        """Whether the output is a whole file already (a Parquet one is assembled
        only at its end); a file with nothing new to write is then left alone."""
        location = self.config.location
        return (
            self.existing is not None
            and location.is_local
            and os.path.isfile(location.path)
            and not os.path.isdir(location.path + PARTS_SUFFIX)
        )


def plan_outputs(config: RunConfig, formats: Sequence[InputFormat]) -> tuple[FileOutput, ...]:
    """Each input file's output under `config.output`'s directory, checked (and, with
    `--resume`, scanned) before the engine starts; makes the directories they need.

    Raises `OutputError` for an output that exists without `--resume`/`--overwrite`.
    """
    output = config.output
    files = config.input.files
    distinct_relatives(files)
    _check_not_inside_input(config)
    outputs = []
    for file, input_fmt in zip(files, formats, strict=True):
        fmt: OutputFormat = output.format or ("parquet" if input_fmt == "parquet" else "jsonl")
        path = _joined(output.location.path, output_name(file.relative, fmt))
        file_config = OutputConfig(
            path=path, format=fmt, overwrite=output.overwrite, resume=output.resume,
            model=output.model,
        )  # fmt: skip
        _check_not_the_input(file_config, file.location)
        _check_not_errors_or_report(file_config, config)
        outputs.append(FileOutput(file_config, _checked(file_config)))
    return tuple(outputs)


def _joined(directory: str, relative: str) -> str:
    return directory.rstrip("/") + "/" + relative


def _checked(cfg: OutputConfig) -> ExistingOutput | None:
    location = cfg.location
    if location.is_remote:
        check_remote_output(location.path, overwrite=cfg.overwrite, resume=cfg.resume)
        return None
    path = location.path
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{parent}: cannot create the directory ({exc.strerror or exc})"
        ) from None
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; the output file for an input goes there")
    if cfg.resume:
        return scan_output(cfg)
    taken = os.path.lexists(path) or os.path.isdir(path + PARTS_SUFFIX)
    if taken and not cfg.overwrite:
        raise OutputError(exists_message(path))
    return None


def _check_not_the_input(cfg: OutputConfig, source: Location) -> None:
    """Refuse an output that is its own input file (`run data/a.jsonl -o data/`):
    --overwrite would empty the file being read."""
    output = cfg.location
    if not (output.is_local and source.is_local and os.path.exists(source.path)):
        return
    if os.path.exists(output.path) and os.path.samefile(output.path, source.path):
        raise UsageError(
            f"{output.path}: the output is the input file {source.name}; write the outputs "
            "to another directory"
        )


def _check_not_errors_or_report(cfg: OutputConfig, config: RunConfig) -> None:
    """Refuse an errors file or report that is one of the outputs: each would write
    over the other."""
    output = cfg.location
    for other, flag in ((config.errors_location, "--errors"), (config.report_location, "--report")):
        if other is None or not other.is_local or not output.is_local:
            continue
        if os.path.realpath(other.path) == os.path.realpath(output.path):
            raise UsageError(
                f"{other.path}: {flag} names one of the outputs; give {flag} a path outside "
                "the output directory"
            )


def _check_not_inside_input(config: RunConfig) -> None:
    """Refuse an output directory inside an input directory: its outputs would be
    read as inputs by the next run over that directory (and its --resume)."""
    output = config.output.location
    if not output.is_local:
        return
    out = os.path.realpath(output.path)
    for given in (config.input.path, *config.input.more_paths):
        if os.path.isdir(given):
            root = os.path.realpath(given)
            if out == root or out.startswith(root + os.sep):
                raise UsageError(
                    f"{config.output.path}: the output directory is inside the input "
                    f"directory {given}; the next run would read its outputs as inputs: "
                    "write them elsewhere"
                )


class MadeDirectories:
    """On a failed run, removes the output directory (and its subfolders) that the
    run made and left empty: a model that would not load must not leave an empty
    `DIR/` that looks like a finished run of an input with no rows.

    Only folders that did not exist when the run began, and only empty ones.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._made = not os.path.lexists(directory)

    def __call__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if not self._made or exc_type is None or not issubclass(exc_type, Exception):
            return False  # success, or an interrupt: what was made stays for --resume
        for folder, _subfolders, _files in os.walk(self._directory, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
        return False


class FilesWriter(ResultWriter):
    """Results across the files in, each written to its file's output.

    `close()` (a run that ended well) finishes every output, making the empty
    output of a file with no rows; leaving a `with` block by an exception ends
    only the open output, as its own writer does on an exception (a Parquet
    output keeps its parts for `--resume`).
    """

    def __init__(self, outputs: Sequence[FileOutput], spans: InputSpans) -> None:
        super().__init__(str(outputs[0].config.location.path) if outputs else "")
        self._outputs = tuple(outputs)
        self._spans = spans
        self._next = 0  # outputs before this one are finished
        self._writer: ResultWriter | None = None  # file `_next`'s, once opened
        self.closed = False

    def write(self, results: Sequence[Result]) -> None:
        start = 0
        while start < len(results):
            number = self._spans.file_of(results[start].index)
            end = start + 1
            while end < len(results) and self._spans.file_of(results[end].index) == number:
                end += 1
            writer = self._writer_for(number)
            writer.write(results[start:end])
            self.rows_written += end - start
            start = end

    def flush(self, durable: bool = False) -> None:
        if self._writer is not None:
            self._writer.flush(durable=durable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish_before(len(self._outputs))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        self.closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.__exit__(exc_type, exc, tb)

    def _writer_for(self, number: int) -> ResultWriter:
        if self._writer is None or number != self._next:
            self._finish_before(number)
            self._writer = self._open(number)
        return self._writer

    def _finish_before(self, number: int) -> None:
        """Close the open output and finish every output before file `number`'s."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            # On disk before the run moves on: a finished file is usable, and a
            # --resume after a power cut finds it whole.
            writer.flush(durable=True)
            writer.close()
            self._next += 1
        for passed in range(self._next, number):
            if not self._outputs[passed].finished:
                # No new rows: still an output for its input (empty, or assembled).
                self._open(passed).close()
        self._next = max(self._next, number)

    def _open(self, number: int) -> ResultWriter:
        output = self._outputs[number]
        cfg = output.config
        if output.existing is None and cfg.resume:
            # Nothing there to continue: a new output.
            cfg = OutputConfig(path=cfg.path, format=cfg.format, model=cfg.model)
        openai_lines = None
        if cfg.format == "openai":
            # A resumed output's lines keep their run token, as a single output's do.
            token = output.existing.id_token if output.existing is not None else None
            openai_lines = OpenAIBatchLines(cfg.model, token=token)
        return open_writer(cfg, openai_lines=openai_lines)
