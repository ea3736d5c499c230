"""`--chat` and `--system`: prompts sent as chats, from flags, the config file, the
Python API, JSONL, Parquet and a template; and the real chat template on vLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.chat_framing import ChatFraming
from batching.config import OPENAI_LINES_FRAMED, InputConfig, OutputConfig, RunConfig
from batching.errors import UsageError
from batching.readers import open_source
from batching.records import InvalidRow, Request
from batching.schema import parse_row
from batching.template import PromptTemplate
from cli.app import app

runner = CliRunner()

SYSTEM = {"role": "system", "content": "Be brief."}
OWN_SYSTEM = {"role": "system", "content": "Answer in French."}
USER = {"role": "user", "content": "Hi"}


def request(obj: dict[str, Any], **config: Any) -> Request:
    row = parse_row(obj, index=0, line=1, fields=InputConfig("in.jsonl", **config), where="in:1")
    assert isinstance(row, Request)
    return row


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def fake_run(*args: str) -> Any:
    return runner.invoke(app, ["run", *args, "--engine", "fake", "--quiet"])


def test_chat_makes_the_prompt_the_user_message() -> None:
    row = request({"prompt": "Hi"}, chat=True)
    assert (row.prompt, row.messages) == (None, (USER,))


def test_system_puts_the_system_message_first_and_implies_chat() -> None:
    row = request({"prompt": "Hi"}, system="Be brief.")
    assert (row.prompt, row.messages) == (None, (SYSTEM, USER))


def test_a_rows_messages_get_the_system_message_first() -> None:
    assert request({"messages": [USER]}, system="Be brief.").messages == (SYSTEM, USER)


def test_a_chat_that_starts_with_its_own_system_message_keeps_it() -> None:
    row = request({"messages": [OWN_SYSTEM, USER]}, system="Be brief.")
    assert row.messages == (OWN_SYSTEM, USER)


def test_without_chat_a_prompt_stays_a_prompt() -> None:
    row = request({"prompt": "Hi"})
    assert (row.prompt, row.messages) == ("Hi", None)


def test_a_templates_text_is_the_user_message() -> None:
    row = request({"review": "Great!"}, template=PromptTemplate("Rate: {{ review }}"), chat=True)
    assert row.messages == ({"role": "user", "content": "Rate: Great!"},)


def test_an_invalid_row_stays_invalid_with_chat() -> None:
    fields = InputConfig("in.jsonl", chat=True)
    row = parse_row({"prompt": ""}, index=0, line=1, fields=fields, where="in:1")
    assert isinstance(row, InvalidRow)
    assert (
        row.error.message
        == "in:1: field 'prompt': expected a non-empty string, found an empty string"
    )


def test_an_empty_system_message_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^--system: the system message is empty; give its text$"):
        InputConfig("in.jsonl", system="  ")


def test_chat_with_openai_input_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as error:
        InputConfig("in.jsonl", format="openai", chat=True)
    assert str(error.value) == OPENAI_LINES_FRAMED


def test_the_framing_is_one_rule_for_messages_given_as_a_list() -> None:
    framing = ChatFraming()
    assert framing.frame(None, [USER]) == (USER,)


def test_parquet_rows_are_framed_too(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["Hi", "Yo"]}), path)
    with open_source(InputConfig(str(path), system="Be brief.")) as source:
        rows = [row for chunk in source.chunks() for row in chunk]
    assert [row.messages for row in rows if isinstance(row, Request)] == [
        (SYSTEM, USER),
        (SYSTEM, {"role": "user", "content": "Yo"}),
    ]


def test_run_with_system_sends_the_chat_and_writes_one_row_each(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([{"id": "a", "prompt": "Hi"}, {"id": "b", "messages": [OWN_SYSTEM]}]))
    result = fake_run(str(source), "--system", "Be brief.")
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    # The fake model renders a chat as "role: text" lines and answers it reversed.
    framed = "system: Be brief.\nuser: Hi"
    assert [(row["id"], row["output"], row["prompt_tokens"]) for row in rows] == [
        ("a", framed[::-1], len(framed)),
        ("b", "system: Answer in French."[::-1], len("system: Answer in French.")),
    ]


def test_system_from_the_config_file(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([{"prompt": "Hi"}]))
    config = tmp_path / "bizra.toml"
    config.write_text('system = """Be\nbrief."""\n')
    result = fake_run(str(source), "--config", str(config))
    assert result.exit_code == 0, result.output
    framed = "system: Be\nbrief.\nuser: Hi"
    assert orjson.loads(result.stdout)["output"] == framed[::-1]


def test_an_openai_batch_file_with_chat_is_refused_naming_its_first_line(tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    source.write_bytes(jsonl([line]))
    result = fake_run(str(source), "--chat")
    assert result.exit_code == 2
    assert f"{source}:1: {OPENAI_LINES_FRAMED}" in result.stderr


def test_validate_counts_framed_rows_as_chats(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([{"prompt": "Hi"}, {"prompt": "Yo"}]))
    result = runner.invoke(app, ["validate", str(source), "--chat", "--json"])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert (report["chat_rows"], report["plain_rows"]) == (2, 0)


@pytest.mark.vllm
def test_on_vllm_the_chat_goes_through_the_models_chat_template(
    vllm_engine: Any, tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from batching.adapters import KeptOpen
    from batching.job import run

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(jsonl([{"prompt": "Hello there"}, {"messages": [USER]}]))
    config = RunConfig(
        input=InputConfig(str(source), system="Be brief."),
        output=OutputConfig(str(out)),
    )
    report = run(config, lambda: KeptOpen(vllm_engine))
    assert report.rows_ok == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected = [
        [SYSTEM, {"role": "user", "content": "Hello there"}],
        [SYSTEM, USER],
    ]
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # The reference: transformers' own rendering of the chat the row should become.
    assert [row["prompt_tokens"] for row in rows] == [
        len(tokenizer(text, add_special_tokens=False).input_ids)
        for text in (
            tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            for chat in expected
        )
    ]
