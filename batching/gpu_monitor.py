"""GPU utilisation and memory, sampled in a thread while the engine runs.

NVML (`nvidia-ml-py`, the `gpu` extra) is imported only when a run starts an engine,
and only if it is installed; on a machine without an NVIDIA driver `nvmlInit` fails
and there is no sampler, so the report has no GPU fields at all (absent, not 0).

The sampler reads every visible device each `interval_s`. Utilisation is NVML's
"percent of time a kernel ran" over its own last sample period, averaged over the
devices and the samples; memory is the devices' used memory summed, and its peak.
A failure to read NVML mid-run stops sampling; it never fails the run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["GpuSampler", "GpuUsage", "open_gpu_sampler"]

# Half a second: NVML's utilisation counter itself averages over 1/6 s to 1 s
# depending on the device, so sampling faster only repeats readings; slower misses
# short runs. A sample costs microseconds per device.
DEFAULT_INTERVAL_S = 0.5

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuUsage:
    """What the GPUs did while the engine ran.

    >>> usage = GpuUsage(devices=1, samples=2, utilization_avg_pct=50.0,
    ...                  utilization_max_pct=80.0, memory_peak_mib=100.0, memory_total_mib=200.0)
    >>> usage.memory_peak_mib / usage.memory_total_mib
    0.5
    """

    devices: int
    samples: int
    utilization_avg_pct: float
    utilization_max_pct: float
    memory_peak_mib: float
    memory_total_mib: float


class GpuSampler:
    """Samples `handles` through `nvml` (the `pynvml` module, or a fake of its API).

    `start()` takes the first sample at once, then one per `interval_s` in a daemon
    thread; `stop()` ends the thread and returns the usage (None with no sample).

    Needs an NVIDIA GPU and `nvidia-ml-py` (tests/test_gpu_monitor.py uses a fake NVML):

    >>> sampler = GpuSampler(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(0)])  # doctest: +SKIP
    >>> sampler.start(); ...; usage = sampler.stop()  # doctest: +SKIP
    """

    def __init__(self, nvml: Any, handles: list[Any], interval_s: float = DEFAULT_INTERVAL_S):
        self._nvml = nvml
        self._handles = handles
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._samples = 0
        self._utilization_sum = 0.0
        self._utilization_max = 0.0
        self._memory_peak = 0
        self._memory_total = 0
        self._failed = False

    def sample(self) -> bool:
        """Read every device once; False (and no more sampling) if NVML fails."""
        if self._failed:
            return False
        try:
            utilization = [
                float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles
            ]
            memory = [self._nvml.nvmlDeviceGetMemoryInfo(h) for h in self._handles]
        except Exception:
            # A driver hiccup or a device gone: stop sampling rather than fail the run.
            self._failed = True
            return False
        average = sum(utilization) / len(utilization)
        with self._lock:
            self._samples += 1
            self._utilization_sum += average
            self._utilization_max = max(self._utilization_max, max(utilization))
            self._memory_peak = max(self._memory_peak, sum(int(m.used) for m in memory))
            self._memory_total = sum(int(m.total) for m in memory)
        return True

    def usage(self) -> GpuUsage | None:
        """The figures so far; None before the first successful sample."""
        with self._lock:
            if self._samples == 0:
                return None
            return GpuUsage(
                devices=len(self._handles),
                samples=self._samples,
                utilization_avg_pct=self._utilization_sum / self._samples,
                utilization_max_pct=self._utilization_max,
                memory_peak_mib=self._memory_peak / _MIB,
                memory_total_mib=self._memory_total / _MIB,
            )

    def start(self) -> None:
        if self._thread is not None:
            return
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="bizra-gpu-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            if not self.sample():
                return

    def stop(self) -> GpuUsage | None:
        """Stop sampling, release NVML, and return the usage; safe to call twice."""
        if not self._stop.is_set():
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        return self.usage()


def _visible_handles(nvml: Any, visible: str | None) -> list[Any]:
    """Handles of the devices this process may use, as CUDA_VISIBLE_DEVICES says.

    NVML numbers every device on the machine; on a shared box only the ones CUDA
    shows this process are ours. Indices and GPU-/MIG- UUIDs are understood; unset,
    every device counts.
    """
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        if entry.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
        else:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
    return handles


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py, the `gpu` extra

    return pynvml


def open_gpu_sampler(
    import_nvml: Callable[[], Any] = _import_nvml,
    environ: Any = os.environ,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> GpuSampler | None:
    """A sampler over this process's GPUs, or None where there is no GPU to sample.

    None when nvidia-ml-py is not installed, NVML cannot start (no driver: a CPU
    machine), or no device is visible (CUDA_VISIBLE_DEVICES="").

    >>> open_gpu_sampler() is None  # on a CPU machine
    True
    """
    try:
        nvml = import_nvml()
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        handles = _visible_handles(nvml, environ.get("CUDA_VISIBLE_DEVICES"))
    except Exception:
        handles = []
    if not handles:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        return None
    return GpuSampler(nvml, handles, interval_s)
