"""One decoded row -> Request or InvalidRow: every rule, and what the messages say."""

from __future__ import annotations

import math
from typing import Any

import pytest

from batching.config import InputConfig
from batching.records import ERROR_INVALID_INPUT, InvalidRow, Request, Sampling
from batching.schema import describe, parse_row

FIELDS = InputConfig(path="prompts.jsonl", keep_fields=("topic", "lang"))
WHERE = "prompts.jsonl:12"


def parse(obj: object, *, index: int = 11, fields: InputConfig = FIELDS) -> Request | InvalidRow:
    return parse_row(obj, index=index, line=12, fields=fields, where=WHERE)


def invalid(obj: object, **kwargs: Any) -> InvalidRow:
    row = parse(obj, **kwargs)
    assert isinstance(row, InvalidRow), row
    assert row.error.type == ERROR_INVALID_INPUT
    assert row.error.message.startswith(f"{WHERE}: ")
    return row


def test_prompt_row_becomes_request_with_its_id_line_and_kept_fields() -> None:
    row = parse({"id": "q1", "prompt": "Hello", "topic": "greeting", "other": 1})

    assert row == Request(
        index=11,
        id="q1",
        line=12,
        prompt="Hello",
        kept={"topic": "greeting", "lang": None},
    )


def test_missing_keep_fields_are_none_so_every_output_row_has_the_same_columns() -> None:
    row = parse({"prompt": "Hello"})

    assert dict(row.kept) == {"topic": None, "lang": None}


@pytest.mark.parametrize("obj", [{"prompt": "Hi"}, {"prompt": "Hi", "id": None}])
def test_row_without_id_gets_its_index(obj: dict[str, Any]) -> None:
    assert parse(obj, index=41).id == 41


@pytest.mark.parametrize("row_id", ["a", "", 0, -3, 2**62, 1.5, True, False])
def test_any_json_scalar_is_an_id(row_id: object) -> None:
    row = parse({"prompt": "Hi", "id": row_id})

    assert isinstance(row, Request)
    assert row.id == row_id
    assert type(row.id) is type(row_id)


def test_id_field_is_configurable() -> None:
    fields = InputConfig(path="p.jsonl", id_field="custom_id")

    assert parse({"prompt": "Hi", "custom_id": "x", "id": 5}, fields=fields).id == "x"


@pytest.mark.parametrize(
    ("row_id", "found"),
    [([1, 2], "a list of 2 items"), ({"a": 1}, "an object with keys 'a'"), (math.nan, "nan")],
)
def test_id_that_is_not_a_scalar_is_invalid(row_id: object, found: str) -> None:
    row = invalid({"prompt": "Hi", "id": row_id, "topic": "t"})

    assert "field 'id'" in row.error.message
    assert "expected a string, integer, finite number or boolean" in row.error.message
    assert found in row.error.message
    assert row.id == 11  # unreadable id: the index, like a row without one
    assert row.kept == {"topic": "t", "lang": None}


def test_invalid_row_keeps_its_id_and_kept_fields() -> None:
    row = invalid({"id": "q7", "prompt": "", "topic": "t"})

    assert row.id == "q7"
    assert row.index == 11
    assert row.line == 12
    assert dict(row.kept) == {"topic": "t", "lang": None}


@pytest.mark.parametrize(
    ("obj", "found"),
    [
        ([{"prompt": "a"}, {"prompt": "b"}], "a list of 2 items"),
        ("just text", "string 'just text'"),
        (42, "integer 42"),
        (None, "null"),
    ],
)
def test_row_that_is_not_an_object_is_invalid(obj: object, found: str) -> None:
    row = invalid(obj)

    assert "expected a JSON object per line" in row.error.message
    assert found in row.error.message
    assert dict(row.kept) == {"topic": None, "lang": None}


def test_json_array_row_hints_at_converting_to_json_lines() -> None:
    assert "jq -c '.[]'" in invalid([{"prompt": "a"}]).error.message


def test_prompt_and_messages_together_are_invalid() -> None:
    row = invalid({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]})

    assert "'prompt' and 'messages' are both set" in row.error.message


def test_row_without_prompt_or_messages_names_both_fields_and_the_options() -> None:
    message = invalid({"text": "Hi"}).error.message

    assert "no 'prompt' or 'messages' field" in message
    assert "--prompt-field" in message


def test_null_prompt_counts_as_absent_so_sparse_parquet_columns_work() -> None:
    row = parse({"prompt": None, "messages": [{"role": "user", "content": "Hi"}]})

    assert isinstance(row, Request)
    assert row.prompt is None


@pytest.mark.parametrize(
    ("prompt", "found"), [("", "an empty string"), (7, "integer 7"), (["a"], "a list of 1 item")]
)
def test_prompt_must_be_a_non_empty_string(prompt: object, found: str) -> None:
    message = invalid({"prompt": prompt}).error.message

    assert f"field 'prompt': expected a non-empty string, found {found}" in message


def test_prompt_field_is_configurable() -> None:
    fields = InputConfig(path="p.jsonl", prompt_field="question")

    assert parse({"question": "Why?"}, fields=fields) == Request(11, 11, 12, prompt="Why?")
    assert "field 'question'" in invalid({"question": ""}, fields=fields).error.message


def test_chat_messages_become_a_tuple() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    row = parse({"messages": messages})

    assert isinstance(row, Request)
    assert row.messages == tuple(messages)
    assert row.prompt is None


@pytest.mark.parametrize(
    ("messages", "field", "expected"),
    [
        ([], "messages", "a non-empty list of messages"),
        ("Hi", "messages", "a non-empty list of messages"),
        (["Hi"], "messages[0]", "an object with 'role' and 'content'"),
        ([{"content": "Hi"}], "messages[0].role", "a non-empty string"),
        ([{"role": 1, "content": "Hi"}], "messages[0].role", "a non-empty string"),
        (
            [{"role": "user", "content": "a"}, {"role": "user"}],
            "messages[1].content",
            "a string or a list of parts",
        ),
        ([{"role": "user", "content": 5}], "messages[0].content", "a string or a list"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages[0].content[0]",
            'a {"type": "text", "text": ...} or {"type": "image_url", ...} part',
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]}],
            "messages[0].content[0].image_url",
            'an object with a "url" string',
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": None}]}],
            "messages[0].content[0].text",
            "a string",
        ),
    ],
)
def test_malformed_messages_name_the_exact_place(
    messages: object, field: str, expected: str
) -> None:
    message = invalid({"messages": messages}).error.message

    assert f"field {field!r}: expected {expected}" in message


def test_sampling_overrides_become_sampling() -> None:
    row = parse(
        {
            "prompt": "Hi",
            "max_tokens": 16,
            "temperature": 0,
            "top_p": 0.9,
            "top_k": -1,
            "seed": 42,
            "stop": ["\n\n", "END"],
        }
    )

    assert isinstance(row, Request)
    assert row.sampling == Sampling(
        max_tokens=16, temperature=0.0, top_p=0.9, top_k=-1, seed=42, stop=("\n\n", "END")
    )
    assert isinstance(row.sampling.temperature, float)


def test_row_without_overrides_takes_every_default() -> None:
    row = parse({"prompt": "Hi", "max_tokens": None})

    assert row.sampling == Sampling()  # type: ignore[union-attr]


def test_single_stop_string_becomes_a_tuple() -> None:
    assert parse({"prompt": "Hi", "stop": "END"}).sampling.stop == ("END",)  # type: ignore[union-attr]


def test_integral_float_counts_as_integer_as_in_json_schema() -> None:
    sampling = parse({"prompt": "Hi", "max_tokens": 16.0}).sampling  # type: ignore[union-attr]

    assert sampling.max_tokens == 16
    assert type(sampling.max_tokens) is int


@pytest.mark.parametrize(
    ("field", "value", "expected", "found"),
    [
        ("max_tokens", 0, "an integer >= 1", "integer 0"),
        ("max_tokens", -5, "an integer >= 1", "integer -5"),
        ("max_tokens", True, "an integer >= 1", "boolean true"),
        ("max_tokens", 1.5, "an integer >= 1", "number 1.5"),
        ("max_tokens", "16", "an integer >= 1", "string '16'"),
        ("max_tokens", 2.0**60, "an integer >= 1", "number"),
        ("temperature", -0.1, "a finite number >= 0", "number -0.1"),
        ("temperature", math.nan, "a finite number >= 0", "number nan"),
        ("temperature", math.inf, "a finite number >= 0", "number inf"),
        ("temperature", "0.7", "a finite number >= 0", "string '0.7'"),
        ("temperature", False, "a finite number >= 0", "boolean false"),
        ("top_p", 0, "a number in (0, 1]", "integer 0"),
        ("top_p", 1.01, "a number in (0, 1]", "number 1.01"),
        ("top_p", math.nan, "a number in (0, 1]", "number nan"),
        ("top_k", -2, "an integer >= 1, or -1 or 0 for no limit", "integer -2"),
        ("top_k", 2.5, "an integer >= 1, or -1 or 0 for no limit", "number 2.5"),
        ("seed", "7", "an integer", "string '7'"),
        ("seed", 0.5, "an integer", "number 0.5"),
        ("stop", 5, "a non-empty string or a list of them", "integer 5"),
        ("stop", ["END", 1], "a non-empty string or a list of them", "a list of 2 items"),
        ("stop", "", "a non-empty string or a list of them", "an empty string"),
        ("stop", [""], "a non-empty string or a list of them", "a list of 1 item"),
    ],
)
def test_bad_sampling_override_names_field_expectation_and_value(
    field: str, value: object, expected: str, found: str
) -> None:
    row = invalid({"id": "q1", "prompt": "Hi", field: value})

    assert f"{WHERE}: field {field!r}: expected {expected}, found {found}" in row.error.message
    assert row.id == "q1"


def test_message_never_quotes_a_whole_prompt() -> None:
    prompt = "word " * 20_000
    message = invalid({"prompt": prompt, "messages": "not a list"}).error.message

    assert len(message) < 200
    short = invalid({"prompt": ["x" * 10_000]}).error.message
    assert len(short) < 200


def test_describe_shortens_long_strings_and_counts_collections() -> None:
    assert describe("x" * 500).startswith("a 500-character string starting 'xxx")
    assert len(describe("x" * 500)) < 80
    assert describe({"k": 1, "j": 2}) == "an object with keys 'k', 'j'"
    assert describe({}) == "an empty object"
    assert describe(True) == "boolean true"
