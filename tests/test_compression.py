"""Compressed JSONL (.gz, .zst) in and out, resume after a torn write, input digests.

Outputs are checked with the stdlib's gzip and zstandard's own stream reader, not
with the reader under test; digests against hashlib over the file's bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batching.compression import CompressedSink
from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import InputError, OutputError
from batching.job import run
from batching.jsonl_source import JsonlSource, LiveLines
from batching.readers import open_source
from batching.records import InvalidRow, Result, RowError, Sampling
from batching.sink import Sink
from batching.testing import FakeEngine
from batching.writers import open_writer, scan_output
from cli.app import app

runner = CliRunner()
CODECS = {"gzip": ".gz", "zstd": ".zst"}


def compress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data, mtime=0)
    return zstandard.ZstdCompressor().compress(data)


def decompress(codec: str, data: bytes) -> bytes:
    """Every member/frame of `data`, by the codec's own library."""
    if codec == "gzip":
        return gzip.decompress(data)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


def prompts(count: int, start: int = 0) -> bytes:
    return b"".join(
        orjson.dumps({"id": f"r{i}", "prompt": f"prompt number {i}"}) + b"\n"
        for i in range(start, start + count)
    )


def results(start: int, stop: int) -> list[Result]:
    return [
        Result(index=i, id=f"r{i}", output=f"answer {i}", finish_reason="stop")
        if i % 5
        else Result(index=i, id=f"r{i}", error=RowError("invalid_request", f"row {i}: bad"))
        for i in range(start, stop)
    ]


def lines_of(data: bytes) -> list[Any]:
    return [orjson.loads(line) for line in data.splitlines()]


# -- output ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_a_compressed_output_reads_back_with_the_codecs_own_tools(
    tmp_path: Path, codec: str
) -> None:
    plain, packed = tmp_path / "out.jsonl", tmp_path / f"out.jsonl{CODECS[codec]}"
    for path in (plain, packed):
        with open_writer(OutputConfig(path=str(path))) as writer:
            for start in range(0, 30, 10):
                writer.write(results(start, start + 10))
                writer.flush(durable=True)

    data = packed.read_bytes()
    assert decompress(codec, data) == plain.read_bytes()
    assert len(data) < len(plain.read_bytes())


@pytest.mark.parametrize("codec", CODECS)
def test_an_empty_compressed_output_is_a_valid_empty_file_for_the_tools(
    tmp_path: Path, codec: str
) -> None:
    # gzip -dc and zstd -dc refuse a file of no bytes as cut short.
    out = tmp_path / f"out.jsonl{CODECS[codec]}"
    with open_writer(OutputConfig(path=str(out))):
        pass

    data = out.read_bytes()
    assert data and decompress(codec, data) == b""


def test_each_durable_flush_ends_a_member_and_only_a_durable_one() -> None:
    out = io.BytesIO()
    sink = CompressedSink(Sink(out, "out.jsonl.gz", owned=False), "gzip")
    sink.write(b'{"id":0}\n')
    sink.flush()  # rows for a pipe reader: no member ends
    sink.write(b'{"id":1}\n')
    sink.flush(durable=True)
    after_first = out.getvalue()
    sink.write(b'{"id":2}\n')
    sink.close()

    # The first member, whole, holds the rows written before the durable flush.
    assert gzip.decompress(after_first) == b'{"id":0}\n{"id":1}\n'
    assert gzip.decompress(out.getvalue()) == b'{"id":0}\n{"id":1}\n{"id":2}\n'


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        (
            "out.parquet.gz",
            None,
            "out.parquet.gz: Parquet compresses its columns itself and is never "
            "gzip-compressed; name the file .parquet, or .jsonl.gz for compressed JSON Lines",
        ),
        (
            "out.jsonl.zst",
            "parquet",
            "out.jsonl.zst: Parquet compresses its columns itself and is never "
            "zstd-compressed; name the file .parquet, or .jsonl.zst for compressed JSON Lines",
        ),
    ],
)
def test_compressed_parquet_output_is_refused(name: str, override: Any, message: str) -> None:
    with pytest.raises(OutputError) as refused:
        OutputConfig(path=name, format=override).written_format  # noqa: B018
    assert str(refused.value) == message


def test_compressed_parquet_output_on_the_cli_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(prompts(2))
    out = tmp_path / "out.parquet.gz"

    result = runner.invoke(app, ["run", str(source), "-o", str(out), "--engine", "fake"])

    assert result.exit_code == 2
    assert result.stderr == (
        f"bizra-batch: error: {out}: Parquet compresses its columns itself and is never "
        "gzip-compressed; name the file .parquet, or .jsonl.gz for compressed JSON Lines\n"
    )
    assert not out.exists()


def test_a_remote_output_is_compressed_too() -> None:
    store = fsspec.filesystem("memory")
    try:
        with open_writer(OutputConfig(path="memory://bucket/out.jsonl.zst")) as writer:
            writer.write(results(1, 4))
        written = store.cat("/bucket/out.jsonl.zst")
    finally:
        store.rm("/bucket", recursive=True)
    assert [row["id"] for row in lines_of(decompress("zstd", written))] == ["r1", "r2", "r3"]


# -- resume after a torn write ----------------------------------------------------------

BATCHES = [(0, 7), (7, 8), (8, 20), (20, 23)]  # one member each, the second of one row


def whole_output(path: Path) -> list[int]:
    """Write every batch, one durable flush each; the file's size after each flush."""
    ends = []
    with open_writer(OutputConfig(path=str(path))) as writer:
        for start, stop in BATCHES:
            writer.write(results(start, stop))
            writer.flush(durable=True)
            ends.append(path.stat().st_size)
    return ends


@pytest.mark.parametrize(
    "every_byte", [pytest.param(True, marks=pytest.mark.slow, id="every byte"), False]
)
@pytest.mark.parametrize("codec", CODECS)
def test_resume_after_a_cut_keeps_exactly_the_whole_members(
    tmp_path: Path, codec: str, every_byte: bool
) -> None:
    """kill -9 mid-write leaves some prefix of the file: try each one (or, in the
    fast set, those around the members' ends and every 13th)."""
    reference = tmp_path / f"reference.jsonl{CODECS[codec]}"
    ends = whole_output(reference)
    data = reference.read_bytes()
    expected_text = decompress(codec, data)
    rows_after = dict(zip(ends, (stop for _, stop in BATCHES), strict=True))
    out = tmp_path / f"out.jsonl{CODECS[codec]}"

    # Resuming writes (and fsyncs) the file: done at each member's end and the bytes
    # either side of it, and every 13th byte; the scan, which decides, at every byte.
    around_ends = {end + step for end in ends for step in (-1, 0, 1)}
    cuts = [
        cut for cut in range(len(data) + 1) if every_byte or cut in around_ends or cut % 13 == 0
    ]
    for cut in cuts:
        out.write_bytes(data[:cut])
        cfg = OutputConfig(path=str(out), resume=True)
        existing = scan_output(cfg)
        assert existing is not None
        kept = max((end for end in ends if end <= cut), default=0)
        assert (existing.rows, existing.whole_bytes) == (rows_after.get(kept, 0), kept), cut
        assert existing.torn_bytes == cut - kept
        if cut % 13 and cut not in around_ends:
            continue
        assert list(existing.ids()) == [f"r{i}" for i in range(existing.rows)]
        with open_writer(cfg, existing=existing) as writer:
            writer.write(results(existing.rows, BATCHES[-1][1]))

        assert decompress(codec, out.read_bytes()) == expected_text, cut


@pytest.mark.slow  # fsyncs at every resume: 0.3-2 s on the shared box
@settings(max_examples=40, deadline=None)
@given(
    codec=st.sampled_from(sorted(CODECS)),
    batches=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6),
    crashes=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=3),
)
def test_every_row_is_written_once_in_order_whatever_the_crashes(
    codec: str, batches: list[int], crashes: list[float]
) -> None:
    """Crash (a cut at any byte), resume, crash again...: the output that finally
    decompresses holds each row once, in order."""
    total = sum(batches)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / f"out.jsonl{CODECS[codec]}"
        out.write_bytes(b"")
        for crash in [*crashes, None]:
            cfg = OutputConfig(path=str(out), resume=True)
            existing = scan_output(cfg)
            assert existing is not None
            assert list(existing.ids()) == [f"r{i}" for i in range(existing.rows)]
            with open_writer(cfg, existing=existing) as writer:
                start = existing.rows
                for size in batches:
                    writer.write(results(start, min(total, start + size)))
                    writer.flush(durable=True)
                    start = min(total, start + size)
            if crash is not None:
                data = out.read_bytes()
                out.write_bytes(data[: int(len(data) * crash)])
        rows = lines_of(decompress(codec, out.read_bytes()))
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(total)]


@pytest.mark.parametrize("codec", CODECS)
def test_a_run_resumed_after_a_torn_write_gives_the_uninterrupted_output(
    tmp_path: Path, codec: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(prompts(40) + b"{broken\n")
    suffix = f".jsonl{CODECS[codec]}"

    def config(out: Path, errors: Path, resume: bool = False) -> RunConfig:
        return RunConfig(
            input=InputConfig(path=str(source), chunk_size=6),
            output=OutputConfig(path=str(out), resume=resume),
            sampling=Sampling(max_tokens=20),
            errors_path=str(errors),
        )

    reference, reference_errors = tmp_path / f"ref{suffix}", tmp_path / f"ref-errors{suffix}"
    run(config(reference, reference_errors), FakeEngine)
    data = reference.read_bytes()
    expected = decompress(codec, data)
    assert len(lines_of(expected)) == 41

    out, errors = tmp_path / f"out{suffix}", tmp_path / f"errors{suffix}"
    # Cuts spread over the file, the last just short of its end.
    for cut in [*range(0, len(data), max(1, len(data) // 9)), len(data) - 1]:
        out.write_bytes(data[:cut])
        errors.write_bytes(b"")
        report = run(config(out, errors, resume=True), FakeEngine)

        assert decompress(codec, out.read_bytes()) == expected, cut
        assert report.rows_resumed + report.rows == 41
        errors_text = decompress(codec, errors.read_bytes())
        assert errors_text == decompress(codec, reference_errors.read_bytes()), cut


@pytest.mark.parametrize("codec", CODECS)
def test_resume_refuses_a_file_that_is_not_compressed_as_named(tmp_path: Path, codec: str) -> None:
    out = tmp_path / f"out.jsonl{CODECS[codec]}"
    out.write_bytes(b'{"id": "r0", "output": "a"}\n')

    with pytest.raises(OutputError) as refused:
        scan_output(OutputConfig(path=str(out), resume=True))

    assert str(refused.value) == (
        f"{out}: not {codec}-compressed, so not an output of bizra-batch; use --overwrite"
    )
    assert out.read_bytes() == b'{"id": "r0", "output": "a"}\n'  # nothing was cut


# -- input ----------------------------------------------------------------------------


def read_rows(path: Path, **kwargs: Any) -> tuple[list[Any], Any]:
    with open_source(InputConfig(path=str(path), chunk_size=16, **kwargs)) as source:
        rows = [row for chunk in source.chunks() for row in chunk]
        return rows, source


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("members", [1, 3])
def test_compressed_input_reads_as_the_plain_file_with_progress_on_stored_bytes(
    tmp_path: Path, codec: str, members: int
) -> None:
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(prompts(300))
    packed = tmp_path / f"in.jsonl{CODECS[codec]}"
    # Several members, as `cat a.gz b.gz` or `zstd -T4` make.
    packed.write_bytes(b"".join(compress(codec, prompts(100, 100 * i)) for i in range(3))
                       if members == 3 else compress(codec, plain.read_bytes()))  # fmt: skip

    expected, _ = read_rows(plain)
    got, source = read_rows(packed)

    assert got == expected
    assert source.bytes_read == source.total_bytes == packed.stat().st_size


@pytest.mark.parametrize("codec", CODECS)
def test_a_truncated_compressed_input_is_an_error_not_fewer_rows(
    tmp_path: Path, codec: str
) -> None:
    # zstandard's own stream reader ends quietly at a truncated frame.
    packed = tmp_path / f"in.jsonl{CODECS[codec]}"
    data = compress(codec, prompts(50))
    packed.write_bytes(data[:-6])

    with pytest.raises(InputError) as refused:
        read_rows(packed)

    tool = "gzip" if codec == "gzip" else "zstd"
    # The rows of the whole blocks before the cut may be read first.
    assert re.fullmatch(
        rf"{re.escape(str(packed))}: cannot read( after line \d+)? \(compressed data ends in the "
        rf"middle of a member \(at byte {len(data) - 6}\)\); test it with "
        rf"`{tool} -t {re.escape(str(packed))}`",
        str(refused.value),
    ), str(refused.value)


def test_a_corrupt_zstd_input_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    packed = tmp_path / "in.jsonl.zst"
    data = bytearray(compress("zstd", prompts(2000)))
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # zeros from the middle on
    packed.write_bytes(bytes(data))

    with pytest.raises(InputError) as refused:
        read_rows(packed)

    message = str(refused.value)
    assert re.fullmatch(
        rf"{re.escape(str(packed))}: cannot read( after line \d+)? \(zstd .*\); test it with "
        rf"`zstd -t {re.escape(str(packed))}`",
        message,
    ), message


def test_the_cli_reports_a_corrupt_input_in_one_line_and_exits_2(tmp_path: Path) -> None:
    packed = tmp_path / "in.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(prompts(3))[:-6])

    result = runner.invoke(app, ["run", str(packed), "--engine", "fake"])

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"bizra-batch: error: {packed}: cannot read")


@pytest.mark.parametrize("codec", CODECS)
def test_a_name_that_promises_compression_the_content_lacks_is_refused(
    tmp_path: Path, codec: str
) -> None:
    packed = tmp_path / f"in.jsonl{CODECS[codec]}"
    packed.write_bytes(prompts(1))

    with pytest.raises(InputError) as refused:
        read_rows(packed)

    assert str(refused.value) == (
        f"{packed}: named {CODECS[codec]} but not {codec}-compressed; rename it to .jsonl"
    )


def test_zstd_on_stdin_says_how_to_decompress_it() -> None:
    stdin = io.BytesIO(compress("zstd", prompts(1)))
    with (
        open_source(InputConfig(path="-"), stdin=stdin) as source,
        pytest.raises(InputError) as refused,
    ):
        list(source.chunks())
    assert str(refused.value) == (
        "<stdin>: the input is zstd-compressed; pipe it through `zstd -dc` or pass the "
        ".jsonl.zst file's path"
    )


def test_a_compressed_parquet_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError) as refused:
        open_source(InputConfig(path=str(tmp_path / "in.parquet.gz")))
    assert str(refused.value) == (
        f"{tmp_path / 'in.parquet.gz'}: Parquet compresses its columns itself and cannot be "
        "read gzip-compressed; decompress it first"
    )


# -- the CLI, end to end ----------------------------------------------------------------


def test_run_zst_in_gz_out_on_the_cli(tmp_path: Path) -> None:
    plain_in, plain_out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    plain_in.write_bytes(prompts(25) + b'{"id": "empty", "prompt": ""}\n')
    packed_in, packed_out = tmp_path / "in.jsonl.zst", tmp_path / "out.jsonl.gz"
    packed_in.write_bytes(compress("zstd", plain_in.read_bytes()))
    errors = tmp_path / "errors.jsonl.zst"

    plain = runner.invoke(app, ["run", str(plain_in), "-o", str(plain_out), "--engine", "fake",
                                "-m", "fake", "-q"])  # fmt: skip
    packed = runner.invoke(app, ["run", str(packed_in), "-o", str(packed_out), "--engine",
                                 "fake", "-m", "fake", "-q", "--errors", str(errors)])  # fmt: skip

    assert plain.exit_code == packed.exit_code == 1, packed.output  # the empty prompt failed
    expected = [
        {**row, "error": row["error"] and {**row["error"], "message": row["error"]["message"]
                                           .replace(str(plain_in), str(packed_in))}}
        for row in lines_of(plain_out.read_bytes())
    ]  # fmt: skip
    assert lines_of(gzip.decompress(packed_out.read_bytes())) == expected
    assert len(expected) == 26
    failed = [row for row in expected if row["error"] is not None]
    assert [row["id"] for row in failed] == ["empty"]
    assert lines_of(decompress("zstd", errors.read_bytes())) == failed


# -- input digests ----------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parquet_bytes() -> bytes:
    table = pa.table({"id": [f"r{i}" for i in range(500)], "prompt": ["p"] * 500,
                      "unused": list(range(500))})  # fmt: skip
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=100)
    return out.getvalue()


DIGEST_INPUTS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jsonl": ("in.jsonl", lambda: prompts(3000)),
    "gzip": ("in.jsonl.gz", lambda: compress("gzip", prompts(3000))),
    "zstd": ("in.jsonl.zst", lambda: compress("zstd", prompts(3000))),
    "parquet": ("in.parquet", parquet_bytes),
}


@pytest.mark.parametrize("kind", DIGEST_INPUTS)
def test_the_input_digest_is_sha256_of_the_file_as_stored(tmp_path: Path, kind: str) -> None:
    name, make = DIGEST_INPUTS[kind]
    path = tmp_path / name
    path.write_bytes(make())

    with open_source(InputConfig(path=str(path), chunk_size=64)) as source:
        chunks = source.chunks()
        next(chunks)
        assert source.input_digest is None  # not read to the end yet
        for _ in chunks:
            pass
        assert source.input_digest == sha256_of(path.read_bytes())


def test_the_digest_of_stdin_is_of_its_bytes() -> None:
    data = prompts(100) + b"no newline at the end"
    with open_source(InputConfig(path="-"), stdin=io.BytesIO(data)) as source:
        rows = [row for chunk in source.chunks() for row in chunk]
    assert isinstance(rows[-1], InvalidRow)
    assert source.input_digest == sha256_of(data)


def test_the_digest_of_a_pipe_read_live_is_of_its_bytes() -> None:
    read_end, write_end = os.pipe()
    data = prompts(50)
    os.write(write_end, data)
    os.close(write_end)

    with JsonlSource(InputConfig(path="-"), "<stdin>", LiveLines(read_end), None, None,
                     1 << 20) as source:  # fmt: skip
        assert len([row for chunk in source.chunks() for row in chunk]) == 50
    os.close(read_end)
    assert source.input_digest == sha256_of(data)
