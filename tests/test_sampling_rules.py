"""One sampling check, one set of words, whichever way a setting arrives."""

from __future__ import annotations

import math
from typing import Any

import pytest

from batching.config import InputConfig, RunConfig
from batching.errors import UsageError
from batching.records import Sampling
from batching.sampling_rules import check_default_sampling, parse_sampling, setting_problem

BAD_SETTINGS = [
    ("max_tokens", 0, "expected an integer >= 1, found integer 0"),
    ("temperature", math.inf, "expected a finite number >= 0, found number inf"),
    ("temperature", -0.5, "expected a finite number >= 0, found number -0.5"),
    ("top_p", 0.0, "expected a number in (0, 1], found number 0.0"),
    ("top_k", -2, "expected an integer >= 1, or -1 or 0 for no limit, found integer -2"),
    ("n", 0, "expected an integer >= 1, found integer 0"),
    ("logprobs", -1, "expected an integer >= 0 (top tokens per position), found integer -1"),
    ("stop", ("",), "expected a non-empty string or a list of them, found a list of 1 item"),
]


@pytest.mark.parametrize(("name", "value", "problem"), BAD_SETTINGS)
def test_a_row_and_the_runs_defaults_are_refused_in_the_same_words(
    name: str, value: Any, problem: str
) -> None:
    row_value = list(value) if isinstance(value, tuple) else value
    assert setting_problem(name, value) == problem
    assert parse_sampling({name: row_value}, "p.jsonl:3")[1] == (
        f"p.jsonl:3: field {name!r}: {problem}"
    )
    with pytest.raises(UsageError) as refused:
        check_default_sampling(Sampling(**{name: value}))
    assert str(refused.value) == f"--{name.replace('_', '-')}: {problem}"


def test_a_run_config_from_python_gets_the_checks_the_command_line_gets() -> None:
    with pytest.raises(UsageError) as refused:
        RunConfig(input=InputConfig("in.jsonl"), sampling=Sampling(temperature=math.nan))
    assert str(refused.value) == "--temperature: expected a finite number >= 0, found number nan"


def test_valid_defaults_pass() -> None:
    check_default_sampling(
        Sampling(
            max_tokens=1,
            temperature=0.0,
            top_p=1.0,
            top_k=-1,
            seed=7,
            stop=("\n",),
            n=2,
            logprobs=0,
            json_schema='{"type": "object"}',
        )
    )
