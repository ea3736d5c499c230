"""Prompt templates: `batching.template`, the row schema with one, and `--template` in
`run` and `validate`, from flags, a template file, `--config` and the environment."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import InputConfig
from batching.errors import InputError, UsageError
from batching.parquet_source import ParquetSource
from batching.schema import parse_row
from batching.template import PromptTemplate
from cli.app import app

runner = CliRunner()

TEMPLATE = "Classify the sentiment of this review: {{ review }}"
ROWS: list[dict[str, object]] = [
    {"id": "a", "review": "Great!"},
    {"id": "b", "text": "no review here"},
    {"id": "c", "review": "Awful.", "prompt": "ignored", "max_tokens": 3},
]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def read_jsonl(data: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(ROWS))
    return path


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", *args, "--engine", "fake", "--quiet"], env=env)


def expected_results() -> list[dict[str, object]]:
    great = "Classify the sentiment of this review: Great!"
    awful = "Classify the sentiment of this review: Awful."
    return [
        {
            "id": "a",
            "output": great[::-1],
            "finish_reason": "stop",
            "prompt_tokens": len(great),
            "completion_tokens": len(great),
            "error": None,
        },
        {
            "id": "b",
            "output": None,
            "finish_reason": None,
            "prompt_tokens": None,
            "completion_tokens": None,
            "error": {
                "type": "invalid_input",
                "message": "in.jsonl:2: template: the row has no field 'review'",
            },
        },
        {
            "id": "c",
            "output": awful[::-1][:3],
            "finish_reason": "length",
            "prompt_tokens": len(awful),
            "completion_tokens": 3,
            "error": None,
        },
    ]


# The template itself


def test_fields_are_the_names_the_template_reads_from_the_row() -> None:
    template = PromptTemplate("{% for tag in tags %}{{ tag }} {% endfor %}{{ title | upper }}")
    assert template.fields == ("tags", "title")
    assert template.render({"tags": ["x", "y"], "title": "t"}, "p:1") == ("x y T", None)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "hi"}, "p:1: template: the row has no field 'review'"),
        ({"review": None}, "p:1: template: the row holds null in field 'review'"),
        ({"review": ""}, "p:1: template: the prompt it makes is empty"),
    ],
)
def test_a_row_that_cannot_fill_the_template_gets_a_message(
    row: dict[str, object], message: str
) -> None:
    assert PromptTemplate("{{ review }}").render(row, "p:1") == (None, message)


def test_the_sandbox_refuses_python_internals_per_row() -> None:
    template = PromptTemplate("{{ ''.__class__.__mro__ }}")
    assert template.render({}, "p:1") == (
        None,
        "p:1: template: access to attribute '__class__' of 'str' object is unsafe.",
    )


def test_the_sandbox_refuses_changing_a_row_value() -> None:
    template = PromptTemplate("{{ tags.append('x') }}{{ tags }}")
    assert template.render({"tags": ["a"]}, "p:1") == (
        None,
        "p:1: template: access to attribute 'append' of 'list' object is unsafe.",
    )


@pytest.mark.parametrize(
    "source", ['{% include "/etc/passwd" %}', '{% import "x.j2" as x %}', '{% extends "b" %}']
)
def test_a_template_that_reads_files_is_refused_when_built(source: str) -> None:
    with pytest.raises(UsageError) as caught:
        PromptTemplate(source)
    assert str(caught.value) == (
        "--template: line 1: a template may not include, import or extend other templates; "
        "put the text in this one"
    )


def test_an_empty_template_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        PromptTemplate(" \n")
    assert str(caught.value) == "--template: the template is empty; give the prompt's text"


def test_a_template_that_does_not_parse_names_its_line() -> None:
    with pytest.raises(UsageError) as caught:
        PromptTemplate("Review:\n{{ review }\n", origin="t.j2")
    assert str(caught.value) == (
        "t.j2: line 2: the template does not parse (unexpected '}'); "
        "see https://jinja.palletsprojects.com/templates/"
    )


def test_a_template_file_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.j2"
    with pytest.raises(UsageError) as caught:
        PromptTemplate.from_file(str(missing))
    assert (
        str(caught.value) == f"--template-file {missing}: cannot read (No such file or directory)"
    )


# The row schema with a template


def test_the_template_wins_over_the_rows_own_prompt_and_keeps_its_sampling() -> None:
    cfg = InputConfig(path="p.jsonl", template=PromptTemplate("Q: {{ q }}"))
    row = {"q": "why?", "prompt": "not this", "messages": [], "temperature": 0.5}
    request = parse_row(row, index=0, line=1, fields=cfg, where="p.jsonl:1")
    assert not hasattr(request, "error")
    assert (request.prompt, request.messages) == ("Q: why?", None)  # type: ignore[union-attr]
    assert request.sampling.temperature == 0.5  # type: ignore[union-attr]


# Parquet


def test_parquet_reads_the_templates_columns_and_not_the_prompt(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"review": ["ok"], "prompt": ["p"], "wide": ["w"]}), path)
    cfg = InputConfig(path=str(path), template=PromptTemplate("R: {{ review }}"))
    source = ParquetSource(cfg)
    try:
        assert source._columns == ["review"]
        [[row]] = list(source._chunks())
    finally:
        source.close()
    assert row.prompt == "R: ok"  # type: ignore[union-attr]


def test_parquet_without_a_templates_column_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["ok"]}), path)
    cfg = InputConfig(path=str(path), template=PromptTemplate("R: {{ review }}"))
    with pytest.raises(InputError) as caught:
        ParquetSource(cfg)
    assert str(caught.value) == (
        f"{path}: no 'review' column for the template (columns: text); rename it in the template"
    )


def test_run_a_parquet_file_through_a_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    columns = {
        "id": ["a", "b", "c"],
        "review": ["Great!", None, "Awful."],
        "max_tokens": [None, None, 3],
    }
    pq.write_table(pa.table(columns), "in.parquet")
    result = run("in.parquet", "--template", TEMPLATE)
    assert result.exit_code == 1, result.stderr
    outputs = [row["output"] for row in read_jsonl(result.stdout)]
    assert outputs == [r["output"] for r in expected_results()]
    assert read_jsonl(result.stdout)[1]["error"] == {
        "type": "invalid_input",
        "message": "in.parquet row 2: template: the row holds null in field 'review'",
    }


# The CLI


def test_a_rendered_prompt_reaches_the_engine_and_a_missing_field_is_one_error(
    reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(reviews.parent)
    result = run("in.jsonl", "--template", TEMPLATE)
    assert result.exit_code == 1, result.stderr  # one row failed, the others ran
    assert read_jsonl(result.stdout) == expected_results()


def test_without_a_template_the_rows_prompt_is_used(reviews: Path) -> None:
    reviews.write_bytes(jsonl([{"prompt": "abc"}]))
    result = run(str(reviews))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        '{"id":0,"output":"cba","finish_reason":"stop","prompt_tokens":3,'
        '"completion_tokens":3,"error":null}\n'
    )


def test_template_file(reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.j2").write_text(TEMPLATE)
    result = run("in.jsonl", "--template-file", "t.j2")
    assert read_jsonl(result.stdout) == expected_results()


def test_a_parse_error_exits_2_naming_the_file_and_line(reviews: Path, tmp_path: Path) -> None:
    template = tmp_path / "t.j2"
    template.write_text("Review:\n\n{{ review }\n")
    result = run(str(reviews), "--template-file", str(template), "-m", "never-loaded")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"bizra-batch: error: {template}: line 3: the template does not parse "
        "(unexpected '}'); see https://jinja.palletsprojects.com/templates/\n"
    )


def test_template_and_template_file_together_is_a_usage_error(reviews: Path) -> None:
    result = run(str(reviews), "--template", "x", "--template-file", "t.j2")
    assert result.exit_code == 2
    assert result.stderr == "bizra-batch: error: --template and --template-file: give one of them\n"


def test_a_multi_line_template_from_the_config_file(
    reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bizra.toml").write_text(
        '[run]\ntemplate = """\nReview: {{ review }}\nSentiment?"""\n'
    )
    result = run("in.jsonl", "--config", "bizra.toml")
    first = read_jsonl(result.stdout)[0]
    assert first["output"] == "Review: Great!\nSentiment?"[::-1]


def test_the_template_from_the_environment(reviews: Path) -> None:
    result = run(str(reviews), env={"BIZRA_BATCH_TEMPLATE": "{{ id }}"})
    assert [row["output"] for row in read_jsonl(result.stdout)] == ["a", "b", "c"]


def test_validate_renders_the_template_and_reports_the_rows_that_fail(
    reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(reviews.parent)
    result = runner.invoke(app, ["validate", "in.jsonl", "--template", TEMPLATE, "--json"])
    assert result.exit_code == 1
    report = orjson.loads(result.stdout)
    assert (report["rows"], report["valid"], report["invalid"]) == (3, 2, 1)
    assert report["errors"] == [
        {"line": 2, "message": "in.jsonl:2: template: the row has no field 'review'"}
    ]


def test_a_template_with_openai_input_is_a_usage_error(reviews: Path) -> None:
    result = run(str(reviews), "--template", "x", "--input-format", "openai")
    assert result.exit_code == 2
    assert result.stderr == (
        "bizra-batch: error: --template reads plain rows, and an OpenAI batch file's lines "
        "hold their own requests; pass --input-format jsonl to fill the template from its "
        "lines\n"
    )


def test_with_a_template_openai_looking_lines_are_plain_rows(reviews: Path) -> None:
    reviews.write_bytes(jsonl([{"custom_id": "r1", "url": "/v1/completions", "body": {}}]))
    result = run(str(reviews), "--template", "{{ custom_id }}")
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(result.stdout)[0]["output"] == "1r"
