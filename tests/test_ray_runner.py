"""`run --ray`: the same output as the single-process run, on a local 2-CPU Ray.

One Ray instance serves the whole file (starting one takes seconds); each test
compares a Ray run with the single-process run of the same config, byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batching.adapters import KeptOpen
from batching.config import EngineConfig, InputConfig, OutputConfig, RunConfig
from batching.engine import Engine, EngineOutput
from batching.job import run as run_single
from batching.pipeline import EngineFailedError
from batching.records import Sampling
from batching.testing import FakeEngine
from cli.app import app
from cli.run import bare_ray_means_local

ray = pytest.importorskip("ray")
# Every test here starts (or shares) a Ray instance: seconds each.
pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent

from batching.ray.runner import RayOptions, concurrent_batches, run_on_ray  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Test engines below travel to the replicas by value: the workers need not be
    # able to import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 1024 * 1024,
        logging_level="ERROR",
        configure_logging=True,
    )
    yield
    ray.shutdown()


def write_input(path: Path) -> None:
    """Prompts of many lengths, plus one row of each kind that fails before the engine."""
    rows: list[Any] = [{"id": f"r{i}", "prompt": "x" * (i % 17 + 1) + str(i)} for i in range(120)]
    rows[5] = "{not json"
    rows[40] = {"id": "r3", "prompt": "a repeated id"}
    rows[77] = {"id": "empty", "prompt": ""}
    rows[90] = {"id": "long", "prompt": "p" * 70}  # over the fake model's 64 tokens
    if path.suffix == ".parquet":
        table = [r if isinstance(r, dict) else {"id": "bad", "prompt": None} for r in rows]
        pq.write_table(pa.Table.from_pylist(table), path, row_group_size=50)
        return
    lines = [r.encode() if isinstance(r, str) else orjson.dumps(r) for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")


def config(
    source: Path, out: Path, *, errors: Path | None = None, resume: bool = False
) -> RunConfig:
    return RunConfig(
        input=InputConfig(path=str(source), chunk_size=16),
        output=OutputConfig(path=str(out), resume=resume),
        sampling=Sampling(max_tokens=6),
        errors_path=str(errors) if errors else None,
    )


def short_model() -> FakeEngine:
    return FakeEngine(max_num_seqs=4, max_model_len=64)


@dataclass(eq=False)
class ExitsOnceEngine(FakeEngine):
    """Kills its whole process (the replica's actor) at one step, the first time only.

    The marker file says it happened: the replica Ray restarts must not die again.
    """

    marker: str = ""
    exit_at_step: int = 3

    def step(self) -> list[EngineOutput]:
        if self._step_count + 1 >= self.exit_at_step and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().step()


@dataclass(frozen=True)
class ExitsOnce:
    marker: str

    def __call__(self) -> Engine:
        return ExitsOnceEngine(max_num_seqs=4, max_model_len=64, marker=self.marker)


def same_output(a: Path, b: Path) -> None:
    if a.suffix == ".parquet":
        left, right = pq.read_table(a), pq.read_table(b)
        assert left.schema.equals(right.schema, check_metadata=True)
        assert left.to_pylist() == right.to_pylist()
    else:
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    ("source_suffix", "out_suffix"), [(".jsonl", ".jsonl"), (".parquet", ".parquet")]
)
def test_ray_output_equals_the_single_process_output(
    tmp_path: Path, source_suffix: str, out_suffix: str
) -> None:
    source = tmp_path / f"in{source_suffix}"
    write_input(source)
    single, distributed = tmp_path / f"single{out_suffix}", tmp_path / f"ray{out_suffix}"
    single_errors, ray_errors = tmp_path / "single-errors.jsonl", tmp_path / "ray-errors.jsonl"

    expected = run_single(config(source, single, errors=single_errors), short_model)
    report = run_on_ray(
        config(source, distributed, errors=ray_errors), short_model, RayOptions(replicas=2)
    )

    same_output(single, distributed)
    assert single_errors.read_bytes() == ray_errors.read_bytes()
    assert (report.rows, report.rows_failed) == (expected.rows, expected.rows_failed) == (120, 4)
    # A replica's rows are the ones it ran: not the 3 invalid ones, which never
    # reach an engine (the over-long one does, and fails there).
    assert report.replicas and sum(r.rows for r in report.replicas) == 117
    assert report.batches > 0


def test_file_uris_read_on_the_cluster_and_write_in_the_driver(tmp_path: Path) -> None:
    """The read task resolves the input URI as the single-process reader does."""
    source = tmp_path / "in.jsonl"
    write_input(source)
    single, distributed = tmp_path / "single.parquet", tmp_path / "ray.parquet"

    def uri_config(out: Path) -> RunConfig:
        return RunConfig(
            input=InputConfig(path=source.as_uri(), chunk_size=16),
            output=OutputConfig(path=out.as_uri()),
            sampling=Sampling(max_tokens=6),
        )

    run_single(uri_config(single), short_model)
    report = run_on_ray(uri_config(distributed), short_model, RayOptions(replicas=2))

    assert single.read_bytes() == distributed.read_bytes()
    assert report.rows == 120
    out = pq.read_table(distributed).to_pylist()
    assert out[5]["error"]["message"].startswith(f"{source.as_uri()}:6: not valid JSON")
    # The replicas name a row the engine refused as the reader names a bad one.
    assert out[90]["error"]["type"] == "prompt_too_long"
    assert out[90]["error"]["message"].startswith(f"{source.as_uri()}:91: ")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_replica_killed_mid_run_loses_and_repeats_nothing(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"in{suffix}"
    write_input(source)
    single, distributed = tmp_path / f"single{suffix}", tmp_path / f"ray{suffix}"
    marker = tmp_path / "replica-died"

    run_single(config(source, single), short_model)
    run_on_ray(config(source, distributed), ExitsOnce(str(marker)), RayOptions(replicas=2))

    assert marker.exists()  # a replica did die mid-run
    same_output(single, distributed)


@pytest.mark.parametrize(
    ("chunk_size", "max_in_flight", "batches"), [(1024, 512, 2), (100, 512, 7), (16, 512, 16)]
)
def test_a_replica_takes_enough_batches_at_once_to_fill_its_engine_window(
    chunk_size: int, max_in_flight: int, batches: int
) -> None:
    cfg = RunConfig(
        input=InputConfig("in.jsonl", chunk_size=chunk_size), max_in_flight=max_in_flight
    )

    assert concurrent_batches(cfg) == batches


def dead_engine() -> Engine:
    return FakeEngine(die_at_step=0)


def test_an_engine_that_keeps_dying_stops_the_run_with_the_single_process_error(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)

    with pytest.raises(EngineFailedError) as single:
        run_single(config(source, tmp_path / "single.jsonl"), dead_engine)
    with pytest.raises(EngineFailedError) as distributed:
        run_on_ray(config(source, tmp_path / "ray.jsonl"), dead_engine, RayOptions(replicas=1))

    assert str(distributed.value) == str(single.value)


def test_resume_on_ray_continues_a_single_process_output(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    single, distributed = tmp_path / "single.jsonl", tmp_path / "ray.jsonl"
    run_single(config(source, single), short_model)
    # An interrupted run: the first 50 rows and a torn 51st.
    lines = single.read_bytes().splitlines(keepends=True)
    distributed.write_bytes(b"".join(lines[:50]) + lines[50][:10])

    report = run_on_ray(
        config(source, distributed, resume=True), short_model, RayOptions(replicas=2)
    )

    assert report.rows == 70
    assert distributed.read_bytes() == single.read_bytes()


def test_cli_ray_run_with_the_fake_engine(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    single, distributed = tmp_path / "single.jsonl", tmp_path / "ray.jsonl"
    common = ["-m", "none", "--engine", "fake", "--chunk-size", "16", "--max-tokens", "6"]
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(source), "-o", str(single), *common])
    second = runner.invoke(
        app, ["run", str(source), "-o", str(distributed), *common, "--ray", "--replicas", "2"]
    )
    assert first.exit_code == second.exit_code == 1  # the invalid rows
    assert single.read_bytes() == distributed.read_bytes()
    assert "replica 1" in second.stderr


def test_cli_ray_run_prints_no_ray_notices_with_quiet(tmp_path: Path) -> None:
    # A process of its own: Ray's start-up notices come from starting Ray, which this
    # module's Ray instance would skip. Cron mails whatever reaches stderr.
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "hello"}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "cli", "run", str(source), "-o", str(tmp_path / "out.jsonl")]
    done = subprocess.run(
        [*command, "-m", "none", "--engine", "fake", "--ray", "-q"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Token authentication" not in done.stderr
    assert " WARNING " not in done.stderr, done.stderr


def test_cli_without_ray_installed_exits_2_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data raises ImportError
    result = CliRunner().invoke(
        app, ["run", str(source), "-m", "none", "--engine", "fake", "--ray"]
    )
    assert result.exit_code == 2
    assert "pip install 'bizra-batch[ray]'" in result.stderr


def test_replicas_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    result = CliRunner().invoke(app, ["run", str(source), "-m", "x", "--replicas", "2"])
    assert result.exit_code == 2
    assert "--replicas needs --ray" in result.stderr


def test_a_bare_ray_option_means_a_local_instance() -> None:
    assert bare_ray_means_local(["in.jsonl", "--ray"]) == ["in.jsonl", "--ray", "local"]
    assert bare_ray_means_local(["--ray", "--replicas", "2"]) == [
        "--ray",
        "local",
        "--replicas",
        "2",
    ]
    assert bare_ray_means_local(["--ray", "in.jsonl"]) == ["--ray", "local", "in.jsonl"]
    assert bare_ray_means_local(["--ray", "auto"]) == ["--ray", "auto"]
    assert bare_ray_means_local(["--ray", "ray://head:10001"]) == ["--ray", "ray://head:10001"]


@pytest.mark.vllm
def test_tiny_vllm_in_two_replicas_equals_the_single_process_run(
    tmp_path: Path, tiny_engine_config: EngineConfig, vllm_engine: Engine
) -> None:
    from batching.engines.vllm import create_vllm_engine

    # Every prompt the same length, so each batch has the same shape whichever
    # replica and batch mates a row gets: greedy output is then batch-invariant.
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "prompt": f"The number {i % 10} is"} for i in range(24)]
    source.write_bytes(b"\n".join(map(orjson.dumps, rows)) + b"\n")
    engine_config = replace(tiny_engine_config, max_num_seqs=4, seed=0)
    cfg = RunConfig(
        input=InputConfig(path=str(source), chunk_size=8),
        output=OutputConfig(path=str(tmp_path / "single.jsonl")),
        sampling=Sampling(max_tokens=8, temperature=0.0),
        max_in_flight=4,
    )

    def factory() -> Engine:
        return create_vllm_engine(engine_config)

    # The single-process run borrows the session's engine: a second engine started
    # and closed in this process would tear down the process group that one uses.
    # At most 4 rows in flight either way, so every batch has the same shape.
    run_single(cfg, lambda: KeptOpen(vllm_engine))
    ray_cfg = replace(cfg, output=OutputConfig(path=str(tmp_path / "ray.jsonl")))
    report = run_on_ray(ray_cfg, factory, RayOptions(replicas=2))

    assert (tmp_path / "single.jsonl").read_bytes() == (tmp_path / "ray.jsonl").read_bytes()
    assert report.rows_ok == 24 and len(report.replicas) >= 1
