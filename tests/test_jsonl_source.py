"""JSON Lines input: every line once, in order, with bad lines kept in place as errors."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.config import InputConfig
from batching.errors import InputError
from batching.readers import open_source
from batching.records import InvalidRow, Request
from tests.reading_helpers import Open, error_of, jsonl, read_all


def test_blank_lines_are_skipped_but_line_numbers_still_count_them(open_jsonl: Open) -> None:
    data = b'\n  \n{"prompt": "a"}\n\t\n\n{"prompt": "b"}\n\n'

    rows = read_all(open_jsonl(data))

    assert [(r.index, r.line) for r in rows] == [(0, 3), (1, 6)]


def test_bom_and_crlf_line_endings_are_tolerated(open_jsonl: Open) -> None:
    data = b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n'

    rows = read_all(open_jsonl(data))

    assert [r.prompt for r in rows if isinstance(r, Request)] == ["a", "b"]


def test_last_line_without_newline_is_a_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "a"}\n{"prompt": "b"}'))

    assert len(rows) == 2


def test_empty_input_has_no_rows(open_jsonl: Open) -> None:
    assert read_all(open_jsonl(b"")) == []


def test_bad_json_line_becomes_an_error_row_in_its_place(open_jsonl: Open) -> None:
    data = b'{"prompt": "a"}\n{"prompt": "b",\n{"prompt": "c"}\n'

    rows = read_all(open_jsonl(data))

    assert [type(r) for r in rows] == [Request, InvalidRow, Request]
    bad = rows[1]
    assert (bad.index, bad.line, bad.id) == (1, 2, 1)
    assert ":2: not valid JSON" in error_of(bad)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_a_line_cut_short_points_past_its_end(open_jsonl: Open, ending: bytes) -> None:
    # Parsed with its newline, orjson placed the error at "line 2, column 1".
    rows = read_all(open_jsonl(b'{"id":"badjson","prompt":"hello"' + ending))
    assert "(unexpected end of data at column 33)" in error_of(rows[0])


def test_line_that_is_not_utf8_becomes_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "caf\xe9"}\n{"prompt": "ok"}\n'))

    assert ":1: not valid UTF-8 at byte 16" in error_of(rows[0])
    assert isinstance(rows[1], Request)


def test_line_that_is_not_an_object_becomes_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'"just a string"\n[1, 2]\n'))

    assert ":1: expected a JSON object per line" in error_of(rows[0])
    assert ":2: expected a JSON object per line" in error_of(rows[1])


def test_error_rows_carry_the_kept_fields_as_none(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b"not json\n", keep_fields=("topic",)))

    assert rows[0].kept == {"topic": None}


@pytest.mark.parametrize("length", [65, 3 * 1024 * 1024])
def test_over_long_line_becomes_an_error_row_and_the_next_line_is_read(
    open_jsonl: Open, length: int
) -> None:
    long_line = b'{"prompt": "' + b"x" * length + b'"}\n'
    data = b'{"prompt": "a"}\n' + long_line + b'{"prompt": "b"}\n'

    rows = read_all(open_jsonl(data, max_line_bytes=64))

    assert [type(r) for r in rows] == [Request, InvalidRow, Request]
    assert ":2: line is longer than the limit of 64 bytes" in error_of(rows[1])
    assert "--max-line-bytes" in error_of(rows[1])  # how to raise the limit
    assert (rows[2].line, rows[2].prompt) == (3, "b")  # type: ignore[union-attr]


def test_line_at_exactly_the_limit_is_read(open_jsonl: Open) -> None:
    line = b'{"prompt": "' + b"x" * 20 + b'"}'

    rows = read_all(open_jsonl(line + b"\n" + line, max_line_bytes=len(line)))

    assert [type(r) for r in rows] == [Request, Request]


def test_over_long_last_line_without_newline_is_an_error_row(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(b'{"prompt": "a"}\n{"prompt": "xxxxxxxxx"}', max_line_bytes=16))

    assert [type(r) for r in rows] == [Request, InvalidRow]


def test_file_progress_reaches_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(*({"prompt": str(i)} for i in range(10))))

    with open_source(InputConfig(path=str(path), chunk_size=4)) as source:
        assert (source.total_rows, source.total_bytes) == (None, path.stat().st_size)
        seen = [(source.rows_read, source.bytes_read) for _ in source.chunks()]

    assert [rows for rows, _ in seen] == [4, 8, 10]
    assert seen[-1][1] == path.stat().st_size


def test_stdin_progress_counts_bytes_without_a_total() -> None:
    data = jsonl({"prompt": "a"}, {"prompt": "b"})

    source = open_source(InputConfig(path="-"), stdin=io.BytesIO(data))
    read_all(source)

    assert (source.total_bytes, source.bytes_read, source.rows_read) == (None, len(data), 2)


def test_gzip_file_is_read_and_progress_counts_compressed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(*({"prompt": str(i)} for i in range(1000)))))

    source = open_source(InputConfig(path=str(path)))
    rows = read_all(source)

    assert [r.prompt for r in rows] == [str(i) for i in range(1000)]  # type: ignore[union-attr]
    assert source.total_bytes == source.bytes_read == path.stat().st_size


def test_gzip_content_is_recognised_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(gzip.compress(jsonl({"prompt": "a"})))

    assert [r.prompt for r in read_all(open_source(InputConfig(path=str(path))))] == ["a"]  # type: ignore[union-attr]


def test_gz_name_without_gzip_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(jsonl({"prompt": "a"}))

    with pytest.raises(InputError, match=r"in\.jsonl\.gz: named \.gz but not gzip"):
        open_source(InputConfig(path=str(path)))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_raises_input_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    packed = gzip.compress(jsonl(*({"prompt": f"row {i}"} for i in range(5000))))
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed = packed[:20] + bytes(b ^ 0xFF for b in packed[20:60]) + packed[60:]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(packed)

    with pytest.raises(InputError, match=r"in\.jsonl\.gz: cannot read.*gzip -t"):
        read_all(open_source(InputConfig(path=str(path))))


def test_gzip_on_stdin_says_to_decompress_it() -> None:
    stdin = io.BytesIO(gzip.compress(jsonl({"prompt": "a"})))

    with pytest.raises(InputError, match="gzip-compressed; pipe it through `gunzip -c`"):
        read_all(open_source(InputConfig(path="-"), stdin=stdin))


def test_utf16_input_says_to_convert_it(open_jsonl: Open) -> None:
    with pytest.raises(InputError, match="UTF-16; convert it to UTF-8"):
        read_all(open_jsonl('{"prompt": "a"}\n'.encode("utf-16")))


prompts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(prompts, st.booleans(), st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"])),
        max_size=40,
    ),
    chunk_size=st.integers(1, 8),
)
def test_jsonl_round_trip_keeps_every_prompt_id_and_the_order(
    open_jsonl: Open, rows: list[tuple[str, bool, bytes]], chunk_size: int
) -> None:
    data = b"".join(
        orjson.dumps({"prompt": prompt, **({"id": f"id-{n}"} if with_id else {})}) + ending
        for n, (prompt, with_id, ending) in enumerate(rows)
    )

    read = read_all(open_jsonl(data, chunk_size=chunk_size))

    assert [r.prompt for r in read] == [p for p, _, _ in rows]  # type: ignore[union-attr]
    assert [r.id for r in read] == [f"id-{n}" if w else n for n, (_, w, _) in enumerate(rows)]
    assert [r.index for r in read] == list(range(len(rows)))


def test_over_long_first_line_with_a_bom_is_one_error_row(open_jsonl: Open) -> None:
    data = b'\xef\xbb\xbf{"prompt": "' + b"x" * 100 + b'"}\n{"prompt": "b"}\n'

    rows = read_all(open_jsonl(data, max_line_bytes=50))

    assert [(type(r), r.line) for r in rows] == [(InvalidRow, 1), (Request, 2)]


def test_rows_come_in_file_order_with_index_line_and_id(open_jsonl: Open) -> None:
    rows = read_all(open_jsonl(jsonl({"id": "a", "prompt": "one"}, {"prompt": "two"})))

    assert [(r.index, r.line, r.id) for r in rows] == [(0, 1, "a"), (1, 2, 1)]
    assert [r.prompt for r in rows if isinstance(r, Request)] == ["one", "two"]
