"""The real CLI, as a user runs it, on real vLLM and the tiny model.

Each test starts `python -m cli run` as a process: stdout must carry only results,
exit codes must be the documented ones, and every output row must have the schema.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "prompts.jsonl"
OUTPUT_FIELDS = {"id", "output", "finish_reason", "prompt_tokens", "completion_tokens", "error"}
MAX_TOKENS = 8


def bizra(
    *args: str, model: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    command = [
        sys.executable, "-m", "cli", "run", *args, "-m", str(model),
        "--max-tokens", str(MAX_TOKENS), "--temperature", "0",
        # Test speed only: float32 runs the tiny model 2.7x faster than bf16 on CPUs
        # without AVX-512 BF16, and eager mode skips ~10 s of torch.compile.
        "--dtype", "float32", "--engine-arg", "enforce_eager=true",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    # The tiny model needs little KV cache, and allocating the default takes seconds.
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return subprocess.run(
        command, input=stdin, capture_output=True, cwd=REPO, env=env, timeout=300, check=False
    )


def sample_rows(count: int) -> list[dict[str, Any]]:
    rows = [orjson.loads(line) for line in SAMPLES.read_bytes().splitlines() if line.strip()]
    return rows[:count]


def assert_valid_output_row(row: dict[str, Any], max_tokens: int) -> None:
    assert row.keys() >= OUTPUT_FIELDS
    if row["error"] is None:
        assert isinstance(row["output"], str)
        assert row["finish_reason"] in {"length", "stop"}
        assert 1 <= row["completion_tokens"] <= max_tokens
        assert row["prompt_tokens"] >= 1
    else:
        assert set(row["error"]) == {"type", "message"}


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The samples (plain and chat rows) plus one over-long row, file to file."""
    work = tmp_path_factory.mktemp("integration")
    rows = sample_rows(120)
    too_long = {"id": "too-long", "prompt": "word " * 5000}
    rows.insert(7, too_long)
    source = work / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out, report = work / "out.jsonl", work / "report.json"
    result = bizra(
        str(source), "-o", str(out), "--report", str(report), "--keep-fields", "topic",
        "--max-num-seqs", "32", model=tiny_model,
    )  # fmt: skip
    return {
        "rows": rows,
        "result": result,
        "out": out,
        "report": report,
        "work": work,
        "source": source,
    }


def test_jsonl_file_to_file_one_ordered_row_each_and_exit_1_for_the_bad_row(
    reference: dict[str, Any],
) -> None:
    result = reference["result"]
    assert result.returncode == 1, result.stderr.decode()[-2000:]
    assert result.stdout == b""  # results went to the file
    out = [orjson.loads(line) for line in reference["out"].read_bytes().splitlines()]
    rows = reference["rows"]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    for row, given in zip(out, rows, strict=True):
        assert_valid_output_row(row, given.get("max_tokens", MAX_TOKENS))
    assert out[7]["error"]["type"] == "prompt_too_long"
    # vLLM's refusal, led by the row's place as the schema's messages are.
    assert out[7]["error"]["message"].startswith(f"{reference['work'] / 'in.jsonl'}:8: ")
    assert [r["id"] for r in out if r["error"]] == ["too-long"]
    assert [r.get("topic") for r in out] == [r.get("topic") for r in rows]


def test_report_has_the_documented_figures(reference: dict[str, Any]) -> None:
    report = orjson.loads(reference["report"].read_bytes())
    assert report["rows"] == len(reference["rows"])
    assert report["rows_failed"] == 1
    assert report["rows_ok"] == report["rows"] - 1
    assert report["engine_startup_seconds"] > 0
    assert report["output_tokens_per_second"] > 0
    assert report["batches"] > 0 and report["avg_batch_size"] > 1
    assert report["padding_tokens_avoided"] > 0
    assert report["latency_p50_ms"] <= report["latency_p95_ms"]


def test_the_manifest_names_the_model_by_its_files_and_the_input_by_its_bytes(
    reference: dict[str, Any], tiny_model: Path
) -> None:
    import hashlib

    manifest = orjson.loads(reference["report"].read_bytes())["manifest"]
    # The reference digest, by hand: each file's relative name and sha256, in order.
    whole = hashlib.sha256()
    files = sorted(p for p in tiny_model.rglob("*") if p.is_file() and p.suffix != ".md")
    for path in files:
        whole.update(path.relative_to(tiny_model).as_posix().encode() + b"\0")
        whole.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    assert (manifest["engine"], manifest["model"]) == ("vllm", str(tiny_model))
    assert manifest["model_digest"] == whole.hexdigest()
    assert manifest["engine_args"]["dtype"] == "float32"
    assert manifest["inputs"] == [
        {
            "path": str(reference["source"]),
            "digest": "sha256:" + hashlib.sha256(reference["source"].read_bytes()).hexdigest(),
        }
    ]


def test_logs_stay_quiet(reference: dict[str, Any]) -> None:
    stderr = reference["result"].stderr.decode()
    noisy = [line for line in stderr.splitlines() if line.startswith(("INFO", "DEBUG"))]
    assert noisy == []


def read_outputs(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def unplaced(rows: list[dict[str, Any]], place: str) -> list[dict[str, Any]]:
    """`rows` with `place` (the input's name for the row) cut from error messages:
    runs of one input from a file, stdin or Parquet name their rows differently."""
    for row in rows:
        error = row["error"]
        if error is not None:
            assert error["message"].startswith(place), error["message"]
            row["error"] = {**error, "message": error["message"].removeprefix(place)}
    return rows


# The runs below feed the reference's rows in the reference's order, so the engine
# sees the same batches: greedy decoding is deterministic for the same batches, but
# not across different batch mates (float sums in another order can flip a near-tie).


def test_stdin_to_stdout_gives_the_file_run_output(
    reference: dict[str, Any], tiny_model: Path
) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in reference["rows"])
    result = bizra(
        "-", "-q", "--keep-fields", "topic", "--max-num-seqs", "32", model=tiny_model, stdin=data
    )
    assert result.returncode == 1, result.stderr.decode()[-2000:]
    assert result.stderr == b""  # --quiet
    expected = unplaced(read_outputs(reference["out"].read_bytes()), f"{reference['source']}:8")
    assert unplaced(read_outputs(result.stdout), "<stdin>:8") == expected


def test_parquet_in_and_out_with_chat_rows(reference: dict[str, Any], tiny_model: Path) -> None:
    rows = reference["rows"]
    assert any(r.get("messages") for r in rows) and any(r.get("prompt") for r in rows)
    work: Path = reference["work"]
    source, out = work / "in.parquet", work / "out.parquet"
    # Every key of every row (Table.from_pylist would take the first row's keys only).
    names = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.table({name: [row.get(name) for row in rows] for name in names}), source)
    result = bizra(
        str(source), "-o", str(out), "-q", "--keep-fields", "topic", "--max-num-seqs", "32",
        model=tiny_model,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()[-2000:]
    written = unplaced(pq.read_table(out).to_pylist(), f"{source} row 8")
    expected = unplaced(read_outputs(reference["out"].read_bytes()), f"{reference['source']}:8")
    assert [r["id"] for r in written] == [r["id"] for r in expected]
    assert [r["output"] for r in written] == [r["output"] for r in expected]
    assert [r["error"] for r in written] == [r["error"] for r in expected]


def test_a_model_that_is_not_there_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # The most common typo: vLLM raises from deep in transformers' hub code.
    # A path that is not there is refused before vLLM loads (exit 2); a directory that
    # is no model fails in vLLM (exit 1), and leaves no empty output behind.
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "hi"}\n')
    missing, empty = tmp_path / "no-such-model", tmp_path / "not-a-model"
    empty.mkdir()
    for model, code in ((missing, 2), (empty, 1)):
        out = tmp_path / "out.jsonl"
        result = bizra(str(source), "-o", str(out), model=model)
        stderr = result.stderr.decode()
        assert result.returncode == code, stderr
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("bizra-batch: error:")]
        assert len(errors) == 1, stderr
        assert str(model) in errors[0] and "--model" in errors[0]
        assert "0 ok" not in stderr  # no summary of a run that never began
        assert not out.exists()
