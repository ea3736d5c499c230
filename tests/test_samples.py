"""n > 1 samples, logprobs and JSON-schema output, through a whole job on the fake engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.job import run
from batching.records import Sampling
from batching.testing import FakeEngine, schema_instance
from cli.app import app

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def job(source: Path, out: Path, **sampling: Any) -> None:
    config = RunConfig(
        input=InputConfig(str(source), chunk_size=2),
        output=OutputConfig(str(out)),
        sampling=Sampling(max_tokens=50, **sampling),
    )
    run(config, FakeEngine)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_n_keeps_every_sample_as_a_list(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "abc"}, {"prompt": "xy", "n": 1}])
    out = tmp_path / "out.jsonl"
    job(source, out, n=3)
    many, one = jsonl(out)
    assert many["output"] == ["cba", "cba#1", "cba#2"]
    assert many["finish_reason"] == ["stop", "stop", "stop"]
    assert many["completion_tokens"] == 3 + 5 + 5  # every sample counts
    assert one["output"] == "yx"  # the row's own n wins
    assert one["finish_reason"] == "stop"


def test_n_in_parquet_is_a_list_column(tmp_path: Path) -> None:
    rows = [{"prompt": "abc"}, {"prompt": "xy", "n": 1}, {"prompt": {"bad": 1}}]
    source = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    job(source, out, n=2)
    table = pq.read_table(out)
    assert pa.types.is_list(table.schema.field("output").type)
    # A single sample in a list column is a list of one; a failed row has none.
    assert table.column("output").to_pylist() == [["cba", "cba#1"], ["yx"], None]


def test_logprobs_follow_the_error_field(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "ab"}, {"prompt": "c", "logprobs": 0}])
    out = tmp_path / "out.jsonl"
    job(source, out, logprobs=2)
    first, second = jsonl(out)
    assert list(first)[-1] == "logprobs"
    assert first["logprobs"] == [
        {
            "token": "b",
            "logprob": 0.0,
            "top_logprobs": [{"token": "b", "logprob": 0.0}, {"token": "c", "logprob": -1.0}],
        },
        {
            "token": "a",
            "logprob": 0.0,
            "top_logprobs": [{"token": "a", "logprob": 0.0}, {"token": "b", "logprob": -1.0}],
        },
    ]
    assert second["logprobs"] == [{"token": "c", "logprob": 0.0, "top_logprobs": []}]


def test_logprobs_in_parquet_read_back_as_json(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "ab", "keep": 1}])
    out = tmp_path / "out.parquet"
    config = RunConfig(
        input=InputConfig(str(source), keep_fields=("keep",)),
        output=OutputConfig(str(out)),
        sampling=Sampling(logprobs=0),
    )
    run(config, FakeEngine)
    table = pq.read_table(out)
    assert table.column_names[6:] == ["logprobs", "keep"]
    [text] = table.column("logprobs").to_pylist()
    assert [token["token"] for token in orjson.loads(text)] == ["b", "a"]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Who?", "json_schema": SCHEMA},
        {"prompt": "Who?", "json_schema": orjson.dumps(SCHEMA).decode()},
        {
            "prompt": "Who?",
            "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
        },
    ],
)
def test_a_rows_schema_drives_the_output(tmp_path: Path, row: dict[str, Any]) -> None:
    source = write_rows(tmp_path / "in.jsonl", [row, {"prompt": "free"}])
    out = tmp_path / "out.jsonl"
    job(source, out)
    structured, free = jsonl(out)
    assert orjson.loads(structured["output"]) == schema_instance(SCHEMA) == {"name": "", "age": 0}
    assert free["output"] == "eerf"


def test_a_bad_row_schema_is_an_error_record(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "x", "json_schema": "{not json"}])
    out = tmp_path / "out.jsonl"
    job(source, out)
    [row] = jsonl(out)
    assert row["error"]["message"] == (
        f"{source}:1: field 'json_schema': expected a JSON Schema object (or its JSON text), "
        "found string '{not json'"
    )


def test_cli_json_schema_file_applies_to_every_row(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    schema = tmp_path / "schema.json"
    schema.write_bytes(orjson.dumps(SCHEMA))
    result = CliRunner().invoke(
        app,
        ["run", str(source), "-m", "m", "--engine", "fake", "-q", "--json-schema", str(schema)],
    )
    assert result.exit_code == 0, result.output
    outputs = [orjson.loads(orjson.loads(line)["output"]) for line in result.stdout.splitlines()]
    assert outputs == [{"name": "", "age": 0}] * 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{oops", "not valid JSON"), (b"[1]", "expected a JSON Schema object")],
)
def test_cli_refuses_a_bad_schema_file(tmp_path: Path, content: bytes, message: str) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "a"}])
    schema = tmp_path / "schema.json"
    schema.write_bytes(content)
    result = CliRunner().invoke(
        app, ["run", str(source), "-m", "m", "--engine", "fake", "--json-schema", str(schema)]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_cli_n_and_logprobs(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "ab"}])
    result = CliRunner().invoke(
        app,
        ["run", str(source), "-m", "m", "--engine", "fake", "-q", "--n", "2", "--logprobs", "0"],
    )
    assert result.exit_code == 0, result.output
    [row] = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert row["output"] == ["ba", "ba#1"]
    assert [[t["token"] for t in sample] for sample in row["logprobs"]] == [
        ["b", "a"],
        ["b", "a", "#", "1"],
    ]
