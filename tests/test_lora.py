"""LoRA adapters without a model: `--lora` parsing, the row's `adapter` field, the
OpenAI body's `model`, grouping by adapter, and the CLI on the fake engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import EngineConfig, InputConfig
from batching.errors import UsageError
from batching.grouping import plan_order
from batching.lora import LoraAdapter, LoraAdapters
from batching.openai_batch import parse_openai_row
from batching.records import InvalidRow, Request
from batching.schema import parse_row
from cli.app import app
from cli.exit_codes import FAILED, OK, USAGE

runner = CliRunner()


def adapter_dir(root: Path, name: str, rank: int = 8, **config: Any) -> Path:
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, **config}), encoding="utf-8"
    )
    return path


# -- --lora NAME=PATH ------------------------------------------------------------------


def test_a_local_adapter_is_kept_with_its_absolute_path_and_rank(tmp_path: Path) -> None:
    path = adapter_dir(tmp_path, "sql", rank=32)
    assert LoraAdapter.parse(f"sql={path}") == LoraAdapter("sql", str(path), 32)


def test_a_directory_without_adapter_config_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        LoraAdapter.parse(f"sql={tmp_path}")
    assert str(caught.value) == (
        f"--lora sql={tmp_path}: not a LoRA adapter (no adapter_config.json); give a "
        "directory saved by PEFT (save_pretrained)"
    )


def test_another_peft_type_is_a_usage_error(tmp_path: Path) -> None:
    path = adapter_dir(tmp_path, "ia3", peft_type="IA3")
    with pytest.raises(UsageError) as caught:
        LoraAdapter.parse(f"x={path}")
    assert str(caught.value) == f"--lora x={path}: not a LoRA adapter (peft_type 'IA3')"


def test_a_hub_id_or_uri_is_left_to_vllm() -> None:
    assert LoraAdapter.parse("sql=org/sql-lora").rank is None
    assert LoraAdapter.parse("sql=s3://bucket/sql-lora").path == "s3://bucket/sql-lora"


def test_a_name_given_twice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^--lora a: the name is given twice$"):
        LoraAdapters.parse(["a=org/x", "a=org/y"])


def test_a_config_file_table_value_arrives_as_json_and_is_unquoted(tmp_path: Path) -> None:
    path = adapter_dir(tmp_path, "sql")
    assert LoraAdapter.parse(f'sql="{path}"').path == str(path)


def test_engine_kwargs_leave_a_spare_slot_and_round_the_rank_up(tmp_path: Path) -> None:
    adapters = LoraAdapters.parse(
        [f"a={adapter_dir(tmp_path, 'a', rank=8)}", f"b={adapter_dir(tmp_path, 'b', rank=20)}"]
    )
    kwargs = EngineConfig(model="m", loras=adapters).llm_kwargs()
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 3, 32)
    # --engine-arg still has the last word.
    kwargs = EngineConfig(model="m", loras=adapters, extra={"max_loras": 8}).llm_kwargs()
    assert kwargs["max_loras"] == 8


def test_no_adapters_add_no_engine_arguments() -> None:
    assert "enable_lora" not in EngineConfig(model="m").llm_kwargs()


# -- rows ------------------------------------------------------------------------------


def parse(obj: dict[str, Any], names: tuple[str, ...] = ("sql",)) -> Request | InvalidRow:
    cfg = InputConfig(path="p.jsonl", adapter_names=names)
    return parse_row(obj, index=0, line=1, fields=cfg, where="p.jsonl:1")


def test_a_row_names_its_adapter() -> None:
    row = parse({"prompt": "Hi", "adapter": "sql"})
    assert isinstance(row, Request)
    assert row.adapter == "sql"
    plain = parse({"prompt": "Hi", "adapter": None})
    assert isinstance(plain, Request) and plain.adapter is None


def test_an_unknown_adapter_is_an_invalid_row() -> None:
    row = parse({"prompt": "Hi", "adapter": "chat"}, names=("sql", "math"))
    assert isinstance(row, InvalidRow)
    assert row.error.type == "invalid_input"
    assert row.error.message == (
        "p.jsonl:1: field 'adapter': unknown adapter 'chat'; the run loads sql, math "
        "(--lora NAME=PATH)"
    )


def test_an_adapter_that_is_not_a_string_is_an_invalid_row() -> None:
    row = parse({"prompt": "Hi", "adapter": 3})
    assert isinstance(row, InvalidRow)
    assert row.error.message == (
        "p.jsonl:1: field 'adapter': expected an adapter name, found integer 3"
    )


def openai_line(model: str) -> dict[str, Any]:
    return {
        "custom_id": "q",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "Hi"}]},
    }


@pytest.mark.parametrize(("model", "adapter"), [("sql", "sql"), ("Qwen/Qwen2.5-0.5B", None)])
def test_an_openai_body_model_that_names_an_adapter_runs_with_it(
    model: str, adapter: str | None
) -> None:
    cfg = InputConfig(path="b.jsonl", adapter_names=("sql",))
    row = parse_openai_row(openai_line(model), index=0, line=1, fields=cfg, where="b:1")
    assert isinstance(row, Request)
    assert row.adapter == adapter


# -- grouping --------------------------------------------------------------------------


def test_rows_are_grouped_by_adapter_keeping_the_length_order_within() -> None:
    prompts = [[1] * 5, [1] * 2, [1] * 4, [1] * 1, [1] * 3]
    adapters = ["a", None, "b", "a", None]
    assert plan_order(prompts, "length", adapters=adapters) == ("length", [1, 4, 3, 0, 2])


def test_without_adapters_grouping_is_unchanged() -> None:
    prompts = [[1] * 3, [1], [1] * 2]
    assert plan_order(prompts, "length", adapters=[None, None, None]) == plan_order(
        prompts, "length"
    )


# -- the CLI on the fake engine ---------------------------------------------------------


def run_fake(*args: str) -> Any:
    return runner.invoke(app, ["run", *args, "--engine", "fake"])


def test_cli_rows_run_with_their_adapter_and_an_unknown_one_is_its_row_record(
    tmp_path: Path,
) -> None:
    sql = adapter_dir(tmp_path, "sql-lora")
    source = tmp_path / "in.jsonl"
    rows = [
        {"id": "base", "prompt": "ab"},
        {"id": "sql", "prompt": "cd", "adapter": "sql"},
        {"id": "nope", "prompt": "ef", "adapter": "chat"},
    ]
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    result = run_fake(str(source), "--lora", f"sql={sql}", "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == FAILED, result.output
    out = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [r["output"] for r in out] == ["ba", "sql:dc", None]
    assert out[2]["error"] == {
        "type": "invalid_input",
        "message": f"{source}:3: field 'adapter': unknown adapter 'chat'; the run loads sql "
        "(--lora NAME=PATH)",
    }


def test_cli_reads_the_adapter_column_of_a_parquet_file(tmp_path: Path) -> None:
    sql = adapter_dir(tmp_path, "sql-lora")
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"prompt": ["ab", "cd", "ef"], "adapter": [None, "sql", "sql"]}), source
    )
    out = tmp_path / "out.parquet"
    result = run_fake(str(source), "--lora", f"sql={sql}", "-o", str(out))
    assert result.exit_code == OK, result.output
    assert pq.read_table(out).column("output").to_pylist() == ["ba", "sql:dc", "sql:fe"]


def test_cli_a_path_that_is_not_an_adapter_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "ab"}\n')
    result = run_fake(str(source), "--lora", f"sql={tmp_path}")
    assert result.exit_code == USAGE
    assert result.stderr.strip() == (
        f"bizra-batch: error: --lora sql={tmp_path}: not a LoRA adapter (no "
        "adapter_config.json); give a directory saved by PEFT (save_pretrained)"
    )
