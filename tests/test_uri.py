"""Input and output paths as URIs: file:// is the local file, others go through pyarrow.fs.

`memory://` (fsspec's in-process filesystem, which pyarrow lacks) stands in for a
remote store: it takes the same path as s3:// or gs:// here (pyarrow.fs streams),
without a network.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import OutputConfig
from batching.records import Result, RowError
from batching.resume import OutputLock
from batching.uri import is_remote, local_path
from batching.writers import open_writer
from cli.app import app

runner = CliRunner()

ROWS: list[Any] = [
    {"id": "a", "prompt": "Hello", "topic": "x"},
    {"id": "b", "prompt": "p" * 4100},  # too long for the fake model: an error record
    "{not json",
    {"id": "d", "prompt": "Zebra", "topic": "y"},
]


@pytest.fixture(autouse=True)
def memory_store() -> Iterator[Any]:
    """fsspec's memory filesystem, emptied after each test (it lives as long as the process)."""
    fs = fsspec.filesystem("memory")
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def invoke(*args: str) -> Any:
    return runner.invoke(
        app, ["run", *args, "-m", "fake", "--engine", "fake", "--keep-fields", "topic"]
    )


# Without the bad line; the too-long row's error still names the input as it was
# given, so outputs are compared with `named_as`.
VALID_ROWS = [row for row in ROWS if isinstance(row, dict)]


def named_as(data: bytes, given: str, name: str) -> list[Any]:
    """The rows of a JSONL or Parquet output, with `given` in error messages as `name`."""
    if data.startswith(b"PAR1"):
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    else:
        rows = [orjson.loads(line) for line in data.splitlines()]
    for row in rows:
        if row["error"] is not None:
            message = row["error"]["message"]
            assert message.startswith(given), message
            row["error"]["message"] = name + message[len(given) :]
    return rows


def jsonl_bytes(rows: list[Any] = ROWS) -> bytes:
    lines = [r.encode() if isinstance(r, str) else orjson.dumps(r) for r in rows]
    return b"\n".join(lines) + b"\n"


def parquet_bytes(tmp_path: Path, rows: list[Any] = ROWS) -> bytes:
    rows = [r if isinstance(r, dict) else {"id": "bad", "prompt": None} for r in rows]
    target = tmp_path / "make-input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), target)
    return target.read_bytes()


def input_bytes(tmp_path: Path, suffix: str, rows: list[Any] = ROWS) -> bytes:
    if suffix == ".parquet":
        return parquet_bytes(tmp_path, rows)
    if suffix == ".jsonl.gz":
        return gzip.compress(jsonl_bytes(rows), mtime=0)
    return jsonl_bytes(rows)


def test_classifies_paths() -> None:
    assert not is_remote("in.jsonl") and not is_remote("-") and not is_remote(None)
    assert not is_remote("file:///data/in.jsonl") and not is_remote("FILE:///x")
    assert is_remote("s3://bucket/in.jsonl") and is_remote("memory://b/in.jsonl")
    assert not is_remote("C:\\data\\in.jsonl")
    assert local_path("file://localhost/data/a%20b.jsonl") == "/data/a b.jsonl"


@pytest.mark.parametrize("in_suffix", [".jsonl", ".jsonl.gz", ".parquet"])
@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
def test_file_uris_give_the_plain_paths_output(
    tmp_path: Path, in_suffix: str, out_suffix: str
) -> None:
    source = tmp_path / f"in{in_suffix}"
    source.write_bytes(input_bytes(tmp_path, in_suffix, VALID_ROWS))
    plain, uri = tmp_path / "plain", tmp_path / "uri"
    plain.mkdir()
    uri.mkdir()

    first = invoke(str(source), "-o", str(plain / f"out{out_suffix}"), "--errors",
                   str(plain / "errors.jsonl"))  # fmt: skip
    second = invoke(source.as_uri(), "-o", (uri / f"out{out_suffix}").as_uri(), "--errors",
                    (uri / "errors.jsonl").as_uri(), "--report",
                    (uri / "report.json").as_uri())  # fmt: skip

    assert first.exit_code == second.exit_code == 1, second.output  # one row fails
    for name in (f"out{out_suffix}", "errors.jsonl"):
        by_uri = named_as((uri / name).read_bytes(), source.as_uri(), str(source))
        assert by_uri == named_as((plain / name).read_bytes(), str(source), str(source))
    assert orjson.loads((uri / "report.json").read_bytes())["rows"] == 3
    assert sorted(p.name for p in uri.iterdir()) == sorted(
        [f"out{out_suffix}", "errors.jsonl", "report.json"]
    )


def test_a_file_uri_output_is_locked_and_resumed_as_its_path(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl_bytes())
    out = tmp_path / "out.jsonl"
    with OutputLock(str(out)):
        locked = invoke(source.as_uri(), "-o", out.as_uri())
    assert locked.exit_code == 2
    assert "another bizra-batch run" in locked.output

    assert invoke(str(source), "-o", str(out)).exit_code == 1
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.rindex(b"\n", 0, -1) + 5])  # a torn last row
    resumed = invoke(str(source), "-o", out.as_uri(), "--resume")
    assert resumed.exit_code == 0, resumed.output  # the one row it ran is ok
    assert out.read_bytes() == whole


def test_file_uri_input_errors_name_the_uri(tmp_path: Path) -> None:
    missing = (tmp_path / "nope.jsonl").as_uri()
    result = invoke(missing, "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert f"{missing}: no such file" in result.output


@pytest.mark.parametrize("in_suffix", [".jsonl", ".jsonl.gz", ".parquet"])
@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
def test_remote_input_and_output_match_local_files(
    tmp_path: Path, memory_store: Any, in_suffix: str, out_suffix: str
) -> None:
    data = input_bytes(tmp_path, in_suffix, VALID_ROWS)
    source = tmp_path / f"in{in_suffix}"
    source.write_bytes(data)
    memory_store.pipe(f"/bucket/in{in_suffix}", data)
    local_out = tmp_path / f"out{out_suffix}"

    local = invoke(str(source), "-o", str(local_out), "--errors", str(tmp_path / "e.jsonl"))
    remote = invoke(f"memory://bucket/in{in_suffix}", "-o", f"memory://bucket/out{out_suffix}",
                    "--errors", "memory://bucket/e.jsonl", "--report",
                    "memory://bucket/report.json")  # fmt: skip

    assert local.exit_code == remote.exit_code == 1, remote.output
    given = f"memory://bucket/in{in_suffix}"
    for remote_file, local_file in (
        (f"out{out_suffix}", local_out),
        ("e.jsonl", tmp_path / "e.jsonl"),
    ):
        by_uri = named_as(memory_store.cat(f"/bucket/{remote_file}"), given, str(source))
        assert by_uri == named_as(local_file.read_bytes(), str(source), str(source))
    report = orjson.loads(memory_store.cat("/bucket/report.json"))
    assert (report["rows"], report["rows_failed"]) == (3, 1)


def test_bad_lines_of_a_remote_input_name_the_uri(memory_store: Any) -> None:
    memory_store.pipe("/bucket/in.jsonl", jsonl_bytes())
    result = invoke("memory://bucket/in.jsonl", "-o", "memory://bucket/out.jsonl")
    assert result.exit_code == 1
    rows = [orjson.loads(line) for line in memory_store.cat("/bucket/out.jsonl").splitlines()]
    assert [row["id"] for row in rows][::3] == ["a", "d"]
    assert rows[2]["error"]["message"].startswith("memory://bucket/in.jsonl:3: not valid JSON")


def test_a_missing_remote_input_exits_2_naming_the_uri(memory_store: Any) -> None:
    result = invoke("memory://bucket/nope.jsonl", "-o", "memory://bucket/out.jsonl")
    assert result.exit_code == 2
    assert "memory://bucket/nope.jsonl: no such file" in result.output
    assert not memory_store.exists("/bucket/out.jsonl")


def test_an_unknown_scheme_exits_2(tmp_path: Path) -> None:
    result = invoke("nosuchscheme://bucket/in.jsonl", "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert "nosuchscheme://bucket/in.jsonl: unknown filesystem scheme" in result.output


def test_an_existing_remote_output_is_replaced_only_with_overwrite(memory_store: Any) -> None:
    memory_store.pipe("/bucket/in.jsonl", jsonl_bytes())
    memory_store.pipe("/bucket/out.jsonl", b"earlier\n")

    refused = invoke("memory://bucket/in.jsonl", "-o", "memory://bucket/out.jsonl")
    assert refused.exit_code == 2
    assert "memory://bucket/out.jsonl: already exists; pass --overwrite" in refused.output
    assert memory_store.cat("/bucket/out.jsonl") == b"earlier\n"

    replaced = invoke("memory://bucket/in.jsonl", "-o", "memory://bucket/out.jsonl", "--overwrite")
    assert replaced.exit_code == 1
    assert len(memory_store.cat("/bucket/out.jsonl").splitlines()) == 4


def test_an_existing_remote_errors_file_refuses_before_the_output_is_written(
    memory_store: Any,
) -> None:
    memory_store.pipe("/bucket/in.jsonl", jsonl_bytes())
    memory_store.pipe("/bucket/errors.jsonl", b"earlier\n")
    result = invoke("memory://bucket/in.jsonl", "-o", "memory://bucket/out.jsonl", "--errors",
                    "memory://bucket/errors.jsonl")  # fmt: skip
    assert result.exit_code == 2
    assert "memory://bucket/errors.jsonl: already exists" in result.output
    assert not memory_store.exists("/bucket/out.jsonl")


def test_resume_of_a_remote_output_is_refused_with_what_to_do(memory_store: Any) -> None:
    memory_store.pipe("/bucket/in.jsonl", jsonl_bytes())
    memory_store.pipe("/bucket/out.jsonl", b'{"id":"a","output":"olleH"}\n')
    result = invoke("memory://bucket/in.jsonl", "-o", "memory://bucket/out.jsonl", "--resume")
    assert result.exit_code == 2
    assert "memory://bucket/out.jsonl: --resume cannot continue a remote output" in result.output
    assert "write to a local path" in result.output
    assert memory_store.cat("/bucket/out.jsonl") == b'{"id":"a","output":"olleH"}\n'


def test_a_local_resume_may_rewrite_a_remote_errors_file(tmp_path: Path, memory_store: Any) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl_bytes())
    out = tmp_path / "out.jsonl"
    assert invoke(str(source), "-o", str(out)).exit_code == 1
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]))  # as if the run died before the last row

    result = invoke(str(source), "-o", str(out), "--resume", "--errors",
                    "memory://bucket/errors.jsonl")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"".join(lines)
    errors = memory_store.cat("/bucket/errors.jsonl").splitlines(keepends=True)
    assert errors == [line for line in lines if b'"error":{' in line]


def test_remote_parquet_has_the_local_files_row_groups(tmp_path: Path, memory_store: Any) -> None:
    """Flushes may fall anywhere; the remote file is still the local one, byte for byte."""
    results = [
        Result(
            index=i, id=f"r{i}", output="x" * i, error=RowError("e", "m") if i % 5 == 0 else None
        )
        for i in range(23)
    ]
    local = tmp_path / "out.parquet"
    for target in (str(local), "memory://bucket/out.parquet"):
        with open_writer(OutputConfig(path=target), row_group_rows=4) as writer:
            for start in range(0, 23, 3):
                writer.write(results[start : start + 3])
                writer.flush(durable=start % 2 == 0)
    remote = memory_store.cat("/bucket/out.parquet")
    assert remote == local.read_bytes()
    assert pq.ParquetFile(local).metadata.num_row_groups == 6  # 5 of 4 rows, then 3


def test_a_remote_output_keeps_the_rows_finished_before_a_failure(memory_store: Any) -> None:
    rows = [orjson.dumps({"id": i, "prompt": f"p{i}"}) for i in range(5000)]
    whole = gzip.compress(b"\n".join(rows) + b"\n", mtime=0)
    memory_store.pipe("/bucket/in.jsonl.gz", whole[: len(whole) * 3 // 4])  # cut short

    result = invoke("memory://bucket/in.jsonl.gz", "-o", "memory://bucket/out.parquet",
                    "--chunk-size", "100")  # fmt: skip

    assert result.exit_code == 2
    assert "memory://bucket/in.jsonl.gz: cannot read after line" in result.output
    written = pq.read_table(pa.BufferReader(memory_store.cat("/bucket/out.parquet")))
    assert 0 < written.num_rows < 5000
    assert written.column("id").to_pylist() == list(range(written.num_rows))
