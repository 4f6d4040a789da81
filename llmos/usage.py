"""Sampling what this process uses, for the heartbeats the scheduler reads."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from llmos.v1 import common_pb2

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class UsageSampler:
    """CPU used since the previous sample (millicores) and resident memory now."""

    def __init__(self) -> None:
        self._cpu = self._cpu_seconds()
        self._at = time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def sample(self) -> common_pb2.Resources:
        cpu, at = self._cpu_seconds(), time.monotonic()
        millicores = int(1000 * (cpu - self._cpu) / max(at - self._at, 1e-6))
        self._cpu, self._at = cpu, at
        return common_pb2.Resources(
            cpu_millicores=max(millicores, 0),
            memory_bytes=_resident_bytes(),
            gpu_memory_bytes=_gpu_memory_bytes(),
        )


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def peak_resident_mb(pid: int) -> float:
    """The most memory process `pid` has held resident (VmHWM), in MiB; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return 0.0


def _gpu_memory_bytes() -> int:
    """GPU memory held by this process's torch, if torch is loaded and sees a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0
    return sum(int(torch.cuda.memory_reserved(i)) for i in range(torch.cuda.device_count()))
