"""The queue worker against a real redis-server (started per module on a free port).

Each test gets an empty database. Workers run in threads (in-process) or as the
real CLI in a subprocess where a kill or a signal is the point.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batching.config import InputConfig, RunConfig
from batching.engine import Engine
from batching.records import Sampling
from batching.retry import RetryPolicy
from batching.template import PromptTemplate
from batching.testing import FakeEngine, FakeEngineFactory, expected_output
from tests.redis_server import redis_server

redis = pytest.importorskip("redis", reason="redis-py is the `redis` extra (scripts/setup)")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (scripts/setup installs it)", allow_module_level=True
    )

from batching.redis_queue import (  # noqa: E402
    QueueWorker,
    RedisStream,
    StreamNames,
    WorkerReport,
    WorkerSettings,
    connect,
)

PASSWORD = "s3cret-pw"
STREAM = "prompts"
DEADLINE_S = 60.0
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis"), password=PASSWORD) as url:
        yield url


@pytest.fixture
def url(server_url: str) -> str:
    client = redis.Redis.from_url(server_url)
    client.flushdb()
    client.close()
    return server_url


@pytest.fixture
def r(url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    yield client
    client.close()


def push(client: Any, rows: list[dict[str, Any]], stream: str = STREAM) -> list[str]:
    return [client.xadd(stream, {"data": orjson.dumps(row).decode()}) for row in rows]


def results_by_id(
    client: Any, stream: str = f"{STREAM}:results"
) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for _, fields in client.xrange(stream):
        by_id.setdefault(fields["id"], []).append({**fields, "row": orjson.loads(fields["data"])})
    return by_id


def config(chunk_size: int = 8, max_wait_ms: float = 20.0, **input_options: Any) -> RunConfig:
    return RunConfig(
        InputConfig(path="<redis>", chunk_size=chunk_size, **input_options),
        sampling=Sampling(max_tokens=64),
        max_wait_ms=max_wait_ms,
    )


def serve(
    url: str,
    engine: Any = FakeEngine,
    run_config: RunConfig | None = None,
    *,
    consumer: str = "w1",
    **settings: Any,
) -> WorkerReport:
    """Run a worker in this thread until the queue is drained."""
    stream = connect(url, StreamNames(STREAM, consumer=consumer))
    try:
        worker = QueueWorker(
            stream, engine, run_config or config(), WorkerSettings(drain=True, **settings)
        )
        return worker.run()
    finally:
        stream.close()


class Written:
    """Progress that tells a test when the worker has counted `rows` results written."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.reached = threading.Event()

    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        if rows_done >= self.rows:
            self.reached.set()


class Background:
    """A worker in a thread, stopped by `stop()` (as SIGTERM stops the CLI's)."""

    def __init__(
        self, url: str, engine: Any, run_config: RunConfig, progress: Any = None, **settings: Any
    ) -> None:
        self.stream = connect(url, StreamNames(STREAM, consumer="bg"))
        self.worker = QueueWorker(
            self.stream, engine, run_config, WorkerSettings(**settings), progress=progress
        )
        self.report: WorkerReport | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.report = self.worker.run()

    def stop(self) -> WorkerReport:
        self.worker.request_stop()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()
        self.stream.close()
        assert self.report is not None
        return self.report


def wait_for_results(client: Any, count: int, stream: str = f"{STREAM}:results") -> None:
    """Block (XREAD BLOCK, no sleeping) until the results stream holds `count` entries."""
    last = "0-0"
    seen = 0
    while seen < count:
        reply = client.xread({stream: last}, block=int(DEADLINE_S * 1000))
        assert reply, f"only {seen} of {count} results after {DEADLINE_S} s"
        for _, items in reply:
            seen += len(items)
            last = items[-1][0]


# -- the queue's contract ----------------------------------------------------------


def test_every_entry_is_answered_under_its_id_and_acknowledged(r: Any, url: str) -> None:
    push(r, [{"id": f"q{i}", "prompt": f"prompt {i}", "max_tokens": 5} for i in range(20)])
    report = serve(url)
    answers = results_by_id(r)
    assert sorted(answers) == sorted(f"q{i}" for i in range(20))
    for i in range(20):
        (answer,) = answers[f"q{i}"]
        assert answer["row"] == {
            "id": f"q{i}",
            "output": expected_output(f"prompt {i}", 5),
            "finish_reason": "length",
            "prompt_tokens": len(f"prompt {i}"),
            "completion_tokens": 5,
            "error": None,
        }
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0
    assert report.run.rows == 20 and report.run.rows_ok == 20
    assert report.queue.entries_read == 20 and report.queue.results_written == 20
    assert report.queue.entries_pending == 0 and report.queue.entries_waiting == 0


def test_a_batch_goes_to_the_engine_when_full(r: Any, url: str) -> None:
    push(r, [{"prompt": f"p{i}", "max_tokens": 1} for i in range(12)])
    factory = FakeEngineFactory([FakeEngine(max_num_seqs=4)])
    # A wait no test would sit through: only a full batch can reach the engine.
    serve(url, factory, config(chunk_size=4, max_wait_ms=600_000.0), max_held=4)
    (engine,) = factory.made
    assert [len(step) for step in engine.steps] == [4, 4, 4]


def test_a_partial_batch_goes_to_the_engine_after_max_wait(r: Any, url: str) -> None:
    push(r, [{"id": "alone", "prompt": "hello"}])
    # Batches of 64: the single entry is answered only because it waited 5 ms.
    report = serve(url, FakeEngine, config(chunk_size=64, max_wait_ms=5.0))
    assert list(results_by_id(r)) == ["alone"]
    assert report.run.batches == 1


def test_result_keys_hold_the_result_and_expire(r: Any, url: str) -> None:
    push(r, [{"id": 7, "prompt": "abc"}, {"prompt": "no id"}])
    serve(url, result_ttl_s=120)
    seven = orjson.loads(r.get("result:7"))
    assert seven["id"] == 7 and seven["output"] == "cba"
    assert 0 < r.ttl("result:7") <= 120
    # Without an id a request is known by its entry id, unique in the stream.
    (entry_id,) = [i for i, f in r.xrange(STREAM) if "no id" in f["data"]]
    assert orjson.loads(r.get(f"result:{entry_id}"))["output"] == "di on"


def test_fields_given_directly_and_row_options_apply(r: Any, url: str) -> None:
    r.xadd(STREAM, {"id": "d1", "name": "Ada", "max_tokens": "3"})
    run_config = config(template=PromptTemplate("Hello {{ name }}"), keep_fields=("name",))
    serve(url, FakeEngine, run_config)
    (answer,) = results_by_id(r)["d1"]
    assert answer["row"]["output"] == expected_output("Hello Ada", 3)
    assert answer["row"]["name"] == "Ada"


def test_a_malformed_entry_gets_an_error_result_and_is_acknowledged(r: Any, url: str) -> None:
    bad_json = r.xadd(STREAM, {"data": "{not json"})
    no_prompt = r.xadd(STREAM, {"data": '{"id": "np"}'})
    push(r, [{"id": "ok", "prompt": "fine"}])
    report = serve(url)
    answers = results_by_id(r)
    assert answers[bad_json][0]["row"]["error"] == {
        "type": "invalid_input",
        "message": f"entry {bad_json}: field 'data': not valid JSON "
        "(unexpected character, expected a string key: line 1 column 2 (char 1))",
    }
    assert answers["np"][0]["row"]["error"] == {
        "type": "invalid_input",
        "message": f"entry {no_prompt}: no 'prompt' or 'messages' field; set --prompt-field "
        "or --messages-field if the text is under another name",
    }
    assert answers["ok"][0]["row"]["output"] == "enif"
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0
    assert (report.run.rows_ok, report.run.rows_failed) == (1, 2)


def test_drain_on_an_empty_stream_returns_at_once(r: Any, url: str) -> None:
    report = serve(url)
    assert report.run.rows == 0
    assert r.xinfo_groups(STREAM)[0]["name"] == "bizra-batch"


def test_an_entry_delivered_too_often_goes_to_the_dead_letter_stream(r: Any, url: str) -> None:
    (poison,) = push(r, [{"id": "poison", "prompt": "kills workers"}])
    push(r, [{"id": "fine", "prompt": "x"}])
    r.xgroup_create(STREAM, "bizra-batch", id="0")
    # Two workers took it and died before answering (each read is a delivery).
    r.xreadgroup("bizra-batch", "died-1", {STREAM: ">"}, count=1)
    r.xclaim(STREAM, "bizra-batch", "died-2", 0, [poison])
    report = serve(url, claim_idle_ms=0, max_deliveries=2)
    (dead,) = r.xrange(f"{STREAM}:dead")
    assert dead[1] == {
        "entry": poison,
        "deliveries": "3",
        "error": "delivered 3 times (--max-deliveries 2) and never answered: every worker "
        "that took it stopped before writing its result",
        "data": '{"id":"poison","prompt":"kills workers"}',
    }
    assert list(results_by_id(r)) == ["fine"]
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0
    assert (report.queue.dead_lettered, report.queue.claimed) == (1, 0)


def test_a_row_that_fails_its_batch_gets_an_error_result_not_a_redelivery(r: Any, url: str) -> None:
    push(r, [{"id": i, "prompt": "poison" if i == 3 else f"p{i}"} for i in range(8)])
    engine = FakeEngine(max_num_seqs=8, poison=frozenset({"poison"}))
    run_config = RunConfig(InputConfig(path="<redis>", chunk_size=8), max_retries=1)
    stream = connect(url, StreamNames(STREAM, consumer="w"))
    no_wait = RetryPolicy(max_retries=1, sleep=lambda _: None)
    QueueWorker(stream, lambda: engine, run_config, WorkerSettings(drain=True), retry=no_wait).run()
    stream.close()
    answers = results_by_id(r)
    assert answers["3"][0]["row"]["error"]["type"] == "engine_error"
    assert all(answers[str(i)][0]["row"]["error"] is None for i in range(8) if i != 3)
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0


def test_two_workers_answer_every_request_exactly_once(r: Any, url: str) -> None:
    ids = [f"r{i}" for i in range(300)]
    push(r, [{"id": i, "prompt": f"prompt {i}", "max_tokens": 4} for i in ids])
    reports: list[WorkerReport] = []

    def one(name: str) -> None:
        engine = FakeEngine(max_num_seqs=8)
        reports.append(serve(url, lambda: engine, config(chunk_size=16), consumer=name))

    threads = [threading.Thread(target=one, args=(f"w{k}",)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    answers = results_by_id(r)
    assert Counter({i: len(a) for i, a in answers.items()}) == Counter(dict.fromkeys(ids, 1))
    assert sum(rep.queue.entries_read for rep in reports) == 300
    assert sum(rep.queue.duplicates_skipped for rep in reports) == 0


def test_a_result_is_written_once_even_if_two_workers_ran_the_entry(r: Any, url: str) -> None:
    (entry,) = push(r, [{"id": "slow", "prompt": "abc"}])
    stream = connect(url, StreamNames(STREAM, consumer="slow-worker"))
    assert len(stream.read(count=1, block_ms=1)) == 1  # it holds the entry
    # Another worker takes the entry over (it looked dead) and answers it...
    report = serve(url, claim_idle_ms=0, consumer="claimer")
    assert report.queue.claimed == 1
    # ...then the slow worker finishes too: its result is not written.
    assert stream.write_results([(entry, "slow", '{"id":"slow"}')], ttl_s=None) == [False]
    assert len(results_by_id(r)["slow"]) == 1
    stream.close()


class _LosesRepliesOnce:
    """A redis-py client whose first result write runs but whose reply is lost, as
    when the connection drops after Redis did the work."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, script: str) -> Any:
        inner = self._client.register_script(script)

        def call(keys: list[Any], args: list[Any]) -> Any:
            reply = inner(keys=keys, args=args)
            if "'SET'" in script and not self.lost:  # the results script
                self.lost += 1
                raise redis.ConnectionError("Connection closed by server.")
            return reply

        return call


def test_a_write_whose_reply_was_lost_is_not_written_twice(r: Any, url: str) -> None:
    push(r, [{"id": f"c{i}", "prompt": "abc"} for i in range(5)])
    client = _LosesRepliesOnce(redis.Redis.from_url(url, decode_responses=True))
    no_wait = RetryPolicy(max_retries=3, sleep=lambda _: None)
    stream = RedisStream(client, StreamNames(STREAM, consumer="w"), where="test", retry=no_wait)
    stream.ensure_group()
    report = QueueWorker(stream, FakeEngine, config(chunk_size=8), WorkerSettings(drain=True)).run()
    assert client.lost == 1
    assert {i: len(a) for i, a in results_by_id(r).items()} == {f"c{i}": 1 for i in range(5)}
    assert report.queue.redis_retries == 1
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0


def test_health_has_the_batch_queue_figures_and_the_queue(r: Any, url: str) -> None:
    push(r, [{"prompt": "abc"}])
    written = Written(1)
    worker = Background(url, FakeEngine, config(), progress=written)
    assert written.reached.wait(DEADLINE_S)
    push(r, [{"prompt": "waits"}], stream="other")  # another stream: not counted
    health = worker.worker.health()
    worker.stop()
    assert list(health) == [
        "total_batches", "total_requests", "avg_batch_size", "avg_batch_duration_ms",
        "queue_depth", "in_flight", "running", "entries_read", "claimed", "dead_lettered",
        "results_written", "duplicates_skipped", "redis_retries", "entries_waiting",
        "entries_pending",
    ]  # fmt: skip
    assert health["total_requests"] == 1 and health["running"] is True
    assert (health["entries_waiting"], health["entries_pending"]) == (0, 0)


# -- the CLI ---------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", "worker", *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_cli_drain_answers_and_never_prints_the_password(r: Any, url: str) -> None:
    push(r, [{"id": "a", "prompt": "abc"}, {"id": "b", "prompt": "de"}])
    done = subprocess.run(
        cli(url, "--stream", STREAM, "--engine", "fake", "--drain", "--result-keys",
            "--consumer", "cron"),
        capture_output=True, text=True, env=cli_env(), timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert PASSWORD not in done.stderr
    masked = url.replace(PASSWORD, "***")
    assert done.stderr.splitlines()[0] == (
        f"bizra-batch: worker cron in group bizra-batch on {masked}, stream {STREAM}; "
        f"results to {STREAM}:results"
    )
    assert done.stderr.splitlines()[-1] == (
        "bizra-batch: queue: 2 entries read, 0 claimed from dead workers, 0 dead-lettered, "
        "0 duplicate results skipped; now 0 waiting, 0 pending"
    )
    assert orjson.loads(r.get("result:b"))["output"] == "ed"


@pytest.mark.slow
def test_cli_template_and_system_make_each_entry_a_chat(r: Any, url: str) -> None:
    push(r, [{"id": "a", "review": "good"}])
    done = subprocess.run(
        cli(url, "--stream", STREAM, "--engine", "fake", "--drain", "--result-keys",
            "--template", "Rate: {{ review }}", "--system", "Be brief."),
        capture_output=True, text=True, env=cli_env(), timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The fake model renders a chat as "role: text" lines and answers it reversed.
    chat = "system: Be brief.\nuser: Rate: good"
    assert orjson.loads(r.get("result:a"))["output"] == chat[::-1]


@pytest.mark.slow
def test_cli_without_redis_py_exits_2_with_the_install_hint(url: str, tmp_path: Path) -> None:
    # A `redis` module that cannot be imported, first on the path.
    (tmp_path / "redis.py").write_text("raise ImportError('no redis here')\n")
    env = {**cli_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run(
        cli(url, "--stream", STREAM, "--engine", "fake", "--drain"),
        capture_output=True, text=True, env=env, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "bizra-batch: error: the worker needs redis-py; install it with: "
        "pip install 'bizra-batch[redis]'\n"
    )


def slow_sim(*extra: str) -> list[str]:
    """A sim engine slow enough that a worker is mid-batch for seconds: 4 sequences
    at a time, 10 ms a step, each request 30 steps."""
    return ["--engine", "sim", "--max-num-seqs", "4", "--engine-arg", "step_ms=10",
            "--max-tokens", "30", "--chunk-size", "8", *extra]  # fmt: skip


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing(r: Any, url: str) -> None:
    ids = [f"k{i}" for i in range(40)]
    push(r, [{"id": i, "prompt": f"prompt {i}"} for i in ids])
    doomed = subprocess.Popen(
        cli(url, "--stream", STREAM, "--consumer", "doomed", "--quiet", *slow_sim()),
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_results(r, 1)
    finally:
        doomed.kill()  # SIGKILL: no chance to finish or acknowledge anything
        doomed.wait(timeout=DEADLINE_S)
    held = r.xpending(STREAM, "bizra-batch")["pending"]
    assert held > 0  # it died holding entries
    engine = FakeEngine(max_num_seqs=8)
    report = serve(url, lambda: engine, claim_idle_ms=0, consumer="rescuer")
    answers = results_by_id(r)
    assert sorted(answers) == sorted(ids)  # nothing lost
    duplicates = {i: a for i, a in answers.items() if len(a) > 1}
    assert duplicates == {}  # a result is written once per entry
    assert report.queue.claimed == held
    assert report.queue.duplicates_skipped == 0
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0


@pytest.mark.slow
def test_sigterm_finishes_and_acknowledges_what_the_worker_holds(r: Any, url: str) -> None:
    push(r, [{"id": f"t{i}", "prompt": f"prompt {i}"} for i in range(200)])
    worker = subprocess.Popen(
        cli(url, "--stream", STREAM, "--consumer", "stopped", *slow_sim()),
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_results(r, 1)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=DEADLINE_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 143, stderr
    answered = results_by_id(r)
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0  # every entry taken was answered
    waiting = r.xinfo_groups(STREAM)[0]["lag"]
    assert len(answered) + waiting == 200 and waiting > 0
    assert f"queue: {len(answered)} entries read" in stderr


# -- the tiny model ----------------------------------------------------------------------


@pytest.mark.vllm
def test_the_tiny_model_answers_requests_pushed_while_the_worker_runs(
    r: Any, url: str, vllm_engine: Engine
) -> None:
    from batching.adapters import KeptOpen

    greedy = RunConfig(
        InputConfig(path="<redis>", chunk_size=8),
        sampling=Sampling(max_tokens=6, temperature=0.0),
        max_wait_ms=20.0,
    )
    worker = Background(url, lambda: KeptOpen(vllm_engine), greedy)
    push(r, [{"id": "first", "prompt": "The number 1 is"}])
    wait_for_results(r, 1)  # the worker is running: push more now
    push(r, [{"id": f"n{i}", "prompt": f"The number {i} is"} for i in range(6)])
    push(r, [{"id": "again", "prompt": "The number 1 is"}])
    wait_for_results(r, 8)
    report = worker.stop()
    answers = {i: a[0]["row"] for i, a in results_by_id(r).items()}
    assert len(answers) == 8
    for row in answers.values():
        assert row["error"] is None and row["completion_tokens"] and row["output"]
    # Greedy: the same prompt, in another batch, gets the same output.
    assert answers["again"]["output"] == answers["first"]["output"] == answers["n1"]["output"]
    assert report.queue.results_written == 8
    assert not vllm_engine.has_unfinished()


@pytest.mark.slow
def test_neither_the_package_nor_the_cli_imports_redis_until_a_worker_connects() -> None:
    code = "import sys, batching.redis_queue, cli.app\nprint('redis' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


@pytest.mark.slow
def test_cli_with_a_wrong_password_exits_1_at_once_and_masks_it(url: str) -> None:
    wrong = url.replace(PASSWORD, "not-the-password")
    done = subprocess.run(
        cli(wrong, "--stream", STREAM, "--engine", "fake", "--drain"),
        capture_output=True, text=True, env=cli_env(), timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not-the-password" not in done.stderr
    masked = url.replace(PASSWORD, "***")
    assert done.stderr == (
        f"bizra-batch: error: {masked}: creating the group refused: invalid username-password "
        "pair or user is disabled.\n"
    )


def test_renewing_held_entries_resets_their_idle_time_not_their_deliveries(
    r: Any, url: str
) -> None:
    (entry,) = push(r, [{"prompt": "long"}])
    stream = connect(url, StreamNames(STREAM, consumer="holder"))
    assert len(stream.read(count=1, block_ms=1)) == 1
    # As if it had waited three hours in this worker.
    r.xclaim(STREAM, "bizra-batch", "holder", 0, [entry], idle=10_800_000, justid=True)
    stream.touch([entry])
    (pending,) = r.xpending_range(STREAM, "bizra-batch", "-", "+", 10)
    assert pending["time_since_delivered"] < 10_800_000
    assert pending["times_delivered"] == 1
    stream.close()


def test_a_refused_call_is_one_error_naming_the_server_not_a_traceback(r: Any, url: str) -> None:
    from batching.redis_queue import RedisQueueError

    stream = connect(url, StreamNames(STREAM, consumer="w"))
    r.xgroup_destroy(STREAM, "bizra-batch")  # someone removed the group under the worker
    with pytest.raises(RedisQueueError) as caught:
        stream.read(count=1, block_ms=1)
    stream.close()
    masked = url.replace(PASSWORD, "***")
    assert str(caught.value) == (
        f"{masked}: reading: NOGROUP No such key '{STREAM}' or consumer group 'bizra-batch' in "
        "XREADGROUP with GROUP option"
    )


def test_an_engine_that_fails_for_good_stops_the_worker_and_leaves_its_entries_pending(
    r: Any, url: str
) -> None:
    from batching.pipeline import EngineFailedError

    push(r, [{"id": i, "prompt": f"p{i}"} for i in range(6)])
    factory = FakeEngineFactory([FakeEngine(die_at_step=1)])
    run_config = RunConfig(InputConfig(path="<redis>", chunk_size=8), max_engine_restarts=1)
    stream = connect(url, StreamNames(STREAM, consumer="w"))
    worker = QueueWorker(stream, factory, run_config, WorkerSettings(drain=True))
    with pytest.raises(EngineFailedError):
        worker.run()
    stream.close()
    assert results_by_id(r) == {}
    # Not acknowledged: a worker with a working engine claims and runs them.
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 6


class _RecordsReads(RedisStream):
    """A stream that records each read's count and block time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[int, int | None]] = []

    def read(self, count: int, block_ms: int | None) -> list[Any]:
        self.reads.append((count, block_ms))
        return super().read(count, block_ms)


def test_a_draining_worker_reads_whole_batches_and_never_blocks_a_read(r: Any, url: str) -> None:
    # A blocked read at the end of the queue held the worker read_block_ms after its
    # last result; a read of whatever room a write freed fed the engine part-batches.
    push(r, [{"id": f"b{i}", "prompt": "abc"} for i in range(45)])
    client = redis.Redis.from_url(url, decode_responses=True)
    stream = _RecordsReads(client, StreamNames(STREAM, consumer="w"), where="test")
    stream.ensure_group()
    settings = WorkerSettings(drain=True, read_block_ms=2_000)
    report = QueueWorker(stream, FakeEngine, config(chunk_size=8), settings).run()
    stream.close()
    assert report.queue.results_written == 45
    assert set(stream.reads) == {(8, None)}
    assert r.xpending(STREAM, "bizra-batch")["pending"] == 0


@pytest.mark.vllm
def test_cli_lora_runs_each_request_with_its_adapter_as_transformers_merged(
    r: Any, url: str, tiny_model: Path
) -> None:
    from samples.build_tiny_lora import ensure_tiny_loras
    from tests.test_integration import MAX_TOKENS
    from tests.test_lora_vllm import PROMPTS, merged_greedy

    loras = ensure_tiny_loras(tiny_model)
    prompt = PROMPTS[0]
    push(r, [
        {"id": "base", "prompt": prompt}, {"id": "a", "prompt": prompt, "adapter": "a"},
        {"id": "unknown", "prompt": prompt, "adapter": "zz"},
    ])  # fmt: skip
    env = {k: v for k, v in cli_env().items() if not k.startswith("VLLM_")}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    done = subprocess.run(
        cli(url, "--stream", STREAM, "--drain", "--result-keys", "-q",
            "-m", str(tiny_model), "--lora", f"a={loras['a']}",
            "--max-tokens", str(MAX_TOKENS), "--temperature", "0",
            "--dtype", "float32", "--engine-arg", "enforce_eager=true"),
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""  # -q: not even vLLM's once-per-LoRA tokenizer warning
    got = {key: orjson.loads(r.get(f"result:{key}")) for key in ("base", "a", "unknown")}
    assert got["base"]["output"] == merged_greedy(tiny_model, None, [prompt])[0]
    assert got["a"]["output"] == merged_greedy(tiny_model, loras["a"], [prompt])[0]
    assert got["a"]["output"] != got["base"]["output"]
    assert got["unknown"]["error"]["type"] == "invalid_input"
    assert "unknown adapter 'zz'" in got["unknown"]["error"]["message"]


@pytest.mark.slow
def test_cli_reads_a_request_image_only_under_allowed_media_path(
    r: Any, url: str, tmp_path: Path
) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "img.png")
    image = {"type": "image_url", "image_url": {"url": f"file://{tmp_path}/img.png"}}
    chat = [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}]
    outcomes = []
    for allowed in ([], ["--allowed-media-path", str(tmp_path)]):
        push(r, [{"id": "img", "messages": chat}])
        done = subprocess.run(
            cli(url, "--stream", STREAM, "--engine", "fake", "--drain", "--result-keys",
                *allowed),
            capture_output=True, text=True, env=cli_env(), timeout=DEADLINE_S,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outcomes.append(orjson.loads(r.get("result:img")))
    refused, read = outcomes
    assert refused["error"]["type"] == "invalid_input"
    assert "--allowed-media-path" in refused["error"]["message"]
    assert read["error"] is None and read["output"] is not None
