"""The CLI on the fake engine: files and pipes, exit codes, messages, report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import UsageError
from batching.records import Sampling
from cli.app import app
from tests.reached import Reached

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parent.parent

ROWS = [
    {"id": "a", "prompt": "hello there", "topic": "greeting"},
    {"id": "b", "messages": [{"role": "user", "content": "hi"}]},
    {"id": "c", "prompt": "x", "max_tokens": 1},
]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def read_jsonl(data: bytes | str) -> list[dict[str, object]]:
    raw = data.encode() if isinstance(data, str) else data
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def invoke(*args: str, input: bytes | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", *args, "--engine", "fake"], input=input, env=env)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(jsonl(ROWS))
    return path


def test_help_lists_every_command_with_a_description() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    # Click pads the command column to the longest name.
    assert re.search(
        r"^\s+run\s+Run prompts through a model: one result row per input row, in order\.",
        result.output,
        re.M,
    )
    assert re.search(r"^\s+validate\s+\S", result.output, re.M)


def test_run_help_documents_exit_codes_and_the_model_env_var() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "BIZRA_BATCH_MODEL" in result.output
    assert "Exit codes" in result.output


def _commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    return {"bizra-batch": group, **group.commands}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(_commands()))
def test_every_command_and_option_has_help_text(name: str) -> None:
    command = _commands()[name]
    assert (command.help or "").strip(), f"{name}: no help"
    no_help = [p.name for p in command.params if not (getattr(p, "help", None) or "").strip()]
    assert no_help == [], f"{name}: options without help: {no_help}"


def test_run_help_groups_the_options_in_panels() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    headings = [line[:-1] for line in result.output.splitlines() if re.match(r"^\S.*:$", line)]
    assert headings == [
        "Arguments",
        "Input",
        "Sampling defaults (a row's own field wins)",
        "Engine (passed to vllm.LLM)",
        "Batching",
        "Reliability",
        "Output and report",
        "Remote engine (--engine openai)",
        "Ray cluster (--ray)",
        "Configuration",
        "Options",
    ]
    options = result.output[result.output.index("\nOptions:") :]
    assert options.split() == ["Options:", "--help", "Show", "this", "message", "and", "exit."]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("bizra-batch ")


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_results_go_to_stdout_in_input_order(source: str, prompts_file: Path) -> None:
    if source == "file":
        result = invoke(str(prompts_file), "-m", "fake", "-q")
    else:
        result = invoke("-", "-m", "fake", "-q", input=jsonl(ROWS))
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(result.stdout)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["output"] == "ereht olleh"
    assert rows[2]["output"] == "x" and rows[2]["finish_reason"] == "stop"
    assert all(r["error"] is None for r in rows)
    assert result.stderr == ""  # --quiet: nothing at all on stderr


def test_output_file_keep_fields_and_report(prompts_file: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    result = invoke(
        str(prompts_file), "-m", "fake", "-o", str(out), "--keep-fields", "topic",
        "--report", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # results went to the file; stdout stays clean
    rows = read_jsonl(out.read_bytes())
    assert [r["topic"] for r in rows] == ["greeting", None, None]
    figures = orjson.loads(report.read_bytes())
    for key in (
        "rows", "rows_ok", "rows_failed", "wall_seconds", "engine_startup_seconds",
        "requests_per_second", "input_tokens_per_second", "output_tokens_per_second",
        "batches", "avg_batch_size", "avg_batch_duration_ms", "padding_tokens_avoided",
        "latency_p50_ms", "latency_p95_ms",
    ):  # fmt: skip
        assert key in figures
    assert figures["rows"] == 3 and figures["rows_ok"] == 3
    assert "rows" in result.stderr  # the summary table
    # Not a terminal: no padding to 80 columns in a log file.
    assert [line.rstrip() for line in result.stderr.splitlines()] == result.stderr.splitlines()


def test_parquet_in_and_out(tmp_path: Path) -> None:
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"prompt": ["ab", "cde"], "id": [10, 11]}), source)
    result = invoke(str(source), "-m", "fake", "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [10, 11]
    assert table.column("output").to_pylist() == ["ba", "edc"]


def test_model_from_the_environment(prompts_file: Path) -> None:
    # The fake engine needs no model; OpenAI output lines name the one the config got.
    args = (str(prompts_file), "-q", "--output-format", "openai")
    result = invoke(*args, env={"BIZRA_BATCH_MODEL": "from-env"})
    assert result.exit_code == 0, result.stderr
    models = [line["response"]["body"]["model"] for line in read_jsonl(result.stdout)]  # type: ignore[index]
    assert models == ["from-env"] * len(ROWS)


def test_missing_model_is_a_usage_error(prompts_file: Path) -> None:
    result = runner.invoke(app, ["run", str(prompts_file)], env={"BIZRA_BATCH_MODEL": ""})
    assert result.exit_code == 2
    assert result.stderr == (
        "bizra-batch: error: --model is required: a model name or local path "
        "(or BIZRA_BATCH_MODEL)\n"
    )


def test_the_fake_engine_needs_no_model(prompts_file: Path) -> None:
    result = invoke(str(prompts_file), "-q", env={"BIZRA_BATCH_MODEL": ""})
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(result.stdout)) == len(ROWS)


def test_a_model_path_that_is_not_there_is_refused_before_loading(tmp_path: Path) -> None:
    # Otherwise vLLM loads for seconds, then Hugging Face calls the path a bad repo id.
    prompts = tmp_path / "in.jsonl"
    prompts.write_bytes(jsonl(ROWS))
    missing = str(tmp_path / "no-such-model")
    result = runner.invoke(app, ["run", str(prompts), "-m", missing, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"bizra-batch: error: --model {missing}: no such file or directory"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model", ["s3://bucket/models/llama", "org/name", "name"])
def test_model_names_that_are_no_local_paths_are_left_to_vllm(
    model: str, prompts_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached = Reached.spy(monkeypatch)
    result = runner.invoke(app, ["run", str(prompts_file), "-q", "-m", model])
    assert result.exit_code == 0, result.stderr
    assert reached.engine_config.model == model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--top-k", "-5"],
            "--top-k: expected an integer >= 1, or -1 or 0 for no limit, found integer -5",
        ),
        (
            ["--temperature", "inf"],
            "--temperature: expected a finite number >= 0, found number inf",
        ),
        (
            ["--temperature", "nan"],
            "--temperature: expected a finite number >= 0, found number nan",
        ),
        (["--top-p", "0"], "--top-p: expected a number in (0, 1], found number 0.0"),
        (["--n", "0"], "--n: expected an integer >= 1, found integer 0"),
        (["--max-tokens", "0"], "--max-tokens: expected an integer >= 1, found integer 0"),
        (
            ["--logprobs", "-1"],
            "--logprobs: expected an integer >= 0 (top tokens per position), found integer -1",
        ),
        (
            ["--keep-fields", "topic,output"],
            "--keep-fields output: every output row has its own "
            "'output' column; copy the input field under another name first",
        ),
        (
            ["--keep-fields", "id"],
            "--keep-fields id: every output row has its own 'id' column; "
            "copy the input field under another name first",
        ),
    ],
)
def test_flags_a_row_could_not_use_are_refused_up_front(
    prompts_file: Path, args: list[str], message: str
) -> None:
    # The same check, and the same words, as a row's own value gets.
    result = invoke(str(prompts_file), *args)
    assert result.exit_code == 2
    assert result.stderr == f"bizra-batch: error: {message}\n"
    assert result.stdout == ""


def test_an_input_directory_without_input_files_is_named_so(tmp_path: Path) -> None:
    # A directory is read as its input files (tests/test_inputs.py); this one has none.
    result = invoke(str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == (
        f"bizra-batch: error: {tmp_path}: the directory holds no input files (.jsonl, "
        ".jsonl.gz, .jsonl.zst, .parquet, in it or its subfolders)\n"
    )


def test_missing_input_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = invoke(str(missing), "-m", "fake")
    assert result.exit_code == 2
    assert result.stderr == (
        f"bizra-batch: error: {missing}: no such file; check the path (use - to read stdin)\n"
    )


def test_existing_output_is_not_overwritten_without_asking(
    prompts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = invoke(str(prompts_file), "-m", "fake", "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        f"bizra-batch: error: {out}: already exists; pass --resume to continue it or "
        "--overwrite to replace it\n"
    )
    assert out.read_text() == "precious\n"
    result = invoke(str(prompts_file), "-m", "fake", "-o", str(out), "--overwrite", "-q")
    assert result.exit_code == 0
    assert len(read_jsonl(out.read_bytes())) == 3


def test_bad_rows_get_error_records_in_place_and_exit_1(tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b'{"prompt": "ok"}\n{not json\n{"prompt": 5}\n{"prompt": "fine"}\n')
    result = invoke(str(source), "-m", "fake", "-q")
    assert result.exit_code == 1
    rows = read_jsonl(result.stdout)
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert "mixed.jsonl:2" in rows[1]["error"]["message"]  # type: ignore[index]
    assert "prompt" in rows[2]["error"]["message"]  # type: ignore[index]


def test_empty_input_gives_empty_output_and_exit_0(tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_bytes(b"")
    result = invoke(str(source), "-m", "fake", "-q")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""  # --quiet


def test_empty_input_is_said_so_and_reports_no_fake_rates(tmp_path: Path) -> None:
    source, report = tmp_path / "empty.jsonl", tmp_path / "report.json"
    source.write_bytes(b"\n\n")
    result = invoke(str(source), "--report", str(report))
    assert result.exit_code == 0
    assert "the input has no rows; the output is empty" in result.stderr
    assert "0.0 req/s" not in result.stderr
    figures = orjson.loads(report.read_bytes())
    assert figures["rows"] == 0 and figures["requests_per_second"] is None


def test_bad_engine_arg_is_a_usage_error(prompts_file: Path) -> None:
    result = invoke(str(prompts_file), "-m", "fake", "--engine-arg", "novalue")
    assert result.exit_code == 2
    assert result.stderr == (
        "bizra-batch: error: --engine-arg 'novalue': expected KEY=VALUE, e.g. swap_space=4\n"
    )


@pytest.mark.slow
def test_misspelt_fields_are_named_once_on_stderr_and_the_rows_run(tmp_path: Path) -> None:
    # A process of its own: under pytest a capture handler on the root logger stands
    # in for the last-resort handler that prints the readers' warnings for a user.
    source = tmp_path / "typo.jsonl"
    source.write_bytes(
        jsonl([{"id": f"r{i}", "prompt": "abc", "max_token": 1, "temprature": 5} for i in range(3)])
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(source), "--engine", "fake", "-m", "x", "-q"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [row["output"] for row in read_jsonl(done.stdout)] == ["cba"] * 3  # defaults
    assert done.stderr.splitlines() == [
        f"{source}:1: unknown field 'max_token' is ignored; did you mean 'max_tokens'?",
        f"{source}:1: unknown field 'temprature' is ignored; did you mean 'temperature'?",
    ]


def test_report_dash_is_stdout_when_the_results_go_to_a_file(
    prompts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke(str(prompts_file), "-o", str(out), "--report", "-", "-q")
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout)["rows"] == len(ROWS)
    assert len(read_jsonl(out.read_bytes())) == len(ROWS)
    assert not (tmp_path / "-").exists() and not Path("-").exists()


def test_report_dash_beside_results_on_stdout_is_refused(prompts_file: Path) -> None:
    result = invoke(str(prompts_file), "--report", "-")
    assert result.exit_code == 2
    assert result.stderr == (
        "bizra-batch: error: --report - writes to stdout, where the results go; give "
        "--report a file\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "build", "message"),
    [
        (
            ["--temperature", "inf"],
            lambda i, o: RunConfig(InputConfig(i), sampling=Sampling(temperature=float("inf"))),
            "--temperature: expected a finite number >= 0, found number inf",
        ),
        (
            ["--resume"],
            lambda i, o: RunConfig(InputConfig(i), OutputConfig(resume=True)),
            "--resume needs an output file (-o); stdout cannot be continued",
        ),
        (
            ["-o", "OUT", "--resume", "--overwrite"],
            lambda i, o: RunConfig(InputConfig(i), OutputConfig(o, resume=True, overwrite=True)),
            "OUT: pass --resume or --overwrite, not both",
        ),
        (
            ["--report", "-"],
            lambda i, o: RunConfig(InputConfig(i), report_path="-"),
            "--report - writes to stdout, where the results go; give --report a file",
        ),
    ],
)
def test_python_and_the_command_line_are_refused_alike(
    prompts_file: Path, tmp_path: Path, args: list[str], build: Any, message: str
) -> None:
    # One check in the config, whichever builds it; the CLI maps it to exit 2.
    out = str(tmp_path / "out.jsonl")
    message = message.replace("OUT", out)
    with pytest.raises(UsageError) as refused:
        build(str(prompts_file), out)
    assert str(refused.value) == message
    result = invoke(str(prompts_file), *(out if a == "OUT" else a for a in args))
    assert result.exit_code == 2
    assert result.stderr == f"bizra-batch: error: {message}\n"
