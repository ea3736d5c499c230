"""`validate`: the core's counts and token figures, and the `bizra-batch validate` command."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import InputConfig
from batching.errors import InputError
from batching.prompt_tokens import PromptTokenizer
from batching.validate import MAX_LISTED_ERRORS, ValidationReport, format_report, validate
from cli.app import app

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parent.parent

ROWS: list[dict[str, object]] = [
    {"id": "a", "prompt": "hello there"},
    {"id": "b", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5},
    {"id": "c", "prompt": "x", "max_tokens": 7},
    {"id": "d", "prompt": "the same words again and again"},
]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def check(
    path: Path | str,
    *,
    model: Path | None = None,
    max_model_len: int | None = None,
    cfg: InputConfig | None = None,
    stdin: bytes | None = None,
    max_line_bytes: int = 1024,
) -> ValidationReport:
    return validate(
        cfg or InputConfig(path=str(path), chunk_size=2),
        tokenizer_dir=None if model is None else str(model),
        max_model_len=max_model_len,
        default_max_tokens=256,
        max_line_bytes=max_line_bytes,
        stdin=None if stdin is None else io.BytesIO(stdin),
    )


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(jsonl(ROWS))
    return path


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"prompt": "ok"}\n{not json\n{"prompt": 5}\n\n{"prompt": "fine", "top_p": 2}\n'
        + b'{"prompt": "'
        + b"x" * 2000
        + b'"}\n{"messages": []}\n'
    )
    return path


# -- core ---------------------------------------------------------------------------------


def test_counts_rows_by_kind_and_sums_max_new_tokens(prompts_file: Path) -> None:
    report = check(prompts_file)
    assert report.ok
    assert (report.rows, report.valid, report.invalid) == (4, 4, 0)
    assert (report.plain_rows, report.chat_rows, report.sampling_override_rows) == (3, 1, 2)
    assert report.max_new_tokens == 256 + 256 + 7 + 256
    assert report.token_stats is None and report.token_stats_skipped is None


def test_max_new_tokens_counts_every_sample_of_a_row(tmp_path: Path) -> None:
    # n samples of max_tokens each: the most the run can generate for the row.
    path = tmp_path / "n.jsonl"
    path.write_bytes(jsonl([{"prompt": "a", "n": 3, "max_tokens": 10}, {"prompt": "b"}]))
    assert check(path).max_new_tokens == 3 * 10 + 256


def test_invalid_rows_are_listed_with_file_line_and_field(mixed_file: Path) -> None:
    report = check(mixed_file)
    assert (report.rows, report.valid, report.invalid) == (6, 1, 5)
    lines = [problem.line for problem in report.first_errors]
    assert lines == [2, 3, 5, 6, 7]  # line 4 is blank, and blank lines are no rows
    messages = [problem.message for problem in report.first_errors]
    assert messages[0].startswith(f"{mixed_file}:2: not valid JSON")
    assert messages[1].startswith(f"{mixed_file}:3: field 'prompt'")
    assert messages[2].startswith(f"{mixed_file}:5: field 'top_p'")
    assert "longer than the limit" in messages[3]
    assert messages[4].startswith(f"{mixed_file}:7: field 'messages'")


def test_only_the_first_errors_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": 1}\n' * 1000)
    report = check(path)
    assert report.invalid == 1000
    assert len(report.first_errors) == MAX_LISTED_ERRORS
    assert report.to_dict()["errors_not_listed"] == 1000 - MAX_LISTED_ERRORS
    assert "... and 980 more" in format_report(report)


def test_accepts_exactly_the_rows_run_accepts(mixed_file: Path) -> None:
    report = check(mixed_file)
    result = runner.invoke(
        app,
        [
            "run",
            str(mixed_file),
            "-m",
            "fake",
            "--engine",
            "fake",
            "-q",
            "--max-line-bytes",
            "1024",
        ],
    )
    assert result.exit_code == 1
    run_errors = [
        row["error"]["message"]
        for line in result.stdout.splitlines()
        if (row := json.loads(line))["error"] is not None
    ]
    assert run_errors == [problem.message for problem in report.first_errors]


def test_field_options_and_parquet(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["ab", None, "cde"], "key": [1, 2, 1]}), path)
    cfg = InputConfig(path=str(path), prompt_field="text", id_field="key")
    report = check(path, cfg=cfg)
    assert (report.rows, report.valid, report.invalid) == (3, 1, 2)
    assert report.first_errors[0].message.startswith(f"{path} row 2: no 'text'")
    assert "duplicate id" in report.first_errors[1].message


def test_stdin_and_empty_input(tmp_path: Path) -> None:
    assert check("-", stdin=jsonl(ROWS)).rows == 4
    empty = check("-", stdin=b"")
    assert empty.ok and empty.rows == 0 and empty.max_new_tokens == 0


def test_unreadable_input_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        check(tmp_path / "nope.jsonl")


def test_token_stats_on_the_tiny_model(prompts_file: Path, tiny_model: Path) -> None:
    stats = check(prompts_file, model=tiny_model).token_stats
    assert stats is not None
    tokenizer = PromptTokenizer.load(tiny_model)
    plain = tokenizer.count(
        ["hello there", "x", "the same words again and again"], add_special_tokens=True
    )
    [chat] = tokenizer.count(
        [tokenizer.render_chat([{"role": "user", "content": "hi"}])], add_special_tokens=False
    )
    counts = sorted([*plain, chat])
    assert stats.rows == 4 and stats.total == sum(counts)
    assert (stats.min, stats.median, stats.p95, stats.max) == (
        counts[0],
        counts[1],
        counts[3],
        counts[3],
    )
    assert (stats.max_model_len, stats.max_model_len_from) == (
        2048,
        "config.json max_position_embeddings",
    )
    assert stats.rows_too_long == 0


def test_rows_too_long_for_a_given_max_model_len(prompts_file: Path, tiny_model: Path) -> None:
    stats = check(prompts_file, model=tiny_model, max_model_len=4).token_stats
    assert stats is not None and stats.max_model_len_from == "given"
    tokenizer = PromptTokenizer.load(tiny_model)
    plain = tokenizer.count(
        ["hello there", "x", "the same words again and again"], add_special_tokens=True
    )
    chat_tokens = len(tokenizer.render_chat([{"role": "user", "content": "hi"}]))  # > 4
    assert stats.rows_too_long == sum(n >= 4 for n in plain) + (chat_tokens >= 4)
    report = check(prompts_file, model=tiny_model, max_model_len=4)
    assert report.invalid == stats.rows_too_long and not report.ok


def too_long_file(tmp_path: Path, tiny_model: Path) -> tuple[Path, list[int]]:
    """Rows 2 and 5 too long for the tiny model's 2,048, row 4 invalid; and their counts."""
    long_prompt = "word " * 2100
    long_chat = [{"role": "user", "content": "word " * 2100}]
    rows: list[object] = [
        {"prompt": "short", "max_tokens": 3},
        {"prompt": long_prompt, "max_tokens": 5},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": ""},
        {"messages": long_chat, "temperature": 0.5},
    ]
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl(rows))  # type: ignore[arg-type]
    tokenizer = PromptTokenizer.load(tiny_model)
    [plain] = tokenizer.count([long_prompt], add_special_tokens=True)
    [chat] = tokenizer.count([tokenizer.render_chat(long_chat)], add_special_tokens=False)
    return path, [plain, chat]


def test_prompts_too_long_for_the_model_are_invalid_rows_in_their_place(
    tmp_path: Path, tiny_model: Path
) -> None:
    path, (plain, chat) = too_long_file(tmp_path, tiny_model)
    assert plain >= 2048 and chat >= 2048

    report = check(path, model=tiny_model, max_line_bytes=1 << 20)

    assert not report.ok
    assert (report.rows, report.valid, report.invalid) == (5, 2, 3)
    assert (report.plain_rows, report.chat_rows, report.sampling_override_rows) == (1, 1, 1)
    assert report.max_new_tokens == 3 + 256
    assert report.token_stats is not None and report.token_stats.rows_too_long == 2
    # The statistics are of the work: the two valid rows, as max new tokens is.
    assert report.token_stats.rows == 2 and report.token_stats.max is not None
    assert report.token_stats.max < 2048 and report.token_stats.total < plain
    assert [p.line for p in report.first_errors] == [2, 4, 5]
    too_long = "prompt tokens leave no room for output within max_model_len 2,048"
    assert report.first_errors[0].message == (
        f"{path}:2: field 'prompt': {plain:,} {too_long} (config.json max_position_embeddings); "
        "run gives this row a prompt_too_long error: shorten it"
    )
    assert report.first_errors[2].message.startswith(f"{path}:5: field 'messages': {chat:,} ")
    assert "rows                  5 (2 valid, 3 invalid)" in format_report(report)


def test_without_a_model_too_long_prompts_are_not_checked(tmp_path: Path, tiny_model: Path) -> None:
    path, _ = too_long_file(tmp_path, tiny_model)
    report = check(path, max_line_bytes=1 << 20)
    assert (report.valid, report.invalid) == (4, 1)
    assert [p.line for p in report.first_errors] == [4]


def test_misspelt_fields_are_warnings_and_the_rows_stay_valid(tmp_path: Path) -> None:
    path = tmp_path / "typo.jsonl"
    path.write_bytes(
        jsonl(
            [
                {"id": "x", "prompt": "c", "max_token": 1, "temprature": 5},
                {"id": "y", "prompt": "d", "max_token": 2, "topic": "t"},
            ]
        )
    )
    report = check(path)
    assert report.ok and report.valid == 2
    assert report.warnings == 2
    assert report.first_warnings == (
        f"{path}:1: unknown field 'max_token' is ignored; did you mean 'max_tokens'?",
        f"{path}:1: unknown field 'temprature' is ignored; did you mean 'temperature'?",
    )
    text = format_report(report)
    assert text.startswith(f"warnings (2):\n  {path}:1: unknown field 'max_token'")
    assert text.endswith(f"{path}: every row valid, 2 warnings")


def test_only_the_first_warnings_are_kept(tmp_path: Path) -> None:
    typos = [
        f"{field}{c}" for field in ("max_tokens", "temperature", "logprobs") for c in "abcdefghi"
    ]
    path = tmp_path / "typos.jsonl"
    path.write_bytes(jsonl([{"prompt": "p", typo: 1} for typo in typos]))
    report = check(path)
    assert report.ok and report.warnings == len(typos) == 27
    assert len(report.first_warnings) == MAX_LISTED_ERRORS
    assert report.to_dict()["warnings_not_listed"] == 27 - MAX_LISTED_ERRORS
    assert format_report(report).count("unknown field") == MAX_LISTED_ERRORS


def test_the_openai_readers_warnings_are_listed_too(tmp_path: Path) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    path = tmp_path / "batch.jsonl"
    path.write_bytes(jsonl([line, line]))
    report = check(path)
    assert report.ok and report.warnings == 1
    assert report.first_warnings[0].startswith(f"{path}:2: custom_id 'a' was first used")


def test_no_tokenizer_json_skips_token_stats(prompts_file: Path, tmp_path: Path) -> None:
    report = check(prompts_file, model=tmp_path)
    assert report.ok and report.token_stats is None
    assert report.token_stats_skipped is not None
    assert "no tokenizer.json" in report.token_stats_skipped


def test_missing_tokenizer_packages_skip_token_stats_with_a_hint(
    prompts_file: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "batching.prompt_tokens", None)  # import fails
    report = check(prompts_file, model=tiny_model)
    assert report.ok and report.token_stats is None
    assert report.token_stats_skipped is not None
    assert "pip install tokenizers jinja2" in report.token_stats_skipped


def test_chat_rows_without_a_template_or_failing_it(
    prompts_file: Path, tmp_path: Path, tiny_model: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_model / "tokenizer.json", model)
    stats = check(prompts_file, model=model).token_stats
    assert stats is not None and stats.rows == 3 and stats.chat_rows_skipped == 1
    assert stats.max_model_len is None and stats.rows_too_long is None

    (model / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")
    stats = check(prompts_file, model=model).token_stats
    assert stats is not None and stats.rows == 3 and stats.template_errors == 1
    [problem] = stats.first_template_errors
    assert problem.line == 2
    assert problem.message.startswith(f"{prompts_file}:2: the chat template fails")
    assert "roles must alternate" in problem.message


# -- CLI ----------------------------------------------------------------------------------


def invoke(*args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["validate", *args], input=input, env={"BIZRA_BATCH_MODEL": ""})


def test_help_lists_validate() -> None:
    result = runner.invoke(app, ["--help"])
    assert "validate  Check an input file without running the model" in result.output


def test_clean_file_exits_0_with_the_report_on_stdout(prompts_file: Path) -> None:
    result = invoke(str(prompts_file))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "rows                  4 (4 valid, 0 invalid)" in result.stdout
    assert result.stdout.endswith(f"{prompts_file}: every row valid\n")
    assert "max new tokens" in result.stdout


def test_stdin(prompts_file: Path) -> None:
    result = invoke("-", input=prompts_file.read_bytes())
    assert result.exit_code == 0
    assert "<stdin>: every row valid" in result.stdout


def test_row_without_id_whose_row_number_is_taken_is_reported() -> None:
    # The user audit's case: two output rows would carry id 1.
    result = invoke("-", input=b'{"id": 1, "prompt": "a"}\n{"prompt": "b"}\n')
    assert result.exit_code == 1
    assert "<stdin>:2: field 'id': duplicate id, integer 1 was first seen at line 1" in (
        result.stdout
    )
    assert "<stdin>: 1 of 2 rows invalid" in result.stdout


def test_bad_rows_exit_1_listing_file_line_and_field(mixed_file: Path) -> None:
    result = invoke(str(mixed_file), "--max-line-bytes", "1024")
    assert result.exit_code == 1
    assert f"{mixed_file}:3: field 'prompt'" in result.stdout
    assert f"{mixed_file}:5: field 'top_p'" in result.stdout
    assert f"{mixed_file}: 5 of 6 rows invalid" in result.stdout


def test_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = invoke(str(missing))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"bizra-batch: error: {missing}: no such file")
    assert len(result.stderr.strip().splitlines()) == 1


def test_json_report(mixed_file: Path) -> None:
    result = invoke(str(mixed_file), "--json", "--max-tokens", "10", "--max-line-bytes", "1024")
    assert result.exit_code == 1
    figures = orjson.loads(result.stdout)
    assert set(figures) == {
        "input", "ok", "rows", "valid", "invalid", "plain_rows", "chat_rows",
        "sampling_override_rows", "errors", "errors_not_listed", "warnings",
        "warnings_not_listed", "prompt_tokens", "prompt_tokens_skipped", "work",
    }  # fmt: skip
    assert figures["invalid"] == 5 and figures["ok"] is False
    assert figures["errors"][0] == {"line": 2, "message": figures["errors"][0]["message"]}
    assert figures["work"] == {
        "prompt_tokens": None,
        "max_new_tokens": 10,
        "default_max_tokens": 10,
    }


def test_token_stats_through_the_cli(prompts_file: Path, tiny_model: Path) -> None:
    result = invoke(str(prompts_file), "-m", str(tiny_model))
    assert result.exit_code == 0, result.stderr
    assert "min/med/p95/max" in result.stdout
    assert "max_model_len 2,048, config.json max_position_embeddings" in result.stdout
    figures = orjson.loads(invoke(str(prompts_file), "-m", str(tiny_model), "--json").stdout)
    assert figures["prompt_tokens"]["rows"] == 4
    assert figures["work"]["prompt_tokens"] == figures["prompt_tokens"]["total"] > 0


def test_too_long_prompts_exit_1_naming_lines_and_counted_in_json(
    tmp_path: Path, tiny_model: Path
) -> None:
    path, (plain, chat) = too_long_file(tmp_path, tiny_model)
    # Without the invalid row: the too-long ones alone make the exit code 1.
    rows = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(rows[:3] + rows[4:]))

    result = invoke(str(path), "-m", str(tiny_model))
    assert result.exit_code == 1, result.output
    assert f"  {path}:2: field 'prompt': {plain:,} prompt tokens" in result.stdout
    assert f"  {path}:4: field 'messages': {chat:,} prompt tokens" in result.stdout
    assert result.stdout.endswith(f"{path}: 2 of 4 rows invalid\n")

    result = invoke(str(path), "-m", str(tiny_model), "--json")
    assert result.exit_code == 1
    figures = orjson.loads(result.stdout)
    assert (figures["ok"], figures["valid"], figures["invalid"]) == (False, 2, 2)
    assert [e["line"] for e in figures["errors"]] == [2, 4]
    assert figures["prompt_tokens"]["rows_too_long"] == 2

    assert invoke(str(path)).exit_code == 0  # without a model, nothing to check them by


def test_warnings_go_to_the_report_not_stderr_and_leave_the_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "typo.jsonl"
    path.write_bytes(jsonl([{"prompt": "c", "max_token": 1}, {"prompt": "d"}]))
    warning = f"{path}:1: unknown field 'max_token' is ignored; did you mean 'max_tokens'?"

    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert f"warnings (1):\n  {warning}\n" in result.stdout
    assert result.stdout.endswith(f"{path}: every row valid, 1 warning\n")

    figures = orjson.loads(invoke(str(path), "--json").stdout)
    assert (figures["warnings"], figures["warnings_not_listed"]) == ([warning], 0)


def test_model_without_tokenizer_says_so_and_exit_code_is_unchanged(
    prompts_file: Path, tmp_path: Path
) -> None:
    result = invoke(str(prompts_file), "-m", str(tmp_path))
    assert result.exit_code == 0
    assert "skipped" in result.stdout and "no tokenizer.json" in result.stdout
    result = invoke(str(prompts_file), "-m", str(tmp_path), "--json")
    assert result.exit_code == 0
    assert "no tokenizer.json" in orjson.loads(result.stdout)["prompt_tokens_skipped"]
    assert "no tokenizer.json" in result.stderr


@pytest.mark.slow
def test_validate_loads_neither_vllm_nor_torch(prompts_file: Path, tiny_model: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from cli.app import app
        result = CliRunner().invoke(app, ["validate", {str(prompts_file)!r},
                                          "-m", {str(tiny_model)!r}, "--json"])
        assert result.exit_code == 0, result.output
        assert '"median"' in result.stdout
        heavy = sorted(m for m in ("vllm", "torch", "transformers") if m in sys.modules)
        print(",".join(heavy) or "none")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
