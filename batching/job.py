"""One job: the files around the pipeline (input, output, lock, resume, errors file).

`run` is what the CLI calls and what a program calls to run a file end to end;
`pipeline.run_rows` is the engine loop inside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol

from batching.config import OutputConfig, RunConfig
from batching.engine import EngineFactory
from batching.errors import OutputError, UsageError
from batching.files_source import FilesSource, check_openable
from batching.jsonl_source import JsonlSource
from batching.location import InputFormat, Location
from batching.openai_batch import OpenAIBatchLines, same_custom_id
from batching.output_dir import FilesWriter, MadeDirectories, plan_outputs
from batching.output_format import output_format
from batching.parquet_format import PARTS_SUFFIX
from batching.pipeline import run_rows
from batching.prefetch import LiveSupply, PrefetchedSupply
from batching.protocols import ProgressSink, ResultSink, RowSupply
from batching.readers import (
    RowPlace,
    RowSource,
    input_format,
    is_local_pipe,
    open_source,
    rows_place,
)
from batching.records import InvalidRow, Result, Row
from batching.report import Report, ReportCollector
from batching.resume import OutputLock, ResumedSupply
from batching.retry import RetryPolicy
from batching.sink import exists_message
from batching.uri import check_remote_output
from batching.validate import MAX_LISTED_ERRORS
from batching.writers import ExistingOutput, ResultWriter, open_writer, scan_output

__all__ = ["RowsRunner", "check_input_files", "open_errors_file", "run", "run_to_directory"]

# How many bad rows `--on-invalid abort` lists before it stops.
INVALID_ROWS_LISTED = 5


class RowsRunner(Protocol):
    """What turns the rows into results: `run_rows` here, or another runner (Ray).

    `place` names a row (index, line) in the messages of rows the engine refuses:
    the source's own rule, so with several files each names its file.
    """

    def __call__(
        self,
        supply: RowSupply,
        sink: ResultSink,
        engine_factory: EngineFactory,
        config: RunConfig,
        *,
        progress: ProgressSink | None = None,
        retry: RetryPolicy | None = None,
        report: ReportCollector | None = None,
        start_index: int = 0,
        place: RowPlace | None = None,
    ) -> Report: ...


def run(
    config: RunConfig,
    engine_factory: EngineFactory,
    *,
    progress: ProgressSink | None = None,
    retry: RetryPolicy | None = None,
    report: ReportCollector | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    rows_runner: RowsRunner = run_rows,
) -> Report:
    """Read `config.input`, run it, write `config.output`; return the report.

    `rows_runner` runs the rows between the files (`batching.ray.runner` on Ray); the
    lock, resume checks, errors file and writers stay the same either way.

    >>> from batching import FakeEngine, InputConfig, OutputConfig, RunConfig
    >>> with open("in.jsonl", "wb") as prompts:
    ...     _ = prompts.write(b'{"prompt": "Hi"}\\n{"prompt": ""}\\n')
    >>> report = run(RunConfig(input=InputConfig("in.jsonl"), output=OutputConfig("out.jsonl")),
    ...              FakeEngine)
    >>> report.rows_ok, report.rows_failed
    (1, 1)
    """
    output = config.output
    if output.is_directory:
        return run_to_directory(
            config, engine_factory, progress=progress, retry=retry, report=report,
            rows_runner=rows_runner,
        )  # fmt: skip
    with contextlib.ExitStack() as stack:
        # Everything that can fail on the user's files fails here, before the engine
        # starts: a wrong path should cost milliseconds, not a minute of model loading.
        check_input_files(config)
        _check_remote_outputs(config)
        _check_distinct_files(config)
        _check_local_targets(config)
        _check_errors_file_free(config)
        _check_formats(config)
        if output.location.is_local:
            stack.enter_context(OutputLock(output.location.path))
        # Runs after the writers close, while the lock (if any) is still held.
        stack.push(_UntouchedOutputs(config))
        existing = scan_output(output) if output.resume else None
        if config.on_invalid == "abort":
            stdin = _check_every_row(config, stdin, stack)
        source = stack.enter_context(
            open_source(config.input, max_line_bytes=config.max_line_bytes, stdin=stdin)
        )
        openai_lines = None
        if output.written_format == "openai":
            token = existing.id_token if existing is not None else None
            openai_lines = OpenAIBatchLines(output.model, token=token)
        writer = stack.enter_context(
            open_writer(output, stdout=stdout, openai_lines=openai_lines, existing=existing)
        )
        supply: RowSupply = _SourceSupply(source)
        done = 0
        if existing is not None and existing.rows:
            done = existing.rows
            supply = ResumedSupply(
                supply,
                done=done,
                ids=existing.ids(),
                output=writer.name,
                same_id=same_custom_id if existing.format == "openai" else None,
            )
        if isinstance(source, JsonlSource) and source.live:
            # A pipe (stdin): rows go to the engine as they arrive, not at EOF.
            supply = LiveSupply(
                supply,
                chunk_size=config.input.chunk_size,
                max_wait_s=config.max_wait_ms / 1000.0,
            )
        else:
            supply = PrefetchedSupply(supply)
        if existing is not None:
            # Made here if the caller gave none, so the rows kept are counted in it.
            report = report if report is not None else ReportCollector()
            report.record_resumed_rows(done)
        sink: ResultSink = writer
        if config.errors_location is not None:
            resumed = () if existing is None else (existing,)
            errors = stack.enter_context(open_errors_file(config, resumed, openai_lines))
            sink = _ErrorsTee(writer, errors)
        finished = rows_runner(
            supply,
            sink,
            engine_factory,
            config,
            progress=progress,
            retry=retry,
            report=report,
            start_index=done,
            place=rows_place(source, config.input),
        )
        return _with_input_digests(finished, report, source)


def run_to_directory(
    config: RunConfig,
    engine_factory: EngineFactory,
    *,
    progress: ProgressSink | None = None,
    retry: RetryPolicy | None = None,
    report: ReportCollector | None = None,
    rows_runner: RowsRunner = run_rows,
) -> Report:
    """`run` for `-o DIR/`: one output per input file (`batching.output_dir`).

    One engine runs every file's rows, numbered across the files; each output is
    locked with the directory (one `DIR/.lock`), checked, and with `--resume` continued
    after its own last complete row: a file whose output is whole is only read,
    to check its rows' ids against the output's.

    >>> import os
    >>> from batching import FakeEngine, InputConfig, OutputConfig, RunConfig
    >>> os.makedirs("shards", exist_ok=True)
    >>> for name in ("a", "b"):
    ...     with open(f"shards/{name}.jsonl", "wb") as shard:
    ...         _ = shard.write(b'{"prompt": "Hi"}\\n')
    >>> report = run(RunConfig(InputConfig("shards"), OutputConfig("out/")), FakeEngine)
    >>> report.rows_ok, sorted(os.listdir("out"))
    (2, ['a.jsonl', 'b.jsonl'])
    """
    output = config.output
    if config.input.location.is_stdio:
        raise UsageError(
            f"{output.path}: an output directory takes an output per input file, and "
            "stdin has no file name; pass -o FILE"
        )
    with contextlib.ExitStack() as stack:
        formats = check_input_files(config)
        _check_remote_outputs(config)
        _check_distinct_files(config)
        _check_local_targets(config)
        _check_errors_file_free(config)
        _check_formats(config)
        if output.location.is_local:
            directory = output.location.path
            # Runs after the outputs close and the lock is gone.
            stack.push(MadeDirectories(directory))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise OutputError(
                    f"{directory}: cannot create the output directory ({exc.strerror or exc})"
                ) from None
            stack.enter_context(OutputLock(os.path.join(directory, "")))
        outputs = plan_outputs(config, formats)
        if config.on_invalid == "abort":
            _check_every_row(config, None, stack)

        def rows_of(number: int, rows: RowSupply) -> RowSupply:
            existing = outputs[number].existing
            if existing is None or not existing.rows:
                return rows
            return ResumedSupply(
                rows,
                done=existing.rows,
                ids=existing.ids(),
                output=outputs[number].config.location.path,
                same_id=same_custom_id if existing.format == "openai" else None,
            )

        source = stack.enter_context(
            FilesSource(config.input, max_line_bytes=config.max_line_bytes, rows_of=rows_of)
        )
        writer = stack.enter_context(FilesWriter(outputs, source.spans))
        resumed = [file.existing for file in outputs if file.existing is not None]
        done = sum(file.rows for file in resumed)
        if output.resume:
            report = report if report is not None else ReportCollector()
            report.record_resumed_rows(done)
        sink: ResultSink = writer
        if config.errors_location is not None:
            errors = stack.enter_context(open_errors_file(config, resumed, None))
            sink = _ErrorsTee(writer, errors)
        finished = rows_runner(
            PrefetchedSupply(_SourceSupply(source, resumed_rows=done)),
            sink,
            engine_factory,
            config,
            progress=progress,
            retry=retry,
            report=report,
            place=rows_place(source, config.input),
        )
        return _with_input_digests(finished, report, source)


def _with_input_digests(
    finished: Report, report: ReportCollector | None, source: RowSource
) -> Report:
    """The run's report with the inputs' digests in its manifest: known only now,
    as the sources hash the bytes while reading them (no second pass)."""
    if report is None:
        return finished
    report.record_input_digests(source.input_digests())
    return report.finish()


def check_input_files(config: RunConfig) -> list[InputFormat]:
    """The format of each input file; `UsageError` before the engine starts for a file
    whose format is unknown or that is not there, or for files of two formats bound
    for one output file (name it -o DIR/ for one output per input)."""
    cfg = config.input
    if not cfg.several and not config.output.is_directory:
        return []  # one file to one output: read (and refused) as always, when opened
    check_openable(cfg.files)
    formats = [input_format(file.location, cfg.format) for file in cfg.files]
    if not config.output.is_directory and len(set(formats)) > 1:
        first = cfg.files[0]
        other = next(f for f, fmt in zip(cfg.files, formats, strict=True) if fmt != formats[0])
        where = "stdout" if config.output.location.is_stdio else config.output.path
        raise UsageError(
            f"{first.name} and {other.name}: JSON Lines and Parquet inputs cannot go to one "
            f"output ({where}); pass -o DIR/ for one output per input file, or run each "
            "format on its own"
        )
    return formats


class _UntouchedOutputs:
    """On a failed run, removes the output (and errors file) it made and wrote nothing
    to: a model that would not load, or an input that turned out unreadable, left an
    empty output behind, and the corrected command was then refused for it.

    Only paths that did not exist when the run began: a file --overwrite emptied, or
    a symlink to one, is the user's, and the same command still runs over it."""

    def __init__(self, config: RunConfig) -> None:
        output = config.output
        self._files: list[str] = []  # made by this run
        for location in _local((output.location, config.errors_location)):
            if not output.resume and not os.path.lexists(location.path):
                self._files.append(location.path)
        # A Parquet output is a parts directory until the run ends.
        self._parts = None
        parquet = output.written_format == "parquet"
        if parquet and output.location.path in self._files:
            self._parts = output.location.path + PARTS_SUFFIX

    def __call__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is None or not issubclass(exc_type, Exception):
            return False  # success, or an interrupt: what was made stays for --resume
        for path in self._files:
            with contextlib.suppress(OSError):
                made = os.path.isfile(path) and not os.path.islink(path)
                if made and os.path.getsize(path) == 0:
                    os.remove(path)
        if self._parts is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._parts)  # only if it holds no part
        return False


def _local(locations: Sequence[Location | None]) -> list[Location]:
    """The local files among `locations` (not stdio, not remote, not unset)."""
    return [location for location in locations if location is not None and location.is_local]


def _check_distinct_files(config: RunConfig) -> None:
    """Refuse an output or errors file that is the input, or each other: writing
    over the file being read truncates it, and appending to it feeds the run its
    own output without end (12 GB in ten minutes, seen)."""
    sources = [file.location for file in config.input.files]
    errors = config.errors_location
    # An output directory's files are checked against the inputs when planned.
    output = None if config.output.is_directory else config.output.location
    errors_file = errors.path if errors is not None and errors.is_local else None
    if (
        errors_file
        and output is not None
        and output.is_local
        and _same_file(output.path, errors_file)
    ):
        raise UsageError(
            f"{errors_file}: the errors file is the output; give --errors another path"
        )
    for source in _local(sources):
        for target, what in ((output, "output"), (errors, "errors file")):
            if target is not None and target.is_local and _same_file(target.path, source.path):
                raise UsageError(
                    f"{target.path}: the {what} is the input file; write it to another path"
                )
    # The report is written over at the end of the run, whatever file it names.
    report = config.report_location
    if report is None or not report.is_local:
        return
    others = [(source, "input file") for source in sources]
    for other, what in (*others, (output, "output"), (errors, "errors file")):
        if other is not None and other.is_local and _same_file(report.path, other.path):
            raise UsageError(f"{report.path}: the report is the {what}; give --report another path")


def _check_local_targets(config: RunConfig) -> None:
    """Refuse a local output, errors file or report that could not be created, before
    the engine starts: a report found unwritable only at the end lost the summary
    of a finished run, and a missing directory surfaced as the lock file's error."""
    output = None if config.output.is_directory else config.output.location
    targets = (output, config.errors_location, config.report_location)
    for target in _local(targets):
        path = target.path
        if os.path.isdir(path):
            raise OutputError(f"{path}: is a directory; name a file")
        parent = os.path.dirname(path) or "."
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise OutputError(f"{path}: {parent} is a file, not a directory")
        if not os.path.isdir(parent):
            raise OutputError(f"{path}: directory {parent} does not exist; create it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: permission denied in {parent}; write somewhere else")


def _check_errors_file_free(config: RunConfig) -> None:
    """Refuse an existing local errors file before the output is made: found only
    when it is opened, after the output, it left an empty output behind that the
    next try was refused for."""
    errors, output = config.errors_location, config.output
    if errors is None or not errors.is_local or output.overwrite or output.resume:
        return
    if os.path.lexists(errors.path):
        raise OutputError(exists_message(errors.path))


def _check_formats(config: RunConfig) -> None:
    """Refuse an output or errors file whose format cannot be written to its name
    before either is made (the errors file is opened after the output)."""
    errors_format = config.errors_format  # asks the output's format first
    if config.errors_location is not None:
        output_format(config.errors_location, errors_format)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)  # links and hard links too
    except OSError:  # one does not exist yet
        return os.path.realpath(first) == os.path.realpath(second)


def _check_remote_outputs(config: RunConfig) -> None:
    """Refuse a remote output (or errors file) that exists, or `--resume` of one,
    before any output is opened: a refused errors file must not leave the output
    written, since an object store has no way to take it back."""
    output, errors = config.output, config.errors_location
    if output.location.is_remote and not output.is_directory:  # its files: plan_outputs
        check_remote_output(output.location.path, overwrite=output.overwrite, resume=output.resume)
    if errors is not None and errors.is_remote:
        overwrite = output.overwrite or output.resume
        check_remote_output(errors.path, overwrite=overwrite, resume=False)


class _SourceSupply:
    def __init__(self, source: RowSource, *, resumed_rows: int = 0) -> None:
        self.source = source
        # Rows read but skipped per file (`-o DIR/ --resume`): the rows numbered for
        # the run start after none of them, so the total leaves them out.
        self._resumed_rows = resumed_rows

    def chunks(self) -> Iterator[list[Row]]:
        return self.source.chunks()

    def estimated_total_rows(self) -> int | None:
        """Exact for Parquet; for a file, extrapolated from the share of bytes read."""
        source = self.source
        if source.total_rows is not None:
            return int(source.total_rows) - self._resumed_rows
        if source.total_bytes and source.bytes_read:
            estimate = round(source.rows_read * source.total_bytes / source.bytes_read)
            return max(source.rows_read, estimate) - self._resumed_rows
        return None


class _ErrorsTee:
    """The output, plus every failed row again in the errors file."""

    def __init__(self, main: ResultWriter, errors: ResultWriter) -> None:
        self.main = main
        self.errors = errors

    def write(self, results: Sequence[Result]) -> None:
        self.main.write(results)
        failed = [result for result in results if not result.ok]
        if failed:
            self.errors.write(failed)

    def flush(self, durable: bool = False) -> None:
        self.main.flush(durable=durable)
        self.errors.flush(durable=durable)


@contextlib.contextmanager
def open_errors_file(
    config: RunConfig,
    existing: Sequence[ExistingOutput],
    openai_lines: OpenAIBatchLines | None,
) -> Iterator[ResultWriter]:
    """The errors file, replaced whenever the output is replaced or continued.

    On resume it is rewritten from the failed rows the outputs already hold
    (`existing`, as scanned once for the resume, in input order), so
    the two can never disagree whatever moment the earlier run died at.
    """
    output = config.output
    errors_config = OutputConfig(
        path=config.errors_path,
        format=config.errors_format,
        overwrite=output.overwrite or output.resume,
        model=output.model,
    )
    with open_writer(errors_config, openai_lines=openai_lines) as errors:
        for earlier in existing:
            for batch in earlier.failed_rows():
                errors.write(batch)
        if any(earlier.rows for earlier in existing):
            errors.flush(durable=True)
        yield errors


def _check_every_row(
    config: RunConfig, stdin: BinaryIO | None, stack: contextlib.ExitStack
) -> BinaryIO | None:
    """`--on-invalid abort`: read the whole input once and stop if any row is bad.

    Standard input can be read only once, so it is first copied to a temporary
    file (on disk, not in memory), which the run then reads.
    """
    given = config.input.location
    if is_local_pipe(given):
        # Opening a named pipe a second time would wait for a writer that is gone.
        raise UsageError(
            f"{given.name}: --on-invalid abort reads the input twice, and a pipe "
            "can be read once; pipe it to stdin instead (`... | bizra-batch run - "
            "--on-invalid abort`) or save it to a file first"
        )
    if given.is_stdio:
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="bizra-batch-stdin-"))  # noqa: SIM115
        shutil.copyfileobj(stdin or sys.stdin.buffer, spool, length=1 << 20)
        spool.seek(0)
        stdin = spool
    bad: list[str] = []
    count = 0
    with open_source(config.input, max_line_bytes=config.max_line_bytes, stdin=stdin) as source:
        for chunk in source.chunks():
            for row in chunk:
                if isinstance(row, InvalidRow):
                    count += 1
                    if len(bad) < INVALID_ROWS_LISTED:
                        bad.append(row.error.message)
    if count:
        listing = "\n  ".join(bad)
        more = ""
        if count > len(bad):
            more = (
                f"\n  ... and {count - len(bad)} more (bizra-batch validate lists up to "
                f"{MAX_LISTED_ERRORS})"
            )
        raise UsageError(
            f"{count} invalid input rows; nothing was run (--on-invalid abort):\n  "
            f"{listing}{more}\nFix them, or run without --on-invalid abort to get error "
            "records for them and results for the rest"
        )
    if stdin is not None:
        stdin.seek(0)
    return stdin
