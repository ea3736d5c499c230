"""The pooling tasks (embed, classify, score) through the whole pipeline, on FakeEngine.

FakeEngine pools by rules a test can recompute (`batching.testing.fake_pooled`), so
each output row is checked against its own input, not just for shape. The real
engine's values are checked against transformers in tests/test_tasks_vllm.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import UsageError
from batching.openai_pooling import implied_task
from batching.records import Request, Sampling
from batching.schema import parse_row
from batching.tasks import Pooled, Pooling, Rerank, SegmentedIds, TextPair, check_task
from batching.testing import fake_pooled
from cli.app import app

runner = CliRunner()

EMBED_ROWS = [
    {"id": "a", "prompt": "hello there"},
    {"id": "b", "input": "a cat sat on a mat"},
    {"id": "c", "prompt": 5},
    {"id": "d", "prompt": "short", "dimensions": 2},
]
SCORE_ROWS = [
    {"text_1": "cats", "text_2": "dogs"},
    {"query": "cats", "documents": ["dogs", "cats purr", "xyz"]},
    {"text_1": "cats"},
    {"query": "cats", "documents": "not a list"},
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def read_jsonl(data: bytes | str) -> list[dict[str, Any]]:
    raw = data.encode() if isinstance(data, str) else data
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def run_cli(*args: str, input: bytes | None = None) -> Any:
    return runner.invoke(app, ["run", *args, "--engine", "fake", "-q"], input=input)


def row(obj: dict[str, Any], task: str, **config: Any) -> Any:
    fields = InputConfig("p.jsonl", task=task, **config)  # type: ignore[arg-type]
    return parse_row(obj, index=0, line=1, fields=fields, where="p.jsonl:1")


# -- rows ---------------------------------------------------------------------------


def test_an_embed_row_reads_prompt_then_input_and_its_own_dimensions() -> None:
    assert row({"prompt": "hi"}, "embed").prompt == "hi"
    assert row({"input": "yo"}, "embed").prompt == "yo"
    parsed = row({"input": "yo", "dimensions": 8}, "embed", normalize=False)
    assert parsed.pooling == Pooling("embed", normalize=False, dimensions=8)
    assert row({"input": "yo"}, "embed", dimensions=4).pooling.dimensions == 4


def test_a_pooling_row_ignores_sampling_fields() -> None:
    parsed = row({"prompt": "hi", "temperature": 99, "max_tokens": "x"}, "classify")
    assert isinstance(parsed, Request)
    assert parsed.sampling == Sampling()


@pytest.mark.parametrize(
    ("obj", "task", "message"),
    [
        (
            {"prompt": 5},
            "embed",
            "p.jsonl:1: field 'prompt': expected a non-empty string, found integer 5",
        ),
        (
            {"text": "hi"},
            "classify",
            "p.jsonl:1: no 'prompt' or 'input' field; set --prompt-field if the text is "
            "under another name",
        ),
        (
            {"prompt": "hi", "dimensions": 0},
            "embed",
            "p.jsonl:1: field 'dimensions': expected an integer >= 1, found integer 0",
        ),
        (
            {"text_1": "a"},
            "score",
            "p.jsonl:1: field 'text_2': expected a non-empty string, found null",
        ),
        (
            {"prompt": "a"},
            "score",
            "p.jsonl:1: a score row needs 'text_1' and 'text_2' (a query and a document), "
            "or 'query' and 'documents'",
        ),
        (
            {"query": "q", "documents": ["a", ""]},
            "score",
            "p.jsonl:1: field 'documents': expected a non-empty list of strings, found a "
            "list of 2 items",
        ),
    ],
)
def test_a_bad_pooling_row_names_its_field(obj: dict[str, Any], task: str, message: str) -> None:
    assert row(obj, task).error.message == message


def test_score_rows_become_pairs_or_reranks() -> None:
    assert row({"text_1": "a", "text_2": "b"}, "score").messages == TextPair("a", "b")
    rerank = row({"query": "q", "documents": ["x", "y"]}, "score").messages
    assert isinstance(rerank, Rerank)
    assert rerank.pairs() == [TextPair("q", "x"), TextPair("q", "y")]


def test_segmented_ids_read_as_one_list_and_split_back() -> None:
    ids = SegmentedIds([[1, 2, 3], [4], [5, 6]])
    assert ids == [1, 2, 3, 4, 5, 6]
    assert ids.segments() == [[1, 2, 3], [4], [5, 6]]


def test_a_label_is_named_where_the_model_names_it() -> None:
    assert Pooled([0.1, 0.7, 0.2], ("neg", "neu", "pos")).label() == "neu"
    assert Pooled([0.1, 0.7, 0.2]).label() == "1"


# -- configuration ---------------------------------------------------------------------


def test_an_unknown_task_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        check_task("rerank")
    assert str(caught.value) == "unknown task 'rerank'; use generate, embed, classify or score"


@pytest.mark.parametrize(
    ("sampling", "option"),
    [(Sampling(max_tokens=256, temperature=0.5), "--temperature"), (Sampling(), "--max-tokens")],
)
def test_generation_options_with_a_pooling_task_are_refused(
    sampling: Sampling, option: str
) -> None:
    with pytest.raises(UsageError) as caught:
        RunConfig(InputConfig("p.jsonl", task="embed"), sampling=sampling)
    assert str(caught.value) == (
        f"{option} is a generation option, and --task embed generates no text; remove it"
    )


def test_embedding_settings_need_the_embed_task() -> None:
    with pytest.raises(UsageError) as caught:
        InputConfig("p.jsonl", task="classify", dimensions=8)
    assert str(caught.value) == "--dimensions is an embedding setting; it needs --task embed"


def test_a_template_cannot_make_a_pair() -> None:
    from batching.template import PromptTemplate

    with pytest.raises(UsageError, match="drop --template for --task score"):
        InputConfig("p.jsonl", task="score", template=PromptTemplate("{{ a }}"))


def test_a_pooling_task_on_an_engine_that_only_generates_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(EMBED_ROWS))
    result = runner.invoke(app, ["run", str(source), "--task", "embed", "--engine", "sim"])
    assert result.exit_code == 2
    assert (
        "--task embed runs on --engine vllm (or fake); --engine sim only generates" in result.output
    )


def test_max_tokens_with_embed_is_a_usage_error_on_the_command_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(EMBED_ROWS))
    result = run_cli(str(source), "--task", "embed", "--max-tokens", "5")
    assert result.exit_code == 2
    assert "--max-tokens is a generation option" in result.output


# -- whole runs ------------------------------------------------------------------------


def expected_embedding(text: str, dimensions: int | None = None) -> list[float]:
    return fake_pooled([text], Pooling("embed", dimensions=dimensions)).values


def test_embed_jsonl_gives_one_row_per_input_in_order(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(EMBED_ROWS))
    result = run_cli(str(source), "--task", "embed")
    assert result.exit_code == 1  # one invalid row
    rows = read_jsonl(result.stdout)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["embedding"] == expected_embedding("hello there")
    assert rows[1]["embedding"] == expected_embedding("a cat sat on a mat")
    assert rows[1]["prompt_tokens"] == len("a cat sat on a mat")
    assert rows[2]["error"]["type"] == "invalid_input"
    assert "embedding" not in rows[2]
    assert rows[3]["embedding"] == expected_embedding("short", dimensions=2)


def test_no_normalize_keeps_the_raw_vector(tmp_path: Path) -> None:
    result = run_cli("-", "--task", "embed", "--no-normalize", input=b'{"prompt": "aa b"}\n')
    assert result.exit_code == 0
    assert read_jsonl(result.stdout)[0]["embedding"] == [4.0, 2.0, 1.0, 1.0]


def test_embed_parquet_loads_as_one_float32_matrix(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    texts = [f"row {i} " + "ab" * (i % 5) for i in range(50)]
    source.write_bytes(jsonl([{"prompt": text} for text in texts]))
    result = run_cli(str(source), "--task", "embed", "-o", str(out))
    assert result.exit_code == 0, result.output
    column = pq.read_table(out).column("embedding").combine_chunks()
    assert str(column.type) == "fixed_size_list<element: float>[4]"
    matrix = column.flatten().to_numpy().reshape(len(texts), 4)
    for text, vector in zip(texts, matrix, strict=True):
        assert vector.tolist() == pytest.approx(expected_embedding(text), rel=1e-6)


def test_classify_gives_probs_and_the_argmax_label(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([{"prompt": "aaaa"}, {"prompt": "xy"}]))
    result = run_cli(str(source), "--task", "classify")
    assert result.exit_code == 0
    for text, out in zip(["aaaa", "xy"], read_jsonl(result.stdout), strict=True):
        probs = fake_pooled([text], Pooling("classify")).values
        assert out["probs"] == probs
        assert out["label"] == str(probs.index(max(probs)))
        assert out["completion_tokens"] == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_score_pairs_and_rerank_rows_keep_one_row_each(tmp_path: Path, suffix: str) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / f"out{suffix}"
    source.write_bytes(jsonl(SCORE_ROWS))
    errors = tmp_path / "errors.jsonl"
    result = run_cli(str(source), "--task", "score", "-o", str(out), "--errors", str(errors))
    assert result.exit_code == 1
    parquet = suffix == ".parquet"
    rows = pq.read_table(out).to_pylist() if parquet else read_jsonl(out.read_bytes())
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["score"] == 0.25  # 'cats' and 'dogs' share one of four characters
    assert rows[1]["scores"] == [0.25, 1.0, 0.0]  # in the documents' order
    assert [r["error"]["type"] for r in rows[2:]] == ["invalid_input", "invalid_input"]
    assert [r["id"] for r in read_jsonl(errors.read_bytes())] == [2, 3]


def test_embed_resume_finishes_a_partial_output(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    texts = [f"text number {i}" for i in range(30)]
    source.write_bytes(jsonl([{"id": i, "prompt": t} for i, t in enumerate(texts)]))
    whole = run_cli(str(source), "--task", "embed")
    lines = whole.stdout.encode().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:11]) + lines[11][:20])  # a torn line, as after kill -9
    resumed = run_cli(str(source), "--task", "embed", "-o", str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes() == whole.stdout.encode()


def test_report_counts_rows_and_prompt_tokens(tmp_path: Path) -> None:
    source, report = tmp_path / "in.jsonl", tmp_path / "report.json"
    source.write_bytes(jsonl([{"prompt": "abcd"}, {"prompt": "efg"}]))
    result = run_cli(str(source), "--task", "embed", "--report", str(report))
    assert result.exit_code == 0
    figures = orjson.loads(report.read_bytes())
    assert (figures["rows_ok"], figures["input_tokens"], figures["output_tokens"]) == (2, 7, 0)


def test_validate_checks_rows_as_the_task_reads_them(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(SCORE_ROWS))
    result = runner.invoke(app, ["validate", str(source), "--task", "score"])
    assert result.exit_code == 1
    assert "2 of 4 rows invalid" in result.output
    assert "plain prompts       2" in result.output  # a pair is no chat
    assert f"{source}:3: field 'text_2': expected a non-empty string, found null" in result.output


# -- OpenAI batch lines ----------------------------------------------------------------


def openai_line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_compressed_file_of_rerank_lines_implies_score(tmp_path: Path, codec: str) -> None:
    import gzip

    import zstandard

    data = jsonl([openai_line("r1", "/v1/rerank", query="q", documents=["a"])])
    packed = gzip.compress(data) if codec == "gzip" else zstandard.compress(data)
    source = tmp_path / ("batch.jsonl.gz" if codec == "gzip" else "batch.jsonl.zst")
    source.write_bytes(packed)
    assert implied_task(str(source)) == "score"


def test_a_named_pipe_is_not_read_to_guess_its_task(tmp_path: Path) -> None:
    # Reading it would take the rows the run then waits for (the first row was lost).
    fifo = tmp_path / "queue.jsonl"
    os.mkfifo(fifo)
    assert implied_task(str(fifo)) == "generate"  # returns: no open, which would block


def test_a_file_of_embeddings_lines_implies_embed(tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    source.write_bytes(jsonl([openai_line("e1", "/v1/embeddings", input="hello")]))
    assert implied_task(str(source)) == "embed"
    result = run_cli(str(source), "--output-format", "openai")
    assert result.exit_code == 0, result.output
    [line] = read_jsonl(result.stdout)
    body = line["response"]["body"]
    assert line["custom_id"] == "e1"
    assert body["object"] == "list"
    assert body["data"] == [
        {"index": 0, "object": "embedding", "embedding": expected_embedding("hello")}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0}


def test_a_line_for_another_task_is_an_error_line(tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    lines = [
        openai_line("e1", "/v1/embeddings", input="hello"),
        openai_line("c1", "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}]),
        openai_line("e2", "/v1/embeddings", input="x", encoding_format="base64"),
    ]
    source.write_bytes(jsonl(lines))
    result = run_cli(str(source), "--output-format", "openai")
    assert result.exit_code == 1
    errors = [line["error"] for line in read_jsonl(result.stdout)]
    assert errors[0] is None
    assert errors[1]["message"] == (
        f"{source}:2: field 'url': '/v1/chat/completions' asks for --task generate, and this "
        "run's task is embed"
    )
    assert errors[2]["message"] == (
        f"{source}:3: field 'body.encoding_format': expected \"float\", found string 'base64'"
    )


def test_rerank_lines_come_back_sorted_by_relevance(tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    lines = [
        openai_line("r1", "/v1/rerank", query="cats", documents=["dogs", "cats purr", "xyz"]),
        openai_line("s1", "/v1/score", text_1="cats", text_2="dogs"),
    ]
    source.write_bytes(jsonl(lines))
    result = run_cli(str(source), "--output-format", "openai")
    assert result.exit_code == 0, result.output
    rerank, score = (line["response"]["body"] for line in read_jsonl(result.stdout))
    assert [(r["index"], r["relevance_score"]) for r in rerank["results"]] == [
        (1, 1.0),
        (0, 0.25),
        (2, 0.0),
    ]
    assert score["data"] == [{"index": 0, "object": "score", "score": 0.25}]


def test_embed_parquet_resume_after_a_failed_run_gives_the_whole_table(tmp_path: Path) -> None:
    from batching.job import run
    from batching.pipeline import EngineFailedError
    from batching.testing import FakeEngine

    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([{"id": i, "prompt": f"text {i} " * (i % 4 + 1)} for i in range(40)]))

    def config(out: Path, resume: bool = False) -> RunConfig:
        return RunConfig(
            InputConfig(str(source), task="embed", chunk_size=8),
            OutputConfig(str(out), resume=resume),
            max_engine_restarts=0,
        )

    whole, out = tmp_path / "whole.parquet", tmp_path / "out.parquet"
    run(config(whole), FakeEngine)
    with pytest.raises(EngineFailedError):  # dies after some chunks are sealed
        run(config(out), lambda: FakeEngine(max_num_seqs=4, die_at_step=6))
    assert not out.exists()
    saved = pq.read_table(out.with_name(out.name + ".parts")).num_rows
    assert 0 < saved < 40
    run(config(out, resume=True), FakeEngine)
    assert pq.read_table(out).equals(pq.read_table(whole))
    assert str(pq.read_table(out).schema.field("embedding").type) == (
        "fixed_size_list<element: float>[4]"
    )
