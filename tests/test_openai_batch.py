"""The OpenAI batch format: reading request lines, writing output lines, resuming them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import OutputError, UsageError
from batching.job import run
from batching.openai_batch import parse_openai_row
from batching.readers import open_source
from batching.records import ERROR_INVALID_INPUT, InvalidRow, Request, Row, Sampling
from batching.testing import FakeEngine, expected_output
from cli.app import app

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-x", "messages": messages, **body},
    }


def completion_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"model": "gpt-x", "prompt": prompt, **body},
    }


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def parse(obj: object) -> Request | InvalidRow:
    return parse_openai_row(obj, index=0, line=1, fields=InputConfig("b.jsonl"), where="b:1")


def read_rows(path: Path, fmt: Any = None) -> list[Row]:
    with open_source(InputConfig(str(path), format=fmt)) as source:
        return [row for chunk in source.chunks() for row in chunk]


def output_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def openai_config(source: Path, out: Path, **kwargs: Any) -> RunConfig:
    output = OutputConfig(
        path=str(out),
        format="openai",
        model="tiny",
        resume=kwargs.pop("resume", False),
        overwrite=kwargs.pop("overwrite", False),
    )
    sampling = kwargs.pop("sampling", Sampling(max_tokens=50))
    return RunConfig(
        input=InputConfig(path=str(source), chunk_size=3),
        output=output,
        sampling=sampling,
        **kwargs,
    )


# -- reading ------------------------------------------------------------------------


def test_a_chat_line_becomes_a_request_keyed_by_custom_id() -> None:
    row = parse(chat_line("q-1", "Hi", max_tokens=9, temperature=0.5, top_p=0.9, seed=3))
    assert isinstance(row, Request)
    assert row.id == "q-1"
    assert row.messages == ({"role": "user", "content": "Hi"},)
    assert row.prompt is None
    assert row.sampling == Sampling(max_tokens=9, temperature=0.5, top_p=0.9, seed=3)


def test_a_completions_line_becomes_a_prompt_request() -> None:
    row = parse(completion_line("q-2", "Once", n=3, stop="\n", logprobs=2))
    assert isinstance(row, Request)
    assert (row.prompt, row.messages) == ("Once", None)
    assert row.sampling == Sampling(n=3, stop=("\n",), logprobs=2)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    row = parse(chat_line("a", "Hi", max_tokens=100, max_completion_tokens=7))
    assert isinstance(row, Request)
    assert row.sampling.max_tokens == 7


def test_chat_logprobs_map_to_top_logprobs() -> None:
    with_top = parse(chat_line("a", "Hi", logprobs=True, top_logprobs=3))
    sampled_only = parse(chat_line("a", "Hi", logprobs=True))
    off = parse(chat_line("a", "Hi", logprobs=False))
    assert isinstance(with_top, Request) and with_top.sampling.logprobs == 3
    assert isinstance(sampled_only, Request) and sampled_only.sampling.logprobs == 0
    assert isinstance(off, Request) and off.sampling.logprobs is None


def test_response_format_json_schema_becomes_the_rows_schema() -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    row = parse(chat_line("a", "Hi", response_format=response_format))
    assert isinstance(row, Request)
    assert row.sampling.json_schema is not None
    assert orjson.loads(row.sampling.json_schema) == SCHEMA
    text = parse(chat_line("a", "Hi", response_format={"type": "text"}))
    assert isinstance(text, Request) and text.sampling.json_schema is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"method": "POST", "url": CHAT, "body": {}},
            "b:1: field 'custom_id': expected a non-empty string, found null",
        ),
        (
            {**chat_line("a", "Hi"), "url": "/v1/moderations"},
            "b:1: field 'url': unsupported url '/v1/moderations'; "
            "use /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/score or /v1/rerank",
        ),
        (
            {**chat_line("a", "Hi"), "method": "GET"},
            "b:1: field 'method': expected \"POST\", found string 'GET'",
        ),
        (
            {**chat_line("a", "Hi"), "body": [1]},
            "b:1: field 'body': expected an object, found a list of 1 item",
        ),
        (
            chat_line("a", "Hi", messages="Hi"),
            "b:1: field 'body.messages': expected a non-empty list of messages, found string 'Hi'",
        ),
        (
            completion_line("a", ""),
            "b:1: field 'body.prompt': expected a non-empty string, found an empty string",
        ),
        (
            chat_line("a", "Hi", temperature=-1),
            "b:1: field 'body.temperature': expected a finite number >= 0, found integer -1",
        ),
        (
            chat_line("a", "Hi", n=0),
            "b:1: field 'body.n': expected an integer >= 1, found integer 0",
        ),
        (
            chat_line("a", "Hi", tools=[{"type": "function"}]),
            "b:1: field 'body.tools' is not supported by bizra-batch; remove it",
        ),
        (
            chat_line("a", "Hi", top_logprobs=2),
            "b:1: field 'body.top_logprobs' needs 'body.logprobs': true",
        ),
    ],
)
def test_a_bad_line_becomes_an_invalid_row_naming_the_field(line: Any, message: str) -> None:
    row = parse(line)
    assert isinstance(row, InvalidRow)
    assert row.error.type == ERROR_INVALID_INPUT
    assert row.error.message == message


def test_openai_lines_are_recognised_without_being_told(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "batch.jsonl", [chat_line("a", "Hi"), {"custom_id": "b"}])
    rows = read_rows(source)
    assert isinstance(rows[0], Request) and rows[0].id == "a"
    # Once the file is OpenAI lines, a line that is not one is an error of that format.
    assert isinstance(rows[1], InvalidRow)
    assert "field 'url': unsupported url" in rows[1].error.message


def test_plain_rows_are_not_taken_for_openai_lines(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "rows.jsonl", [{"id": "x", "prompt": "Hi"}])
    [row] = read_rows(source)
    assert isinstance(row, Request) and (row.id, row.prompt) == ("x", "Hi")


def test_input_format_openai_forces_the_format(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "rows.jsonl", [{"id": "x", "prompt": "Hi"}])
    [row] = read_rows(source, "openai")
    assert isinstance(row, InvalidRow)
    assert "custom_id" in row.error.message


def test_duplicate_custom_ids_are_reported_and_each_line_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [chat_line("a", "one"), chat_line("b", "two"), chat_line("a", "three")]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        report = run(openai_config(source, out), FakeEngine)
    assert report.rows_ok == 3
    assert [line["custom_id"] for line in output_lines(out)] == ["a", "b", "a"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{source}:3: custom_id 'a' was first used at line 1; each line gets its own output "
        "line, so the output has two with this custom_id"
    ]


@pytest.mark.parametrize(
    ("order", "warning"),
    [
        pytest.param(
            "explicit-first",
            ":2: this line has no valid custom_id, so its output line gets its 0-based row "
            "number, '1', which line 1 uses as its custom_id",
            id="explicit-first",
        ),
        pytest.param(
            "default-first",
            ":3: custom_id '1' was first used at line 2, a line without a valid custom_id, "
            "whose output line gets its 0-based row number",
            id="default-first",
        ),
    ],
)
def test_custom_id_equal_to_a_line_without_one_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, order: str, warning: str
) -> None:
    without = {key: value for key, value in chat_line("-", "x").items() if key != "custom_id"}
    if order == "explicit-first":
        lines = [chat_line("1", "a"), without]
    else:
        lines = [chat_line("a", "a"), without, chat_line("1", "b")]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        run(openai_config(source, out), FakeEngine)
    written = [line["custom_id"] for line in output_lines(out)]
    assert written.count("1") == 2  # still warned only: every line keeps its output line
    assert [r.getMessage() for r in caplog.records] == [
        f"{source}{warning}; each line gets its own output line, so the output has two "
        "with this custom_id"
    ]


def test_unreadable_first_line_counts_as_a_line_without_custom_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Read before the format is known (the first line that decodes decides it).
    source = tmp_path / "batch.jsonl"
    source.write_bytes(b"{oops\n\n" + orjson.dumps(chat_line("0", "a")) + b"\n")
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        rows = read_rows(source)
    assert [row.id for row in rows] == [0, "0"]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"{source}:3: custom_id '0' was first used at line 1, a line without a valid "
        "custom_id, whose output line gets its 0-based row number"
    ]


@pytest.mark.parametrize(
    "custom_ids", [["01", None, "x"], [None, "0 ", "-0"], ["2", None]], ids=str
)
def test_custom_ids_that_only_look_like_a_row_number_are_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, custom_ids: list[str | None]
) -> None:
    lines = [
        {k: v for k, v in chat_line(c or "-", "x").items() if c is not None or k != "custom_id"}
        for c in custom_ids
    ]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        read_rows(source, "openai")
    assert caplog.records == []


# -- writing ------------------------------------------------------------------------


def test_output_lines_have_the_openai_shape(tmp_path: Path) -> None:
    lines = [
        chat_line("c", "Hello", max_tokens=3),
        completion_line("t", "abc", n=2),
        {**chat_line("bad", "x"), "url": "/v1/moderations"},
    ]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out.jsonl"
    run(openai_config(source, out), FakeEngine)
    chat, text, bad = output_lines(out)

    assert chat["custom_id"] == "c" and chat["error"] is None
    assert chat["response"]["status_code"] == 200
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    [choice] = body["choices"]
    rendered = "user: Hello"  # the fake engine's chat template
    assert choice["message"] == {"role": "assistant", "content": expected_output(rendered, 3)}
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": len(rendered),
        "completion_tokens": 3,
        "total_tokens": len(rendered) + 3,
    }

    text_body = text["response"]["body"]
    assert text_body["object"] == "text_completion"
    assert [c["text"] for c in text_body["choices"]] == ["cba", "cba#1"]
    assert [c["index"] for c in text_body["choices"]] == [0, 1]
    assert text_body["usage"]["completion_tokens"] == 3 + 5

    assert bad["custom_id"] == "bad"
    assert bad["response"] == {
        "status_code": 400,
        "request_id": bad["response"]["request_id"],
        "body": None,
    }
    assert bad["error"]["code"] == ERROR_INVALID_INPUT
    assert "unsupported url" in bad["error"]["message"]
    assert len({line["id"] for line in (chat, text, bad)}) == 3


def test_plain_rows_can_be_written_as_openai_lines(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "rows.jsonl", [{"id": 7, "prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    run(openai_config(source, out), FakeEngine)
    [line] = output_lines(out)
    assert line["custom_id"] == "7"  # custom_id is a string: other ids as JSON text
    assert line["response"]["body"]["choices"][0]["text"] == "iH"


def test_logprobs_in_chat_and_completion_form(tmp_path: Path) -> None:
    lines = [
        chat_line("c", "ab", logprobs=True, top_logprobs=2),
        completion_line("t", "ab", logprobs=1),
    ]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out.jsonl"
    run(openai_config(source, out), FakeEngine)
    chat, text = output_lines(out)
    content = chat["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert [token["token"] for token in content] == list(expected_output("user: ab", 50))
    assert len(content[0]["top_logprobs"]) == 2
    legacy = text["response"]["body"]["choices"][0]["logprobs"]
    assert legacy["tokens"] == ["b", "a"]
    assert legacy["token_logprobs"] == [0.0, 0.0]
    assert legacy["top_logprobs"] == [{"b": 0.0}, {"a": 0.0}]
    assert legacy["text_offset"] == [0, 1]


# -- resume and errors file ---------------------------------------------------------


def batch_with_failing_lines(tmp_path: Path, rows: int, failing: Sequence[int]) -> Path:
    """A batch of `rows` chat lines q0, q1, ...; those at `failing` ask for an
    endpoint we do not serve, so they get error lines."""
    lines: list[Any] = [chat_line(f"q{i}", f"prompt {i}") for i in range(rows)]
    for i in failing:
        lines[i] = {**lines[i], "url": "/v1/moderations"}
    return write_lines(tmp_path / "batch.jsonl", lines)


def test_resume_continues_an_openai_output_and_rewrites_its_errors_file(tmp_path: Path) -> None:
    source = batch_with_failing_lines(tmp_path, 10, failing=[2, 8])
    reference, errors = tmp_path / "reference.jsonl", tmp_path / "errors.jsonl"
    run(openai_config(source, reference, errors_path=str(errors)), FakeEngine)
    assert [line["custom_id"] for line in output_lines(errors)] == ["q2", "q8"]

    out = tmp_path / "out.jsonl"
    # An interrupted run: the first 5 lines and half of the sixth.
    kept = reference.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(kept[:5]) + kept[5][:20])
    report = run(openai_config(source, out, resume=True, errors_path=str(errors)), FakeEngine)
    assert report.rows == 5
    got, expected = output_lines(out), output_lines(reference)
    assert [line["custom_id"] for line in got] == [f"q{i}" for i in range(10)]
    for line, want in zip(got, expected, strict=True):
        assert line["error"] == want["error"]
        if want["response"]["body"] is not None:
            assert line["response"]["body"]["choices"] == want["response"]["body"]["choices"]
    # The errors file holds every failed line of the whole output, once.
    assert [line["custom_id"] for line in output_lines(errors)] == ["q2", "q8"]
    assert output_lines(errors)[0]["error"] == expected[2]["error"]


def test_errors_file_lines_are_the_outputs_failed_lines(tmp_path: Path) -> None:
    # Same ids in both files, so a failed line can be found in the output by its id.
    source = batch_with_failing_lines(tmp_path, 4, failing=[1])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    run(openai_config(source, out, errors_path=str(errors)), FakeEngine)
    assert output_lines(errors) == [output_lines(out)[1]]


def test_a_resumed_openai_output_and_its_errors_file_keep_the_first_runs_ids(
    tmp_path: Path,
) -> None:
    source = batch_with_failing_lines(tmp_path, 6, failing=[1, 4])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    run(openai_config(source, out, errors_path=str(errors)), FakeEngine)
    first_ids = [line["id"] for line in output_lines(out)]
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))  # died here

    run(openai_config(source, out, resume=True, errors_path=str(errors)), FakeEngine)
    # One id scheme for the whole output, and the errors file's lines (one rebuilt
    # from the earlier run, one new) are found in the output by their ids.
    assert [line["id"] for line in output_lines(out)] == first_ids
    assert output_lines(errors) == [output_lines(out)[1], output_lines(out)[4]]


def test_resume_of_another_inputs_openai_output_is_refused(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "batch.jsonl", [chat_line(f"q{i}", "x") for i in range(3)])
    other = write_lines(tmp_path / "other.jsonl", [chat_line(f"z{i}", "x") for i in range(3)])
    out = tmp_path / "out.jsonl"
    run(openai_config(other, out), FakeEngine)
    with pytest.raises(UsageError, match="row 1 has id 'z0' but input row 1 has id 'q0'"):
        run(openai_config(source, out, resume=True), FakeEngine)


def test_resuming_openai_output_without_the_format_says_how(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "batch.jsonl", [chat_line("q", "x")])
    out = tmp_path / "out.jsonl"
    run(openai_config(source, out), FakeEngine)
    plain = RunConfig(input=InputConfig(str(source)), output=OutputConfig(str(out), resume=True))
    with pytest.raises(OutputError, match="resume it with --output-format openai"):
        run(plain, FakeEngine)


# -- CLI and validate ---------------------------------------------------------------


def test_cli_reads_and_writes_openai_lines(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "batch.jsonl", [chat_line("a", "Hi")])
    result = CliRunner().invoke(
        app,
        ["run", str(source), "-m", "m", "--engine", "fake", "--output-format", "openai", "-q"],
    )
    assert result.exit_code == 0, result.output
    [line] = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert line["custom_id"] == "a"
    assert line["response"]["body"]["model"] == "m"


@pytest.mark.parametrize("where", ["-o", "--errors"])
def test_openai_lines_into_a_parquet_path_are_refused(tmp_path: Path, where: str) -> None:
    # They are JSON Lines: written into a .parquet file they would make a file no
    # Parquet reader opens.
    source = write_lines(tmp_path / "batch.jsonl", [chat_line("a", "Hi")])
    other = "--errors" if where == "-o" else "-o"
    paths = {where: tmp_path / "x.parquet", other: tmp_path / "y.jsonl"}
    command = ["run", str(source), "-m", "m", "--engine", "fake", "--output-format", "openai"]
    for option, path in paths.items():
        command += [option, str(path)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "x.parquet" in result.output and ".jsonl" in result.output
    assert not any(path.exists() for path in paths.values())


def test_validate_accepts_openai_lines_and_names_bad_ones(tmp_path: Path) -> None:
    lines = [chat_line("a", "Hi"), {**chat_line("b", "Hi"), "url": "/v1/moderations"}]
    source = write_lines(tmp_path / "batch.jsonl", lines)
    result = CliRunner().invoke(app, ["validate", str(source)])
    assert result.exit_code == 1
    assert f"{source}:2: field 'url': unsupported url '/v1/moderations'" in result.output
