"""--cache: finished results reused across runs, and a cache file that stays whole."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from batching.adapters import ListSink, ListSupply
from batching.config import CacheConfig, EngineConfig, InputConfig, RunConfig
from batching.engine import Engine
from batching.errors import CacheCorruptError, CacheFileError
from batching.model_identity import model_identity
from batching.pipeline import run_rows
from batching.records import Request, Result, Sampling
from batching.report import Report
from batching.result_cache import ResultCache, StoredResult
from batching.testing import FakeEngine
from cli.app import app

GREEDY = Sampling(temperature=0.0, max_tokens=16)
FORK = multiprocessing.get_context("fork")


def rows_of(prompts: Sequence[str], sampling: Sampling | None = None) -> list[Request]:
    return [
        Request(index=i, id=f"row-{i}", line=i + 1, prompt=p, sampling=sampling or Sampling())
        for i, p in enumerate(prompts)
    ]


def no_engine() -> Engine:
    raise AssertionError("the engine was started")


def run(
    rows: Sequence[Request],
    cache: Path,
    *,
    engine: FakeEngine | None = None,
    factory: Any = None,
    engine_config: EngineConfig | None = None,
    sampled: bool = False,
    dedup: bool = True,
    sampling: Sampling = GREEDY,
) -> tuple[list[Result], Report]:
    made = engine or FakeEngine()
    cache_config = CacheConfig(
        str(cache), engine_config or EngineConfig(model="fake"), "fake", sampled=sampled
    )
    config = RunConfig(InputConfig("-"), sampling=sampling, cache=cache_config, dedup=dedup)
    sink = ListSink()
    report = run_rows(ListSupply(rows, chunk_size=4), sink, factory or (lambda: made), config)
    return sink.results, report


def dicts(results: list[Result]) -> list[dict[str, Any]]:
    return [result.to_dict() for result in results]


PROMPTS = [f"prompt {i}" for i in range(40)]


def test_a_rerun_answers_every_row_from_the_cache_without_starting_an_engine(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache.sqlite"
    first, report = run(rows_of(PROMPTS), cache)
    assert (report.cache_hits, report.cache_misses) == (0, 40)
    again, report = run(rows_of(PROMPTS), cache, factory=no_engine)
    assert dicts(again) == dicts(first)
    assert (report.cache_hits, report.cache_misses, report.rows) == (40, 0, 40)
    assert report.engine_startup_seconds is None


def test_after_editing_some_rows_only_those_reach_the_engine(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    run(rows_of(PROMPTS), cache)
    edited = list(PROMPTS)
    edited[7], edited[30] = "changed 7", "changed 30"
    engine = FakeEngine()
    results, report = run(rows_of(edited), cache, engine=engine)
    assert sorted(engine.added) == [7, 30]
    assert (report.cache_hits, report.cache_misses) == (38, 2)
    fresh, _ = run(rows_of(edited), tmp_path / "other.sqlite")
    assert dicts(results) == dicts(fresh)


def test_a_cached_row_gets_its_own_id_and_kept_fields(tmp_path: Path) -> None:
    # Cached rows keep their own id, index and kept fields, not the stored row's.
    cache = tmp_path / "cache.sqlite"
    run(rows_of(["a", "b"]), cache)
    rows = [Request(index=0, id="x", line=1, prompt="b", kept={"k": 1})]
    results, _ = run(rows, cache, factory=no_engine)
    assert results[0].to_dict() == {
        "id": "x", "output": "b", "finish_reason": "stop", "prompt_tokens": 1,
        "completion_tokens": 1, "error": None, "k": 1,
    }  # fmt: skip


def test_sampled_requests_are_cached_only_when_asked(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    sampled = Sampling(temperature=0.9, max_tokens=8)
    _, report = run(rows_of(["a", "b"]), cache, sampling=sampled)
    assert (report.cache_hits, report.cache_misses) == (0, 0)
    _, report = run(rows_of(["a", "b"]), cache, sampling=sampled, sampled=True)
    assert report.cache_misses == 2
    _, report = run(rows_of(["a", "b"]), cache, sampling=sampled, sampled=True,
                    factory=no_engine)  # fmt: skip
    assert report.cache_hits == 2


def test_a_cached_row_keeps_every_sample_and_its_logprobs(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    asked = Sampling(temperature=0.9, max_tokens=8, n=2, logprobs=2)
    first, _ = run(rows_of(["hello"]), cache, sampling=asked, sampled=True)
    again, _ = run(rows_of(["hello"]), cache, sampling=asked, sampled=True, factory=no_engine)
    assert isinstance(again[0].output, list) and again[0].logprobs is not None
    assert dicts(again) == dicts(first)


def test_failed_rows_are_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    bad = FakeEngine(reject=frozenset({"bad"}))
    run(rows_of(["bad", "ok"]), cache, engine=bad)
    engine = FakeEngine()
    results, report = run(rows_of(["bad", "ok"]), cache, engine=engine)
    assert engine.added == [0] and results[0].ok and report.cache_hits == 1


def test_another_model_or_dtype_does_not_reuse_results(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"layers": 1}')
    cache = tmp_path / "cache.sqlite"
    config = EngineConfig(model=str(model), dtype="float32")
    run(rows_of(["a"]), cache, engine_config=config)
    _, report = run(rows_of(["a"]), cache, engine_config=config, factory=no_engine)
    assert report.cache_hits == 1
    _, report = run(rows_of(["a"]), cache, engine_config=EngineConfig(str(model), dtype="bfloat16"))
    assert report.cache_hits == 0
    (model / "config.json").write_text('{"layers": 2}')
    _, report = run(rows_of(["a"]), cache, engine_config=config)
    assert report.cache_hits == 0


def test_a_copy_of_the_model_elsewhere_reuses_the_results(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("notes")
    shutil.copytree(model, tmp_path / "copy")
    (tmp_path / "copy" / "README.md").write_text("other notes")
    cache = tmp_path / "cache.sqlite"
    run(rows_of(["a"]), cache, engine_config=EngineConfig(str(model)))
    _, report = run(rows_of(["a"]), cache, engine_config=EngineConfig(str(tmp_path / "copy")),
                    factory=no_engine)  # fmt: skip
    assert report.cache_hits == 1


class CountingMemo:
    def __init__(self) -> None:
        self.known: dict[tuple[str, int, int], str] = {}
        self.hashed = 0

    def digest_of(self, path: str, size: int, mtime_ns: int) -> str | None:
        return self.known.get((path, size, mtime_ns))

    def remember_digest(self, path: str, size: int, mtime_ns: int, digest: str) -> None:
        self.hashed += 1
        self.known[(path, size, mtime_ns)] = digest


def test_an_unchanged_model_file_is_hashed_once(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.safetensors").write_bytes(b"w" * 1000)
    memo = CountingMemo()
    first = model_identity(EngineConfig(str(tmp_path)), memo=memo)
    second = model_identity(EngineConfig(str(tmp_path)), memo=memo)
    assert memo.hashed == 2 and first == second


def test_a_hub_name_is_known_by_its_revision_where_given() -> None:
    identity = model_identity(EngineConfig("org/name", extra={"revision": "abc123"}))
    assert (identity.revision, identity.name_only) == ("abc123", False)


# -- the file ---------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database at all, just some text that is long enough" * 10)
    with pytest.raises(CacheFileError) as caught:
        ResultCache.open(str(path))
    assert str(caught.value) == (
        f"--cache {path}: not a bizra-batch result cache (file is not a database); give "
        "--cache a new path, or delete the file if it was a cache"
    )


def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    before = path.read_bytes()
    with pytest.raises(CacheFileError) as caught:
        ResultCache.open(str(path))
    assert str(caught.value) == (
        f"--cache {path}: not a bizra-batch result cache (another program's SQLite "
        "database); give --cache a new path, or delete the file if it was a cache"
    )
    assert path.read_bytes() == before


def test_a_cache_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    ResultCache.open(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(CacheFileError) as caught:
        ResultCache.open(str(path))
    assert str(caught.value) == (
        f"--cache {path}: a result cache of schema version 99, this bizra-batch reads "
        "version 1; give --cache a new path"
    )


def test_an_empty_file_becomes_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.touch()
    cache = ResultCache.open(str(path))
    cache.put_many([(b"k" * 32, StoredResult("x", "stop", 1, 1, None))])
    assert list(cache.get_many([b"k" * 32])) == [b"k" * 32]
    cache.close()


def test_a_damaged_value_is_an_error_never_a_wrong_answer(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = ResultCache.open(str(path))
    cache.put_many([(b"k" * 32, StoredResult("right", "stop", 1, 1, None))])
    cache.close()
    with sqlite3.connect(path) as db:
        value = StoredResult("wrong", "stop", 1, 1, None).to_bytes()
        db.execute("UPDATE results SET value = ?", (value,))
    db.close()
    cache = ResultCache.open(str(path))
    with pytest.raises(CacheCorruptError) as caught:
        cache.get_many([b"k" * 32])
    cache.close()
    assert str(caught.value) == (
        f"--cache {path}: the cache is damaged (a stored result); delete it (results are "
        "only reused, never lost) and run again"
    )


def test_the_cli_refuses_a_foreign_cache_with_exit_2_before_running(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    cache = tmp_path / "cache.sqlite"
    cache.write_text("garbage " * 100)
    result = CliRunner().invoke(
        app, ["run", str(source), "--engine", "fake", "--cache", str(cache), "-q"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"bizra-batch: error: --cache {cache}: not a bizra-batch result cache (file is not "
        "a database); give --cache a new path, or delete the file if it was a cache"
    )


def test_the_cli_and_a_config_file_take_the_reuse_options(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n{"prompt": "a"}\n')
    cache = tmp_path / "cache.sqlite"
    settings = tmp_path / "run.toml"
    settings.write_text(f'cache = "{cache}"\nno-dedup = true\ntemperature = 0.0\n')
    report = tmp_path / "report.json"
    command = ["run", str(source), "--engine", "fake", "--config", str(settings), "-q",
               "--report", str(report)]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert (figures["rows_deduplicated"], figures["cache_misses"]) == (0, 2)
    result = CliRunner().invoke(app, [*command, "--cache-sampled"])
    figures = json.loads(report.read_text())
    assert (figures["cache_hits"], figures["cache_misses"]) == (2, 0)


def test_cache_sampled_without_a_cache_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    result = CliRunner().invoke(app, ["run", str(source), "--engine", "fake", "--cache-sampled"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "bizra-batch: error: --cache-sampled needs --cache PATH"


# -- two writers at once, and a writer killed mid-write ---------------------------


def _key(writer: int, batch: int, row: int) -> bytes:
    return f"{writer}:{batch}:{row}".encode().ljust(32, b".")


def _write_batches(path: str, writer: int, batches: int, start: Any) -> None:
    cache = ResultCache.open(path)
    start.wait()
    for batch in range(batches):
        rows = [(_key(writer, batch, row), StoredResult(f"{writer}-{batch}-{row}", "stop", 1, 1,
                 None)) for row in range(50)]  # fmt: skip
        # A key both writers store: whichever comes first is kept, whole.
        rows.append((_key(9, batch, 0), StoredResult(f"shared {batch}", "stop", 1, 1, None)))
        cache.put_many(rows)
    cache.close()


def test_two_processes_writing_one_cache_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    start = FORK.Barrier(2)
    writers = [FORK.Process(target=_write_batches, args=(path, w, 40, start)) for w in (1, 2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    assert [process.exitcode for process in writers] == [0, 0]
    cache = ResultCache.open(path)
    keys = [_key(w, b, r) for w in (1, 2) for b in range(40) for r in range(50)]
    found = cache.get_many(keys)
    shared = cache.get_many([_key(9, b, 0) for b in range(40)])
    cache.close()
    assert len(found) == len(keys)
    assert all(found[_key(w, b, r)].output == f"{w}-{b}-{r}" for w in (1, 2) for b in range(40)
               for r in range(50))  # fmt: skip
    assert [shared[_key(9, b, 0)].output for b in range(40)] == [f"shared {b}" for b in range(40)]


def _write_until_killed(path: str, done: Connection) -> None:
    cache = ResultCache.open(path)
    batch = 0
    while True:
        cache.put_many([(_key(1, batch, row), StoredResult("x" * 200, "stop", 1, 1, None))
                        for row in range(200)])  # fmt: skip
        done.send(batch)
        batch += 1


def test_a_writer_killed_mid_write_leaves_whole_batches_only(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite")
    receiving, sending = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_write_until_killed, args=(path, sending))
    child.start()
    committed = -1
    while committed < 30:
        committed = receiving.recv()
    # The child is writing its next batches: killed somewhere inside one.
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    cache = ResultCache.open(path)
    per_batch = []
    for batch in range(committed + 5):
        found = cache.get_many([_key(1, batch, row) for row in range(200)])
        per_batch.append(len(found))
    cache.close()
    assert all(count in (0, 200) for count in per_batch)  # never part of a batch
    assert per_batch[: committed + 1] == [200] * (committed + 1)


# -- real vLLM ---------------------------------------------------------------------


@pytest.mark.vllm
def test_a_cached_rerun_on_vllm_writes_exactly_the_first_runs_rows(
    vllm_engine: Engine, tiny_engine_config: EngineConfig, tmp_path: Path
) -> None:
    from batching.adapters import KeptOpen
    from batching.config import OutputConfig
    from batching.job import run as run_job

    samples = Path(__file__).resolve().parent.parent / "samples" / "prompts.jsonl"
    # The samples' prompts and chats without their own sampling: all greedy here.
    rows = [
        {k: v for k, v in orjson.loads(line).items() if k in ("id", "prompt", "messages")}
        for line in samples.read_bytes().splitlines()[:24]
    ]
    rows += [{**row, "id": f"again-{row['id']}"} for row in rows[:8]]  # repeats, chats among them
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    cache = CacheConfig(str(tmp_path / "cache.sqlite"), tiny_engine_config, "vllm")
    greedy = Sampling(temperature=0.0, max_tokens=8)

    def run_to(name: str, factory: Any, **settings: Any) -> tuple[bytes, Report]:
        out = tmp_path / name
        config = RunConfig(InputConfig(str(source), chunk_size=10), OutputConfig(str(out)),
                           sampling=greedy, **settings)  # fmt: skip
        report = run_job(config, factory)
        return out.read_bytes(), report

    def lent() -> Engine:
        return KeptOpen(vllm_engine)

    every_row, _ = run_to("every-row.jsonl", lent, dedup=False)
    first, report = run_to("first.jsonl", lent, cache=cache)
    assert (report.rows_deduplicated, report.cache_misses) == (8, 24)
    again, report = run_to("again.jsonl", no_engine, cache=cache)
    assert report.cache_hits == 32
    assert again == first == every_row


def test_a_cache_in_a_missing_folder_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "cache.sqlite"
    with pytest.raises(CacheFileError) as caught:
        ResultCache.open(str(path))
    assert str(caught.value) == f"--cache {path}: cannot open (unable to open database file)"


def test_a_changed_lora_adapter_does_not_reuse_results(tmp_path: Path) -> None:
    from batching.lora import LoraAdapter, LoraAdapters

    adapter = tmp_path / "sql-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    config = EngineConfig("fake", loras=LoraAdapters((LoraAdapter("sql", str(adapter)),)))
    cache = tmp_path / "cache.sqlite"
    run(rows_of(["a"]), cache, engine_config=config)
    _, report = run(rows_of(["a"]), cache, engine_config=config, factory=no_engine)
    assert report.cache_hits == 1
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    _, report = run(rows_of(["a"]), cache, engine_config=config)
    assert report.cache_hits == 0


def test_a_hub_name_without_a_revision_is_cached_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batching.report import ReportCollector
    from batching.reuse import Reuse

    cache = CacheConfig(str(tmp_path / "cache.sqlite"), EngineConfig("org/name"), "vllm")
    reuse = Reuse.open(
        RunConfig(InputConfig("-"), cache=cache),
        ReportCollector(),
        place=lambda index, line: str(line),
    )
    assert reuse is not None
    reuse.close()
    assert capsys.readouterr().err == (
        "bizra-batch: warning: --cache keys org/name by its name only; a new upload under "
        "that name is not told apart (pass a local path, or --engine-arg revision=...)\n"
    )


def test_a_link_cycle_in_a_model_folder_does_not_stop_hashing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert model_identity(EngineConfig(str(tmp_path))).digest is not None
