"""Processes by their ids, read from /proc: who descends from whom, what each runs, and
ending them for good.

Why this exists: Triton's Python-backend stubs (and the multiprocessing helpers they
start) outlive a Triton server that died, ignore SIGTERM, and keep the process group of
the service that started them. Whoever stops or restarts a service ends what it left,
each process by its id, with SIGKILL. Linux only; elsewhere the functions find nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1],
    pgid [2], session [3])."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def pids() -> list[int]:
    """Every process id visible now."""
    if not PROC.is_dir():
        return []
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has exited)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """The process's arguments ([] if it is gone or a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children, theirs, ...), parents first."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(pid)
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def in_group(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    return [
        pid
        for pid in pids()
        if (stat := _stat(pid)) is not None and stat[0] != "Z" and int(stat[2]) == pgid
    ]


def kill_each(targets: Iterable[int]) -> int:
    """SIGKILL each process by its id (gone ones are skipped); how many were signalled."""
    killed = 0
    for pid in targets:
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def kill_group(pgid: int) -> int:
    """End whatever is left in a process group (a stopped service's leftovers), each by
    its id, and the processes those started; how many were signalled."""
    members = in_group(pgid)
    return kill_each([*members, *(d for pid in members for d in descendants(pid))])
