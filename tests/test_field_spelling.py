"""Warnings for row fields that look like misspellings of the fields bizra-batch reads."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batching import field_spelling
from batching.config import InputConfig
from batching.field_spelling import FieldSpelling
from batching.readers import open_source
from batching.records import Request, Sampling
from tests.reading_helpers import Open, jsonl, read_all


def warnings_for(
    rows: list[Collection[str]], caplog: pytest.LogCaptureFixture, **fields: object
) -> list[str]:
    spelling = FieldSpelling(InputConfig(path="in.jsonl", **fields))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        for line, row in enumerate(rows, 1):
            spelling.check(row, f"in.jsonl:{line}")
    return [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("max_token", "max_tokens"),
        ("temprature", "temperature"),
        ("max_new_tokens", "max_tokens"),
        ("top-p", "top_p"),
        ("topk", "top_k"),
        ("logprob", "logprobs"),
        ("json-schema", "json_schema"),
        ("Prompt", "prompt"),
        ("message", "messages"),
    ],
)
def test_a_near_miss_is_named_with_the_field_it_probably_means(
    typo: str, meant: str, caplog: pytest.LogCaptureFixture
) -> None:
    row = {"id": "x", typo: 1} if typo in ("Prompt", "message") else {"prompt": "c", typo: 1}
    assert warnings_for([row], caplog) == [
        f"in.jsonl:1: unknown field {typo!r} is ignored; did you mean {meant!r}?"
    ]


def test_each_name_is_warned_about_once_where_first_seen(caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"prompt": "a"},
        {"prompt": "b", "max_token": 1},
        {"prompt": "c", "max_token": 2, "temprature": 5},
        {"temprature": 1, "prompt": "d", "max_token": 3},
    ]
    assert warnings_for(rows, caplog) == [
        "in.jsonl:2: unknown field 'max_token' is ignored; did you mean 'max_tokens'?",
        "in.jsonl:3: unknown field 'temprature' is ignored; did you mean 'temperature'?",
    ]


@pytest.mark.parametrize(
    "row",
    [
        # Fields of the user's own: metadata, or short names that are words of
        # their own rather than typos of "id" and "stop".
        {"prompt": "a", "topic": "x", "source": "y", "category": 3},
        {"prompt": "a", "uid": 1, "idx": 2, "top": 3},
        # What the near miss would give the row is there already.
        {"prompt": "a", "max_tokens": 3, "max_token": 4},
        {"messages": [], "prompt_id": "p-1"},
        {"prompt": "a", "response_format": {}, "json-schema": "{}"},
    ],
)
def test_other_fields_are_left_alone(
    row: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    assert warnings_for([row], caplog) == []


def test_an_excused_near_miss_is_still_named_on_a_row_without_the_excuse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [{"prompt": "a", "max_tokens": 3, "max_token": 4}, {"prompt": "b", "max_token": 4}]
    assert warnings_for(rows, caplog) == [
        "in.jsonl:2: unknown field 'max_token' is ignored; did you mean 'max_tokens'?"
    ]


def test_kept_and_renamed_fields_count_as_read(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"question": "a", "max_token": 1, "questoin_id": 2, "prompt": "kept as is"}]
    found = warnings_for(rows, caplog, prompt_field="question", keep_fields=("max_token",))
    assert found == []
    found = warnings_for([{"questoin": "a"}], caplog, prompt_field="question")
    assert found == ["in.jsonl:1: unknown field 'questoin' is ignored; did you mean 'question'?"]


def test_rows_with_names_or_key_sets_seen_before_are_not_looked_at_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[str] = []
    close_matches = field_spelling.difflib.get_close_matches

    def counting(word: str, *args: object, **kwargs: object) -> list[str]:
        compared.append(word)
        return close_matches(word, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(field_spelling.difflib, "get_close_matches", counting)
    spelling = FieldSpelling(InputConfig(path="in.jsonl"))
    looked_at: list[str] = []
    meant = spelling._meant

    def looking(name: str) -> str | None:
        looked_at.append(name)
        return meant(name)

    monkeypatch.setattr(spelling, "_meant", looking)
    rows = [{"id": i, "prompt": "p", "topic": "t", "max_token": 2} for i in range(1000)]
    rows += [{"id": i, "messages": [], "prompt_id": "p"} for i in range(1000)]
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        for line, row in enumerate(rows, 1):
            spelling.check(row, f"in.jsonl:{line}")

    assert len(caplog.records) == 1
    assert sorted(compared) == ["max_token", "prompt_id", "topic"]
    # "topic" and "max_token" are cleared for good. "prompt_id" is not (a row may
    # lack "messages"), but its key set is remembered: looked at once, not 1,000 times.
    assert {"topic", "max_token"} <= spelling.cleared and "prompt_id" not in spelling.cleared
    assert sorted(looked_at) == ["max_token", "prompt_id", "topic"]


def test_misspelt_fields_are_warned_about_once_and_the_rows_still_run(
    open_jsonl: Open, caplog: pytest.LogCaptureFixture
) -> None:
    data = jsonl(
        {"id": "x", "prompt": "c", "max_token": 1, "temprature": 5},
        {"id": "y", "prompt": "d", "max_token": 2, "topic": "kept elsewhere"},
        {"id": "z", "prompt": "e", "temprature": 0},
    )
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        source = open_jsonl(data)
        rows = read_all(source)

    assert all(isinstance(row, Request) and row.sampling == Sampling() for row in rows)
    assert [record.getMessage() for record in caplog.records] == [
        f"{source.name}:1: unknown field 'max_token' is ignored; did you mean 'max_tokens'?",
        f"{source.name}:1: unknown field 'temprature' is ignored; did you mean 'temperature'?",
    ]


def test_a_misspelt_parquet_column_is_warned_about_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "max_token": 3, "topic": "t"}] * 3), path)
    with caplog.at_level(logging.WARNING, logger="bizra_batch"):
        rows = read_all(open_source(InputConfig(path=str(path))))
    assert len(rows) == 3
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: unknown field 'max_token' is ignored; did you mean 'max_tokens'?"
    ]
