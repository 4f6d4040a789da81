"""The machine a service runs on, read at each scrape: node CPU and memory (psutil) and,
where NVML finds GPUs, their use and memory — only the GPUs `CUDA_VISIBLE_DEVICES`
gives this process, labelled as the process numbers them (cuda:0 is gpu="0").

Collected on prometheus_client's own thread at scrape time, never on the service's loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("llmos.metrics")


def visible_gpus(count: int, visible: str | None) -> list[tuple[str, int | str]]:
    """(label, NVML handle key) of each GPU this process may use: all `count` when
    `visible` is unset, else those it names, by index or by UUID, in its order (an
    invalid entry ends the list, as CUDA reads it)."""
    if visible is None:
        return [(str(index), index) for index in range(count)]
    chosen: list[tuple[str, int | str]] = []
    for position, entry in enumerate(part.strip() for part in visible.split(",")):
        if entry.isdigit() and int(entry) < count:
            chosen.append((str(position), int(entry)))
        elif entry.startswith(("GPU-", "MIG-")):
            chosen.append((str(position), entry))
        else:
            break
    return chosen


class NodeCollector(Collector):
    """llmos_node_* from psutil; llmos_gpu_* from NVML when the driver is there."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call starts the interval
        self._nvml: Any = _nvml()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "llmos_node_cpu_usage_ratio",
            "CPU in use on this node since the previous scrape, 0 to 1.",
            value=psutil.cpu_percent(interval=None) / 100,
        )
        memory = psutil.virtual_memory()
        yield GaugeMetricFamily(
            "llmos_node_memory_used_bytes",
            "Memory in use on this node (total less available).",
            value=memory.total - memory.available,
        )
        yield GaugeMetricFamily(
            "llmos_node_memory_total_bytes", "Memory of this node.", value=memory.total
        )
        if self._nvml is not None:
            yield from self._gpus()

    def _gpus(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._nvml
        use = GaugeMetricFamily(
            "llmos_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU, 0 to 1.",
            labels=["gpu"],
        )
        used = GaugeMetricFamily(
            "llmos_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
        )
        total = GaugeMetricFamily("llmos_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.warning("NVML read failed", extra={"error": str(exc)})
            count = 0
        for label, key in visible_gpus(count, os.environ.get("CUDA_VISIBLE_DEVICES")):
            # each read on its own: a MIG slice has memory but no utilisation to report
            try:
                handle = (
                    nvml.nvmlDeviceGetHandleByIndex(key)
                    if isinstance(key, int)
                    else nvml.nvmlDeviceGetHandleByUUID(key)
                )
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as exc:
                log.warning("NVML read failed", extra={"gpu": label, "error": str(exc)})
                continue
            used.add_metric([label], memory.used)
            total.add_metric([label], memory.total)
            with contextlib.suppress(nvml.NVMLError):
                use.add_metric([label], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        yield from (use, used, total)

    def close(self) -> None:
        """Let go of NVML (when the metrics server stops)."""
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def _nvml() -> Any:
    """The NVML bindings, initialised; None where there is no driver (most CPU nodes)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: no GPU metrics
        return None
    return pynvml
