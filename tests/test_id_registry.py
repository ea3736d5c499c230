"""Row ids: a repeated id, explicit or a row number, is an error pointing at the first."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.records import InvalidRow, Request
from tests.reading_helpers import Open, error_of, jsonl, read_all


def test_repeated_id_is_an_error_that_points_at_the_first(open_jsonl: Open) -> None:
    data = jsonl(
        {"id": "a", "prompt": "1"},
        {"id": "b", "prompt": "2"},
        {"id": "a", "prompt": "3", "topic": "t"},
    )

    rows = read_all(open_jsonl(data, keep_fields=("topic",)))

    assert [type(r) for r in rows] == [Request, Request, InvalidRow]
    message = error_of(rows[2])
    assert ":3: field 'id': duplicate id" in message
    assert "first seen at line 1" in message
    assert (rows[2].id, rows[2].kept) == ("a", {"topic": "t"})


def test_ids_of_different_types_are_different_ids(open_jsonl: Open) -> None:
    data = jsonl(*({"id": i, "prompt": "p"} for i in [1, "1", True, 1.0]))

    rows = read_all(open_jsonl(data))

    assert all(isinstance(r, Request) for r in rows)


def test_row_without_id_whose_row_number_an_earlier_row_used_is_an_error(
    open_jsonl: Open,
) -> None:
    # Row 1 has no id, so its id is its index 1, which row 0 gave explicitly.
    data = jsonl({"id": 1, "prompt": "a"}, {"prompt": "b", "topic": "t"})

    rows = read_all(open_jsonl(data, keep_fields=("topic",)))

    assert [type(r) for r in rows] == [Request, InvalidRow]
    assert error_of(rows[1]).endswith(
        ":2: field 'id': duplicate id, integer 1 was first seen at line 1; this row has no "
        "'id', so its id is its 0-based row number, 1; give every row an id, or none"
    )
    assert (rows[1].id, rows[1].kept) == (1, {"topic": "t"})


def test_explicit_id_that_an_earlier_row_had_as_its_row_number_is_an_error(
    open_jsonl: Open,
) -> None:
    data = jsonl({"prompt": "a"}, {"prompt": "b"}, {"id": 1, "prompt": "c"})

    rows = read_all(open_jsonl(data))

    assert [type(r) for r in rows] == [Request, Request, InvalidRow]
    assert error_of(rows[2]).endswith(
        ":3: field 'id': duplicate id, integer 1 was first seen at line 2 as that row's "
        "default id (it has no 'id', so its id is its 0-based row number); give every "
        "row an id, or none"
    )
    assert rows[2].id == 1


def test_null_id_is_no_id_and_collides_as_one(open_jsonl: Open) -> None:
    data = jsonl({"id": None, "prompt": "a"}, {"id": 0, "prompt": "b"})

    rows = read_all(open_jsonl(data))

    assert "integer 0 was first seen at line 1 as that row's default id" in error_of(rows[1])


@pytest.mark.parametrize(
    "bad_line",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"id": [1], "prompt": "a"}', id="id-not-an-id"),
        pytest.param(b'["a", "list"]', id="not-an-object"),
        pytest.param(b'{"prompt": "' + b"x" * 60 + b'"}', id="over-long"),
    ],
)
def test_error_row_keeps_its_row_number_as_id_and_collides(
    open_jsonl: Open, bad_line: bytes
) -> None:
    data = bad_line + b"\n" + jsonl({"id": 0, "prompt": "b"})

    rows = read_all(open_jsonl(data, max_line_bytes=50))

    assert [type(r) for r in rows] == [InvalidRow, InvalidRow]
    assert [r.id for r in rows] == [0, 0]
    assert ":2: field 'id': duplicate id, integer 0 was first seen at line 1 as" in (
        error_of(rows[1])
    )


def test_row_number_collisions_name_the_right_lines_past_blank_lines(open_jsonl: Open) -> None:
    # Rows 0-3 (lines 2, 3, 6, 8) have no id; blank lines make index and line differ.
    data = (
        b"\n"
        + jsonl({"prompt": "a"}, {"prompt": "b"})
        + b"\n\n"
        + jsonl({"prompt": "c"})
        + b"\n"
        + jsonl({"prompt": "d"})
        + b"\n"
        + jsonl(*({"id": i, "prompt": "e"} for i in [4, 3, 2, 1, 0]))
    )

    rows = read_all(open_jsonl(data))

    assert [r.line for r in rows] == [2, 3, 6, 8, 10, 11, 12, 13, 14]
    firsts = [error_of(r).split("first seen at ")[1][:7] for r in rows[5:]]
    assert firsts == ["line 8 ", "line 6 ", "line 3 ", "line 2 "]


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param([0, 1, 2], id="all-ids-equal-to-row-numbers"),
        pytest.param([2, 1, 0], id="all-ids-reversed"),
        pytest.param([None, None, None], id="no-ids"),
        pytest.param(["1", None, None], id="string-1-is-not-row-number-1"),
        pytest.param([None, "1", "0"], id="string-0-after-row-number-0"),
        pytest.param([True, None, 1.0], id="true-and-1.0-are-not-row-number-1"),
        pytest.param([None, 9, None, 7, -1, None, "x"], id="ids-no-row-number-reaches"),
        pytest.param([3, None, None], id="id-past-the-last-row"),
    ],
)
def test_ids_that_do_not_repeat_a_row_number_are_all_valid(
    open_jsonl: Open, ids: list[object]
) -> None:
    data = jsonl(*({"prompt": "p"} if i is None else {"id": i, "prompt": "p"} for i in ids))

    rows = read_all(open_jsonl(data))

    assert all(isinstance(r, Request) for r in rows), [r for r in rows if isinstance(r, InvalidRow)]


def test_custom_id_field_is_the_one_checked_for_repeats(open_jsonl: Open) -> None:
    data = jsonl({"key": 5, "id": 1, "prompt": "a"}, {"key": 5, "id": 2, "prompt": "b"})

    rows = read_all(open_jsonl(data, id_field="key"))

    assert "field 'key': duplicate id" in error_of(rows[1])


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-1, 6), st.sampled_from(["0", "1", True, 1.0])),
            st.sampled_from([b"\n", b"\n\n"]),
        ),
        max_size=12,
    )
)
def test_each_id_explicit_or_row_number_is_refused_when_an_earlier_row_had_it(
    open_jsonl: Open, rows: list[tuple[object, bytes]]
) -> None:
    data = b"".join(
        orjson.dumps({"prompt": "p"} if i is None else {"id": i, "prompt": "p"}) + ending
        for i, ending in rows
    )
    first_line: dict[tuple[str, object], int] = {}
    expected: list[int | None] = []  # per row: the line that had its id first, if any
    line = 1
    for index, (raw, ending) in enumerate(rows):
        row_id = index if raw is None else raw
        key = (type(row_id).__name__, row_id)
        expected.append(first_line.get(key))
        first_line.setdefault(key, line)
        line += len(ending)

    read = read_all(open_jsonl(data))

    assert [r.id for r in read] == [index if i is None else i for index, (i, _) in enumerate(rows)]
    for row, first in zip(read, expected, strict=True):
        if first is None:
            assert isinstance(row, Request)
        else:
            assert f" was first seen at line {first}" in error_of(row)
