"""Opening an input: which reader a path gets, how rows are named, chunking."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batching.config import InputConfig
from batching.errors import InputError, UsageError
from batching.readers import STDIN_NAME, input_format, open_source, row_place
from tests.reading_helpers import Open, error_of, jsonl, read_all


def test_error_messages_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"prompt": ""}\n')

    rows = read_all(open_source(InputConfig(path=str(path))))

    assert error_of(rows[1]).startswith(f"{path}:3: field 'prompt'")


def test_stdin_messages_name_stdin() -> None:
    rows = read_all(open_source(InputConfig(path="-"), stdin=io.BytesIO(b"{}\n")))

    assert error_of(rows[0]).startswith(f"{STDIN_NAME}:1: ")


@pytest.mark.parametrize("kind", ["jsonl", "stdin", "parquet", "gz"])
def test_row_place_names_a_row_as_the_source_does(tmp_path: Path, kind: str) -> None:
    # The pipeline names rows the engine refuses with row_place: it must match.
    rows = [{"prompt": "a"}, {"prompt": ""}]
    stdin = None
    if kind == "stdin":
        cfg, stdin = InputConfig(path="-"), io.BytesIO(jsonl(*rows))
    elif kind == "parquet":
        cfg = InputConfig(path=str(tmp_path / "in.parquet"))
        pq.write_table(pa.Table.from_pylist(rows), cfg.path)
    elif kind == "gz":
        cfg = InputConfig(path=str(tmp_path / "in.jsonl.gz"))
        Path(cfg.path).write_bytes(gzip.compress(jsonl(*rows)))
    else:
        cfg = InputConfig(path=str(tmp_path / "in.jsonl"))
        Path(cfg.path).write_bytes(jsonl(*rows))

    [_, bad] = read_all(open_source(cfg, stdin=stdin))

    assert error_of(bad).startswith(row_place(cfg)(1, 2) + ": field 'prompt'")


def test_row_place_of_a_label_that_is_no_file_name() -> None:
    assert row_place(InputConfig(path="<submit>"))(3, 4) == "<submit>:4"


@pytest.mark.parametrize(
    ("chunk_size", "sizes"), [(1, [1] * 7), (3, [3, 3, 1]), (7, [7]), (1000, [7])]
)
def test_chunks_hold_at_most_chunk_size_rows(
    open_jsonl: Open, chunk_size: int, sizes: list[int]
) -> None:
    data = jsonl(*({"prompt": str(i)} for i in range(7)))

    with open_jsonl(data, chunk_size=chunk_size) as source:
        chunks = list(source.chunks())

    assert [len(c) for c in chunks] == sizes
    assert [r.index for c in chunks for r in c] == list(range(7))


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(UsageError, match="chunk size"):
        open_source(InputConfig(path="-", chunk_size=0), stdin=io.BytesIO())


def test_missing_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"

    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        open_source(InputConfig(path=str(path)))


def test_a_directory_without_input_files_raises_input_error(tmp_path: Path) -> None:
    # A directory is read as its input files (tests/test_inputs.py); this one has none.
    folder = tmp_path / "data.jsonl"
    folder.mkdir()

    with pytest.raises(InputError, match="the directory holds no input files"):
        open_source(InputConfig(path=str(folder)))


def test_unknown_extension_suggests_input_format(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(jsonl({"prompt": "a"}))

    with pytest.raises(InputError, match=r"prompts\.txt: unknown input format.*--input-format"):
        open_source(InputConfig(path=str(path)))


def test_format_option_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(jsonl({"prompt": "a"}))

    rows = read_all(open_source(InputConfig(path=str(path), format="jsonl")))

    assert rows[0].prompt == "a"  # type: ignore[union-attr]


def test_a_pipe_without_an_extension_is_read_as_jsonl(tmp_path: Path) -> None:
    # `run <(tail -f q.jsonl)` names /dev/fd/63: a pipe, like stdin, is JSON Lines.
    fifo = tmp_path / "queue"
    os.mkfifo(fifo)

    assert input_format(str(fifo)) == "jsonl"


@pytest.mark.parametrize("name", ["p.json", "p.ndjson", "P.JSONL"])
def test_json_and_ndjson_extensions_are_jsonl(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(jsonl({"prompt": "a"}))

    assert len(read_all(open_source(InputConfig(path=str(path))))) == 1


def test_parquet_from_stdin_is_refused() -> None:
    with pytest.raises(InputError, match="Parquet cannot be streamed from stdin"):
        open_source(InputConfig(path="-", format="parquet"), stdin=io.BytesIO())


def test_rows_can_be_read_only_once(open_jsonl: Open) -> None:
    with open_jsonl(jsonl({"prompt": "a"})) as source:
        list(source.chunks())
        with pytest.raises(RuntimeError, match="read already"):
            source.chunks()
