"""GPU sampling against a hand-written NVML: aggregation, device choice, failures,
and the report's GPU fields (present with a GPU, absent without)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from batching.gpu_monitor import GpuSampler, open_gpu_sampler
from batching.records import Result
from batching.report import ReportCollector

MIB = 1024 * 1024
GPU_KEYS = {
    "gpu_devices",
    "gpu_samples",
    "gpu_utilization_avg_pct",
    "gpu_utilization_max_pct",
    "gpu_memory_peak_mib",
    "gpu_memory_total_mib",
}


class NVMLError(Exception):
    """What pynvml raises."""


@dataclass
class Utilization:
    gpu: int


@dataclass
class Memory:
    used: int
    total: int


@dataclass
class FakeNvml:
    """The slice of pynvml the sampler uses. Each device plays back its readings
    (utilisation %, used MiB), repeating the last one; `fail_after` readings in all,
    the next raises NVMLError as a lost device would."""

    readings: dict[str, list[tuple[int, int]]]
    total_mib: int = 1000
    init_error: bool = False
    fail_after: int | None = None
    shut_down: int = 0
    reads: int = 0
    _position: dict[str, int] = field(default_factory=dict)

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shut_down += 1

    def nvmlDeviceGetCount(self) -> int:
        return sum(name.isdigit() for name in self.readings)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if str(index) not in self.readings:
            raise NVMLError(f"no device {index}")
        return str(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.readings:
            raise NVMLError(f"no device {uuid}")
        return uuid

    def _reading(self, handle: str) -> tuple[int, int]:
        series = self.readings[handle]
        return series[min(self._position.get(handle, 0), len(series) - 1)]

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Utilization:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise NVMLError("GPU is lost")
        return Utilization(self._reading(handle)[0])

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Memory:
        used = self._reading(handle)[1]
        self._position[handle] = self._position.get(handle, 0) + 1
        return Memory(used * MIB, self.total_mib * MIB)


def test_sampler_averages_utilisation_and_keeps_peak_memory_over_devices() -> None:
    nvml = FakeNvml({"0": [(100, 300), (50, 500)], "1": [(0, 100), (30, 200)]})
    sampler = GpuSampler(nvml, ["0", "1"])
    assert sampler.usage() is None
    assert sampler.sample() and sampler.sample()
    usage = sampler.usage()
    assert usage is not None
    assert usage.samples == 2
    assert usage.devices == 2
    assert usage.utilization_avg_pct == pytest.approx((50 + 40) / 2)  # device mean per sample
    assert usage.utilization_max_pct == 100
    assert usage.memory_peak_mib == 700  # devices summed: 300+100, then 500+200
    assert usage.memory_total_mib == 2000


def test_an_nvml_failure_stops_sampling_and_keeps_what_was_sampled() -> None:
    nvml = FakeNvml({"0": [(80, 100)]}, fail_after=1)
    sampler = GpuSampler(nvml, ["0"])
    assert sampler.sample()
    assert not sampler.sample()
    assert not sampler.sample()
    assert nvml.reads == 2  # no retry once it failed
    usage = sampler.usage()
    assert usage is not None and usage.samples == 1 and usage.utilization_avg_pct == 80


def test_start_samples_at_once_and_stop_releases_nvml_once() -> None:
    nvml = FakeNvml({"0": [(60, 100)]})
    # An interval no test waits for: only the sample start() takes is certain.
    sampler = GpuSampler(nvml, ["0"], interval_s=3600)
    sampler.start()
    usage = sampler.stop()
    assert usage is not None and usage.samples == 1
    assert sampler.stop() == usage
    assert nvml.shut_down == 1


def test_open_gpu_sampler_is_none_without_nvml_a_driver_or_a_visible_device() -> None:
    def missing() -> object:
        raise ImportError("No module named 'pynvml'")

    assert open_gpu_sampler(import_nvml=missing, environ={}) is None
    no_driver = FakeNvml({"0": [(1, 1)]}, init_error=True)
    assert open_gpu_sampler(import_nvml=lambda: no_driver, environ={}) is None
    hidden = FakeNvml({"0": [(1, 1)]})
    assert open_gpu_sampler(lambda: hidden, environ={"CUDA_VISIBLE_DEVICES": ""}) is None
    assert hidden.shut_down == 1


def test_open_gpu_sampler_follows_cuda_visible_devices() -> None:
    nvml = FakeNvml({"0": [(10, 100)], "1": [(90, 900)], "GPU-abc": [(50, 500)]})
    everything = open_gpu_sampler(lambda: nvml, environ={})
    assert everything is not None and everything.sample()
    assert everything.usage().devices == 2  # type: ignore[union-attr]  # indices only
    second = open_gpu_sampler(lambda: nvml, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert second is not None and second.sample()
    assert second.usage().memory_peak_mib == 900  # type: ignore[union-attr]
    by_uuid = open_gpu_sampler(lambda: nvml, environ={"CUDA_VISIBLE_DEVICES": "GPU-abc"})
    assert by_uuid is not None and by_uuid.sample()
    assert by_uuid.usage().utilization_avg_pct == 50  # type: ignore[union-attr]
    assert open_gpu_sampler(lambda: nvml, environ={"CUDA_VISIBLE_DEVICES": "7"}) is None


def _run_report(sampler_factory: object) -> dict[str, object]:
    collector = ReportCollector(gpu_sampler=sampler_factory)  # type: ignore[arg-type]
    collector.start()
    collector.engine_started(0.5)
    collector.record_result(Result(index=0, id="a", output="x", completion_tokens=1))
    return collector.finish().to_dict()


def test_report_has_gpu_fields_only_when_a_gpu_was_sampled() -> None:
    nvml = FakeNvml({"0": [(75, 4096)]}, total_mib=8192)
    with_gpu = _run_report(lambda: GpuSampler(nvml, ["0"], interval_s=3600))
    assert with_gpu.keys() >= GPU_KEYS
    assert with_gpu["gpu_utilization_avg_pct"] == 75.0
    assert with_gpu["gpu_memory_peak_mib"] == 4096.0
    assert with_gpu["gpu_memory_total_mib"] == 8192.0
    assert nvml.shut_down == 1  # finish() ended the sampling

    without = _run_report(lambda: None)
    assert not (without.keys() & GPU_KEYS)
