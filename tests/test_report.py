"""Tests for batching.report: the collector's arithmetic, the histogram's error
bound, the JSON form, the atomic write and the rendered table."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from batching.figures import figure_docs
from batching.gpu_monitor import GpuUsage
from batching.quantiles import LatencyHistogram
from batching.records import ERROR_ENGINE, ERROR_INVALID_INPUT, Result, RowError
from batching.report import ReplicaThroughput, Report, ReportCollector
from batching.report_output import format_duration, render_report, write_report
from tests.clocks import FakeClock

# The latency histogram's buckets are 1% wide (see tests/test_quantiles.py).
BUCKET_WIDTH = LatencyHistogram.RATIO - 1.0

REQUIRED_KEYS = {
    "rows",
    "rows_ok",
    "rows_failed",
    "wall_seconds",
    "engine_startup_seconds",
    "engine_shutdown_seconds",
    "processing_seconds",
    "requests_per_second",
    "input_tokens_per_second",
    "output_tokens_per_second",
    "input_tokens",
    "output_tokens",
    "batches",
    "avg_batch_size",
    "avg_batch_duration_ms",
    "padding_tokens_avoided",
    "latency_p50_ms",
    "latency_p95_ms",
    "retries",
    "engine_restarts",
    "oom_backoffs",
    "errors_by_type",
    "engine_wait_seconds",
    "engine_wait_share",
    "between_steps_share",
    "chunks_by_order",
    "rows_resumed",
    "interrupted",
}


def ok(index: int, prompt: int, completion: int, latency: float | None = None) -> Result:
    return Result(
        index=index,
        id=index,
        output="x",
        finish_reason="stop",
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_s=latency,
    )


def failed(index: int, kind: str) -> Result:
    return Result(index=index, id=index, error=RowError(type=kind, message="boom"))


def sample_report() -> Report:
    clock = FakeClock(100.0)
    c = ReportCollector(clock=clock)
    c.start()
    c.engine_started(10.0)
    for size, duration in ((4, 0.5), (8, 1.0), (6, 1.5)):
        c.record_step(size, duration)
    c.record_result(ok(0, prompt=100, completion=50, latency=1.0))
    c.record_result(ok(1, prompt=200, completion=150, latency=2.0))
    c.record_result(ok(2, prompt=300, completion=300, latency=3.0))
    c.record_result(failed(3, ERROR_INVALID_INPUT))
    c.record_result(failed(4, ERROR_ENGINE))
    c.record_result(failed(5, ERROR_ENGINE))
    c.add_padding_avoided(120)
    c.add_padding_avoided(30)
    c.record_retry()
    c.record_retry()
    c.record_engine_restart()
    c.record_oom_backoff(128)
    c.record_oom_backoff(64)
    c.record_engine_wait(1.5)
    c.record_engine_wait(1.5)
    clock.now = 160.0
    return c.finish()


def test_collector_figures_from_a_known_run() -> None:
    r = sample_report()
    assert (r.rows, r.rows_ok, r.rows_failed) == (6, 3, 3)
    assert r.wall_seconds == 60.0
    assert r.engine_startup_seconds == 10.0
    assert r.processing_seconds == 50.0
    assert r.requests_per_second == pytest.approx(6 / 50)
    assert (r.input_tokens, r.output_tokens) == (600, 500)
    assert r.input_tokens_per_second == pytest.approx(12.0)
    assert r.output_tokens_per_second == pytest.approx(10.0)
    assert r.batches == 3
    assert r.avg_batch_size == pytest.approx(6.0)
    assert r.avg_batch_duration_ms == pytest.approx(1000.0)
    assert r.padding_tokens_avoided == 150
    assert r.latency_p50_ms == pytest.approx(2000.0, rel=BUCKET_WIDTH)
    assert r.latency_p95_ms == pytest.approx(3000.0, rel=BUCKET_WIDTH)
    assert (r.retries, r.engine_restarts, r.oom_backoffs, r.oom_window) == (2, 1, 2, 64)
    assert dict(r.errors_by_type) == {ERROR_ENGINE: 2, ERROR_INVALID_INPUT: 1}
    assert list(r.errors_by_type) == [ERROR_ENGINE, ERROR_INVALID_INPUT]  # most first
    assert r.engine_wait_seconds == 3.0
    assert r.engine_wait_share == pytest.approx(0.05)


def test_engine_restarts_add_to_startup_time() -> None:
    clock = FakeClock()
    c = ReportCollector(clock=clock)
    c.start()
    c.engine_started(4.0)
    c.engine_started(6.0)
    clock.now = 20.0
    c.record_result(ok(0, 1, 10))
    assert c.finish().processing_seconds == 10.0
    assert c.finish().output_tokens_per_second == 1.0


def test_engine_shutdown_is_not_processing_time() -> None:
    clock = FakeClock()
    c = ReportCollector(clock=clock)
    c.start()
    c.engine_started(4.0)
    c.record_result(ok(0, 1, 10))
    c.engine_stopped(6.0)
    clock.now = 20.0
    r = c.finish()
    assert (r.engine_shutdown_seconds, r.processing_seconds) == (6.0, 10.0)
    assert r.output_tokens_per_second == 1.0
    assert r.to_dict()["engine_shutdown_seconds"] == 6.0
    out = io.StringIO()
    render_report(r, Console(file=out, width=120, color_system=None))
    assert "(engine start-up 4.0s, shut-down 6.0s)" in out.getvalue()


def test_absent_figures_are_none_not_zero() -> None:
    clock = FakeClock(5.0)
    c = ReportCollector(clock=clock)
    c.start()
    c.record_result(ok(0, 10, 10, latency=None))
    r = c.finish()  # no time passed, no steps, no timings, no engine start reported
    assert r.engine_startup_seconds is None
    assert r.requests_per_second is None
    assert r.output_tokens_per_second is None
    assert r.avg_batch_size is None
    assert r.avg_batch_duration_ms is None
    assert r.latency_p50_ms is None and r.latency_p95_ms is None
    assert r.engine_wait_share is None
    assert r.oom_window is None
    d = r.to_dict()
    for key in (
        "engine_startup_seconds",
        "requests_per_second",
        "avg_batch_size",
        "latency_p50_ms",
        "latency_p95_ms",
        "engine_wait_share",
    ):
        assert d[key] is None, key
    assert '"latency_p50_ms": null' in json.dumps(d)


def test_finish_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        ReportCollector(clock=FakeClock()).finish()


def test_to_dict_has_every_key_and_is_json() -> None:
    d = sample_report().to_dict()
    assert d.keys() >= REQUIRED_KEYS
    assert json.loads(json.dumps(d)) == d
    assert d["errors_by_type"] == {ERROR_ENGINE: 2, ERROR_INVALID_INPUT: 1}
    assert d["requests_per_second"] == 0.12


def test_write_report_writes_json_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    write_report(sample_report(), str(target))
    assert json.loads(target.read_text()) == sample_report().to_dict()
    assert target.read_text().startswith('{\n  "rows": 6,')
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_report_failure_keeps_the_old_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"rows": 1}')

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_report(sample_report(), target)
    assert target.read_text() == '{"rows": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_report_uses_the_umask_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_report(Report(), tmp_path / "r.json")
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def render(report: Report) -> str:
    out = io.StringIO()
    render_report(report, Console(file=out, width=120, color_system=None))
    return out.getvalue()


def test_render_mentions_rows_throughput_and_problems() -> None:
    text = render(sample_report())
    assert "3 ok, 3 failed" in text
    assert "throughput" in text
    assert "0.1 req/s" in text and "12 in tok/s" in text and "10 out tok/s" in text
    assert "p50 2.00 s" in text or "p50 1.99 s" in text or "p50 2.01 s" in text
    assert "150 tokens" in text
    assert "retries" in text and "engine restarts" in text and "OOM back-offs" in text
    assert "engine_error 2, invalid_input 1" in text


def test_render_leaves_out_zero_problems_and_shows_missing_figures() -> None:
    text = render(Report(rows=2, rows_ok=2, wall_seconds=0.0))
    assert "2 ok, 0 failed" in text
    assert "retries" not in text and "errors" not in text and "restarts" not in text
    assert "n/a req/s" in text
    assert "p50 n/a" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (9.94, "9.9s"), (59.4, "59s"), (61, "1m 01s"), (3600, "1h 00m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_engine_wait_is_shown_as_a_share_of_wall_time() -> None:
    report = Report(
        rows=10,
        rows_ok=10,
        wall_seconds=10.0,
        engine_startup_seconds=2.0,
        batches=4,
        batch_requests=10,
        batch_seconds=6.0,
        engine_wait_seconds=0.1,
        chunks_by_order={"prefix": 3, "length": 1},
    )
    assert report.engine_wait_share == pytest.approx(0.01)
    assert report.between_steps_share == pytest.approx(0.25)  # 2 of 8 processing seconds
    out = io.StringIO()
    render_report(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "engine waited on us" in text
    assert "1.0% of wall time" in text
    assert "25.0% of processing time outside engine steps" in text
    assert "prefix 3, length 1" in text


def test_chunk_orders_are_counted() -> None:
    c = ReportCollector(clock=FakeClock(), gpu_sampler=lambda: None)
    c.start()
    for order in ("prefix", "length", "prefix"):
        c.record_chunk_order(order)
    assert c.finish().to_dict()["chunks_by_order"] == {"prefix": 2, "length": 1}


RATES = ("requests_per_second", "input_tokens_per_second", "output_tokens_per_second")


def no_rows_report() -> Report:
    """An empty input: the engine started and stopped, time passed, no row ran."""
    clock = FakeClock(10.0)
    c = ReportCollector(clock=clock, gpu_sampler=lambda: None)
    c.start()
    c.engine_started(1.0)
    c.engine_stopped(0.5)
    clock.now = 14.0
    return c.finish()


def test_no_rows_means_no_rates_not_zero_rates() -> None:
    r = no_rows_report()
    assert r.processing_seconds == 2.5  # time was measured, rows were not
    d = r.to_dict()
    for key in (*RATES, "engine_wait_share", "between_steps_share"):
        assert d[key] is None, key
    text = render(r)
    assert "0.0 req/s" not in text and "0.0 in tok/s" not in text
    assert "n/a req/s · n/a in tok/s · n/a out tok/s" in text


def test_engine_wait_share_needs_an_engine_step() -> None:
    idle = Report(rows=2, rows_ok=2, wall_seconds=5.0)
    assert idle.engine_wait_share is None
    stepped = Report(rows=2, rows_ok=2, wall_seconds=5.0, batches=1, batch_requests=2)
    assert stepped.engine_wait_share == 0.0  # it ran and never waited: a measured 0


def test_failed_rows_still_have_a_rate() -> None:
    # Rows ran and produced no tokens: 0 tok/s is what happened, not a missing figure.
    r = Report(rows=4, rows_failed=4, wall_seconds=2.0)
    assert (r.requests_per_second, r.output_tokens_per_second) == (2.0, 0.0)


def test_replica_without_rows_has_no_rates() -> None:
    replica = ReplicaThroughput("node-1:7", rows=0, busy_seconds=3.0)
    assert (replica.requests_per_second, replica.output_tokens_per_second) == (None, None)
    d = replica.to_dict()
    assert d["requests_per_second"] is None and d["output_tokens_per_second"] is None


def test_resumed_rows_are_reported_apart_from_this_runs_rows() -> None:
    clock = FakeClock()
    c = ReportCollector(clock=clock, gpu_sampler=lambda: None)
    c.start()
    c.record_resumed_rows(75)
    for i in range(75, 100):
        c.record_result(ok(i, prompt=2, completion=4))
    clock.now = 5.0
    r = c.finish()
    assert (r.rows, r.rows_resumed) == (25, 75)
    assert r.requests_per_second == 5.0  # this run's rows over this run's time
    d = r.to_dict()
    assert (d["rows"], d["rows_resumed"]) == (25, 75)
    assert "25 ok, 0 failed · 75 kept from the earlier run" in render(r)


def test_resume_of_a_finished_output_says_so_and_claims_no_rate() -> None:
    clock = FakeClock()
    c = ReportCollector(clock=clock, gpu_sampler=lambda: None)
    c.start()
    c.record_resumed_rows(100)
    clock.now = 0.2
    r = c.finish()
    assert r.to_dict()["requests_per_second"] is None
    text = render(r)
    assert "0 ok, 0 failed · 100 kept from the earlier run" in text
    assert "0.0 req/s" not in text


def test_a_fresh_run_reports_no_resumed_rows() -> None:
    d = sample_report().to_dict()
    assert d["rows_resumed"] == 0
    assert "earlier run" not in render(sample_report())


def test_resumed_rows_may_be_recorded_before_the_clock_starts() -> None:
    # job.run knows the count before the runner calls start(); start must keep it.
    c = ReportCollector(clock=FakeClock(), gpu_sampler=lambda: None)
    c.record_resumed_rows(40)
    c.start()
    assert c.finish().rows_resumed == 40


def test_resumed_rows_must_not_be_negative() -> None:
    c = ReportCollector(clock=FakeClock(), gpu_sampler=lambda: None)
    with pytest.raises(ValueError, match="-1"):
        c.record_resumed_rows(-1)


def test_an_interrupted_run_is_marked_partial() -> None:
    clock = FakeClock()
    c = ReportCollector(clock=clock, gpu_sampler=lambda: None)
    c.start()
    c.record_result(ok(0, prompt=2, completion=4))
    c.record_interrupt("SIGINT")
    clock.now = 1.0
    r = c.finish()
    assert r.interrupted == "SIGINT"
    assert json.loads(json.dumps(r.to_dict()))["interrupted"] == "SIGINT"
    text = render(r)
    assert "interrupted" in text and "SIGINT: a partial run" in text
    assert text.index("interrupted") < text.index("1 ok")  # read before the figures


def test_a_run_that_ended_on_its_own_is_not_marked_interrupted() -> None:
    r = sample_report()
    assert r.interrupted is None
    assert '"interrupted": null' in json.dumps(r.to_dict())
    assert "interrupted" not in render(r)


def test_new_keys_come_after_the_keys_readers_already_know() -> None:
    keys = list(sample_report().to_dict())
    assert keys.index("chunks_by_order") < keys.index("rows_resumed") < keys.index("interrupted")
    assert keys[:3] == ["rows", "rows_ok", "rows_failed"]


# The JSON keys in the order readers rely on: a new key goes last, never between.
KEY_ORDER = [
    "rows", "rows_ok", "rows_failed", "wall_seconds", "engine_startup_seconds",
    "engine_shutdown_seconds", "processing_seconds", "requests_per_second",
    "input_tokens_per_second", "output_tokens_per_second", "input_tokens", "output_tokens",
    "batches", "avg_batch_size", "avg_batch_duration_ms", "padding_tokens_avoided",
    "latency_p50_ms", "latency_p95_ms", "retries", "engine_restarts", "oom_backoffs",
    "oom_window", "errors_by_type", "engine_wait_seconds", "engine_wait_share",
    "between_steps_share", "chunks_by_order", "rows_resumed", "interrupted",
    "engine_occupancy", "engine_capacity", "reorder_peak_bytes", "reorder_peak_rows",
    "reading_paused_seconds",
]  # fmt: skip
GPU_KEYS = [
    "gpu_devices", "gpu_samples", "gpu_utilization_avg_pct", "gpu_utilization_max_pct",
    "gpu_memory_peak_mib", "gpu_memory_total_mib",
]  # fmt: skip
# Held for the figures derived from them, with no key of their own.
NOT_KEYS = {"batch_requests", "batch_seconds", "sequence_seconds", "gpu"}
GPU = GpuUsage(2, 5, 41.25, 97.5, 1234.56, 81920.0)


def test_every_report_field_is_a_key_of_to_dict_in_the_known_order() -> None:
    assert list(Report().to_dict()) == KEY_ORDER  # no GPU, no replicas: those keys absent
    full = Report(
        gpu=GPU,
        replicas=(ReplicaThroughput("node-1:7", rows=2, busy_seconds=1.0),),
        manifest={"engine": "fake"},
    )
    assert list(full.to_dict()) == [*KEY_ORDER, *GPU_KEYS, "replicas", "manifest"]
    declared = [f.name for f in dataclasses.fields(Report)]
    assert [name for name in declared if name not in NOT_KEYS] == list(full.to_dict())
    assert list(figure_docs(Report)) == list(full.to_dict())
    assert all(figure_docs(Report).values())


def test_the_gpu_keys_round_as_before() -> None:
    d = Report(gpu=GPU).to_dict()
    assert [d[key] for key in GPU_KEYS] == [2, 5, 41.2, 97.5, 1234.6, 81920.0]


def test_the_docstring_lists_every_key() -> None:
    doc = Report.__doc__ or ""
    for name, meaning in figure_docs(Report).items():
        assert f"- {name}: {meaning}." in doc


def test_readme_lists_every_report_key() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Progress and report", 1)[1].split("\n### ", 1)[0]
    missing = [name for name in figure_docs(Report) if f"`{name}`" not in section]
    assert missing == []


def test_a_replicas_report_adds_every_engine_figure() -> None:
    part = Report(
        batches=3,
        batch_requests=7,
        batch_seconds=0.5,
        padding_tokens_avoided=4,
        retries=1,
        engine_restarts=1,
        oom_backoffs=1,
        oom_window=5,
        engine_wait_seconds=0.25,
        sequence_seconds=1.5,
        reorder_peak_bytes=100,
        reorder_peak_rows=3,
        reading_paused_seconds=1.25,
        rows=9,  # counted as written, not from the part
        input_tokens=9,
    )
    c = ReportCollector(clock=FakeClock(), gpu_sampler=lambda: None)
    c.start()
    c.add_engine_work(part)
    c.add_engine_work(part)
    r = c.finish()
    assert (r.batches, r.batch_requests, r.batch_seconds) == (6, 14, 1.0)
    assert (r.padding_tokens_avoided, r.retries, r.engine_restarts, r.oom_backoffs) == (8, 2, 2, 2)
    assert (r.oom_window, r.engine_wait_seconds, r.sequence_seconds) == (5, 0.5, 3.0)
    assert (r.reorder_peak_bytes, r.reorder_peak_rows, r.reading_paused_seconds) == (100, 3, 2.5)
    assert (r.rows, r.input_tokens) == (0, 0)
