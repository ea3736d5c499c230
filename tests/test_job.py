"""A whole job on the fake engine: resume, lock, errors file, --on-invalid abort."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import EngineStartError, OutputError, UsageError
from batching.job import run
from batching.records import Sampling
from batching.resume import OutputLock
from batching.testing import FakeEngine


def write_prompts(path: Path, count: int, bad: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    lines = []
    for i in range(count):
        lines.append(b"{broken" if i in bad else orjson.dumps({"id": f"r{i}", "prompt": f"p{i}"}))
    path.write_bytes(b"\n".join(lines) + b"\n")


def config(source: Path, out: Path, **kwargs: object) -> RunConfig:
    output = OutputConfig(
        path=str(out),
        resume=bool(kwargs.pop("resume", False)),
        overwrite=bool(kwargs.pop("overwrite", False)),
    )
    return RunConfig(
        input=InputConfig(path=str(source), chunk_size=7),
        output=output,
        sampling=Sampling(max_tokens=50),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_after_a_crash_gives_the_uninterrupted_output(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "in.jsonl"
    write_prompts(source, 100)
    reference = tmp_path / f"reference{suffix}"
    run(config(source, reference), FakeEngine)

    out = tmp_path / f"out{suffix}"
    crashing = FakeEngine(die_at_step=6)
    with pytest.raises(Exception, match="died"):
        run(config(source, out, max_engine_restarts=0), lambda: crashing)
    report = run(config(source, out, resume=True), FakeEngine)
    assert 0 < report.rows < 100  # only the rest ran
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_re_reads_ids_and_row_numbers_that_collide_the_same_way(
    tmp_path: Path, suffix: str
) -> None:
    # Every fifth row has no id; the row after it takes that row number (refused),
    # and the row before it takes it first (so the row without id is refused).
    ids = {0: None, 1: -1, 4: 1}
    rows = [
        {"prompt": f"p{i}", **({} if (n := ids.get(i % 5, 0)) is None else {"id": i + n})}
        for i in range(100)
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    reference = tmp_path / f"reference{suffix}"
    assert run(config(source, reference), FakeEngine).rows_failed == 39

    out = tmp_path / f"out{suffix}"
    crashing = FakeEngine(die_at_step=6)
    with pytest.raises(Exception, match="died"):
        run(config(source, out, max_engine_restarts=0), lambda: crashing)
    report = run(config(source, out, resume=True), FakeEngine)
    assert 0 < report.rows < 100
    assert out.read_bytes() == reference.read_bytes()


def test_resume_drops_a_torn_last_line(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 30)
    run(config(source, out), FakeEngine)
    reference = out.read_bytes()
    lines = reference.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:12]) + lines[12][:9])  # killed mid-write
    report = run(config(source, out, resume=True), FakeEngine)
    assert report.rows == 18
    assert report.rows_resumed == 12  # the torn 13th line is run again
    assert out.read_bytes() == reference


def test_resume_of_a_finished_output_runs_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 10)
    run(config(source, out), FakeEngine)
    started: list[FakeEngine] = []

    def factory() -> FakeEngine:
        started.append(FakeEngine())
        return started[-1]

    report = run(config(source, out, resume=True), factory)
    assert report.rows == 0 and started == []  # the model never loaded
    assert report.rows_resumed == 10
    assert report.requests_per_second is None  # nothing ran: no rate, not 0.0


def test_resume_refuses_the_output_of_another_input(tmp_path: Path) -> None:
    source, other, out = tmp_path / "in.jsonl", tmp_path / "other.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 10)
    other.write_bytes(b'{"id": "x", "prompt": "p"}\n' * 1)
    run(config(other, out), FakeEngine)
    before = out.read_bytes()
    with pytest.raises(UsageError, match=r"row 1 has id 'x' but input row 1 has id 'r0'"):
        run(config(source, out, resume=True), FakeEngine)
    assert out.read_bytes() == before


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 5)
    with OutputLock(str(out)), pytest.raises(OutputError, match="another bizra-batch run"):
        run(config(source, out), FakeEngine)
    assert not out.exists()
    run(config(source, out), FakeEngine)  # the lock went with its holder
    assert len(out.read_bytes().splitlines()) == 5


def test_errors_file_holds_the_failed_rows_which_stay_in_the_output(tmp_path: Path) -> None:
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    write_prompts(source, 20, bad={3, 11})
    run(config(source, out, errors_path=str(errors)), FakeEngine)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    failed = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert len(rows) == 20
    assert [r["id"] for r in failed] == [3, 11]
    assert failed == [rows[3], rows[11]]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_errors_file_is_consistent_after_a_resume(tmp_path: Path, suffix: str) -> None:
    source, errors = tmp_path / "in.jsonl", tmp_path / "err.jsonl"
    write_prompts(source, 60, bad={2, 40})
    reference_errors = tmp_path / "ref-err.jsonl"
    run(config(source, tmp_path / f"ref{suffix}", errors_path=str(reference_errors)), FakeEngine)
    out = tmp_path / f"out{suffix}"
    with pytest.raises(Exception, match="died"):
        run(
            config(source, out, errors_path=str(errors), max_engine_restarts=0),
            lambda: FakeEngine(die_at_step=5),
        )
    run(config(source, out, errors_path=str(errors), resume=True), FakeEngine)
    assert errors.read_bytes() == reference_errors.read_bytes()


def test_on_invalid_abort_lists_bad_rows_before_the_engine_starts(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 20, bad={4, 9})
    started: list[int] = []

    def factory() -> FakeEngine:
        started.append(1)
        return FakeEngine()

    with pytest.raises(UsageError) as caught:
        run(config(source, out, on_invalid="abort"), factory)
    message = str(caught.value)
    assert message.startswith("2 invalid input rows")
    assert "in.jsonl:5" in message and "in.jsonl:10" in message
    assert "more" not in message
    assert started == []


def test_on_invalid_abort_says_how_to_see_rows_it_does_not_list(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 20, bad=set(range(8)))
    with pytest.raises(UsageError) as caught:
        run(config(source, out, on_invalid="abort"), FakeEngine)
    message = str(caught.value)
    assert message.count("not valid JSON") == 5
    assert "... and 3 more (bizra-batch validate lists up to 20)" in message


def test_on_invalid_abort_on_stdin_still_runs_a_clean_input(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps({"prompt": f"p{i}"}) + b"\n" for i in range(5))
    out = io.BytesIO()
    cfg = RunConfig(input=InputConfig(path="-"), on_invalid="abort")
    report = run(cfg, FakeEngine, stdin=io.BytesIO(data), stdout=out)
    assert report.rows == 5
    assert [orjson.loads(line)["output"] for line in out.getvalue().splitlines()] == [
        f"p{i}"[::-1] for i in range(5)
    ]


@pytest.mark.parametrize("target", ["output", "errors"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(
    tmp_path: Path, target: str
) -> None:
    # Writing over the file being read would truncate it, or, appended to, feed the
    # run its own output forever.
    source = tmp_path / "in.jsonl"
    write_prompts(source, 5)
    before = source.read_bytes()
    same = str(tmp_path / "." / "in.jsonl")
    if target == "output":
        cfg = config(source, Path(same), overwrite=True)
    else:
        cfg = config(source, tmp_path / "out.jsonl", errors_path=same)
    with pytest.raises(UsageError, match=r"in\.jsonl: .*is the input"):
        run(cfg, FakeEngine)
    assert source.read_bytes() == before
    assert not (tmp_path / "out.jsonl").exists()


def test_errors_file_that_is_the_output_is_refused(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 5)
    with pytest.raises(UsageError, match=r"out\.jsonl: .*is the output"):
        run(config(source, out, errors_path=str(out)), FakeEngine)
    assert not out.exists()


def test_an_existing_errors_file_is_refused_before_the_output_is_made(tmp_path: Path) -> None:
    # Otherwise the refused run leaves an empty output that the next try trips on.
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    write_prompts(source, 5)
    errors.write_bytes(b"old\n")
    with pytest.raises(OutputError, match=r"err\.jsonl: already exists"):
        run(config(source, out, errors_path=str(errors)), FakeEngine)
    assert not out.exists()


def test_errors_on_stdout_beside_results_on_stdout_is_refused(tmp_path: Path) -> None:
    # Both on stdout, each failed row would appear twice in the one stream.
    source = tmp_path / "in.jsonl"
    write_prompts(source, 5, bad={1})
    cfg = config(source, tmp_path / "unused.jsonl", errors_path="-")
    # Refused when the config is built: such a config cannot reach `run`.
    with pytest.raises(UsageError) as refused:
        replace(cfg, output=replace(cfg.output, path="-"))
    assert str(refused.value) == (
        "--errors - writes to stdout, where the results go; give --errors a file"
    )


class _StartsAfterWork:
    """An engine factory that records whether it was called, so a test can tell a
    refusal made before the engine started from one made after."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> FakeEngine:
        self.calls += 1
        return FakeEngine()


@pytest.mark.parametrize("same_as", ["input", "output", "errors"])
def test_a_report_that_is_another_file_of_the_run_is_refused(tmp_path: Path, same_as: str) -> None:
    # The report is written over at the end: naming the input there lost the prompts.
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    write_prompts(source, 5)
    before = source.read_bytes()
    target = {"input": source, "output": out, "errors": errors}[same_as]
    factory = _StartsAfterWork()
    cfg = config(source, out, errors_path=str(errors), report_path=str(target))
    with pytest.raises(UsageError, match=r"the report is the"):
        run(cfg, factory)
    assert factory.calls == 0
    assert source.read_bytes() == before
    assert not out.exists() and not errors.exists()


@pytest.mark.parametrize("which", ["output", "errors", "report"])
def test_a_target_in_a_missing_directory_is_refused_before_the_engine_starts(
    tmp_path: Path, which: str
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 5)
    missing = str(tmp_path / "nodir" / "file.jsonl")
    cfg = {
        "output": config(source, Path(missing)),
        "errors": config(source, out, errors_path=missing),
        "report": config(source, out, report_path=missing),
    }[which]
    factory = _StartsAfterWork()
    with pytest.raises(OutputError, match=r"file\.jsonl: directory .*nodir does not exist"):
        run(cfg, factory)
    assert factory.calls == 0
    assert not out.exists()


def test_a_target_under_a_file_is_named_so(tmp_path: Path) -> None:
    # Not "directory in.jsonl does not exist; create it".
    source = tmp_path / "in.jsonl"
    write_prompts(source, 5)
    with pytest.raises(OutputError, match=r"x\.jsonl: .*in\.jsonl is a file, not a directory"):
        run(config(source, source / "x.jsonl"), FakeEngine)


def test_an_output_that_is_a_directory_gets_the_inputs_output_in_it(tmp_path: Path) -> None:
    # -o DIR (tests/test_inputs.py): not "already exists; pass --overwrite".
    source = tmp_path / "in.jsonl"
    write_prompts(source, 5)
    (tmp_path / "d").mkdir()
    report = run(config(source, tmp_path / "d"), FakeEngine)
    assert report.rows_ok == 5
    assert os.listdir(tmp_path / "d") == ["in.jsonl"]


def _no_engine() -> FakeEngine:
    raise EngineStartError("cannot start vLLM with model 'nosuch'")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_an_engine_that_never_starts_leaves_no_output_behind(tmp_path: Path, suffix: str) -> None:
    # The empty output used to make the corrected command fail with "already exists".
    source, out, errors = tmp_path / "in.jsonl", tmp_path / f"out{suffix}", tmp_path / "e.jsonl"
    write_prompts(source, 5)
    with pytest.raises(EngineStartError):
        run(config(source, out, errors_path=str(errors)), _no_engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    run(config(source, out), FakeEngine)  # the corrected run is not refused
    assert out.exists()


def test_a_failed_start_keeps_what_the_run_did_not_make(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source, 5)
    run(config(source, out), FakeEngine)
    done = out.read_bytes()
    write_prompts(source, 8)  # three more rows for the resumed run
    with pytest.raises(EngineStartError):
        run(config(source, out, resume=True), _no_engine)
    assert out.read_bytes() == done
    out.write_bytes(b"")  # an empty file that was there before: not ours to remove
    with pytest.raises(OutputError, match="already exists"):
        run(config(source, out), _no_engine)
    assert out.exists()
    # --overwrite emptied it, but the path is the user's: the same command runs again.
    out.write_bytes(b"old\n")
    with pytest.raises(EngineStartError):
        run(config(source, out, overwrite=True), _no_engine)
    assert out.exists()


def test_a_failed_start_never_removes_a_symlinked_output(tmp_path: Path) -> None:
    source, real, link = tmp_path / "in.jsonl", tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    write_prompts(source, 5)
    real.write_bytes(b"old\n")
    link.symlink_to(real)
    with pytest.raises(EngineStartError):
        run(config(source, link, overwrite=True), _no_engine)
    assert link.is_symlink() and real.exists()


def test_a_failed_start_removes_an_errors_file_beside_stdout(tmp_path: Path) -> None:
    # Results on stdout, failures in a file: the empty file used to stay, and the
    # corrected command was refused for it.
    source, errors = tmp_path / "in.jsonl", tmp_path / "e.jsonl"
    write_prompts(source, 5)
    cfg = replace(config(source, tmp_path / "unused"), output=OutputConfig(path=None))
    with pytest.raises(EngineStartError):
        run(replace(cfg, errors_path=str(errors)), _no_engine, stdout=io.BytesIO())
    assert not errors.exists()
