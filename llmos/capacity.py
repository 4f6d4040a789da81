"""What this machine offers to the scheduler: CPU, memory, GPUs (read, never guessed)."""

from __future__ import annotations

import os
from pathlib import Path

from llmos.v1 import common_pb2


def local_capacity() -> common_pb2.Resources:
    """CPU cores usable by this process, total memory, and NVIDIA GPUs present."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    gpus = len(list(Path("/dev").glob("nvidia[0-9]*")))
    return common_pb2.Resources(
        cpu_millicores=(cpus or 1) * 1000, memory_bytes=memory, gpus=gpus, processes=cpus or 1
    )
