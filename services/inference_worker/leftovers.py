"""A worker's Triton footprint, so that nothing of it outlives its worker.

Triton's Python-backend stubs survive a Triton server that died (when it is killed with
kill -9, for one) and ignore SIGTERM. So each worker's Triton runs from a directory of
its own, `<tmp>/llmos-<id>/`, that the worker claims with an exclusive `flock` for as
long as it lives (the kernel releases it when the process dies, however it dies): the
server and its stubs are started from programs in that directory, so they can be found
by the path they run from. `end_processes()` kills, each by its id, every process running
from the directory (and what those started): the worker does so before it restarts a
Triton that died. `end()` also deletes the directory, at stop; at start a worker ends
the directories whose owner died (`sweep`), which is how a restart after kill -9 of the
worker leaves nothing behind.

Only directories of this user are touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from llmos import processes
from llmos.errors import Unavailable

log = logging.getLogger("llmos.triton")

PREFIX = "llmos-"
LOCK = "owner.lock"
STUB = "triton_python_backend_stub"


class TritonFootprint:
    """One worker's Triton directory and what Triton started or created from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: int | None = None

    @classmethod
    def create(cls, instance_id: str, root: Path | None = None) -> TritonFootprint:
        """A new directory for this worker, claimed; the ones of dead workers are ended
        first. (Short names: Triton puts AF_UNIX sockets, of at most 108 bytes, inside.)"""
        root = root or Path(tempfile.gettempdir())
        sweep(root)
        footprint = cls(root / f"{PREFIX}{instance_id.rsplit('-', 1)[-1]}")
        footprint.directory.mkdir(mode=0o700)
        if not footprint.claim():
            raise Unavailable(f"{footprint.directory} is held by another process")
        return footprint

    @property
    def workspace(self) -> Path:
        """Where the server's programs are placed to run from."""
        return self.directory / "triton"

    def claim(self) -> bool:
        """Hold the directory's lock (False: a live process holds it)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(self.directory / LOCK, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    def _processes(self) -> list[int]:
        """Processes running a program from this directory, then what they started."""
        prefix = str(self.directory) + os.sep
        roots = [
            pid
            for pid in processes.pids()
            if (argv := processes.cmdline(pid)) and argv[0].startswith(prefix)
        ]
        return [*roots, *(child for pid in roots for child in processes.descendants(pid))]

    def end_processes(self) -> int:
        """Kill every process running from the directory; how many were killed."""
        return processes.kill_each(self._processes())

    def end(self) -> int:
        """Kill what runs from the directory and delete it; how many processes were killed."""
        killed = self.end_processes()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return killed


def sweep(root: Path) -> int:
    """End the Triton directories under `root` whose worker (of this user) is dead;
    processes killed."""
    killed = 0
    for directory in sorted(root.glob(f"{PREFIX}*")):
        try:
            info = directory.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue  # not one a worker of this user made
        if not (directory / LOCK).is_file():
            continue
        footprint = TritonFootprint(directory)
        if footprint.claim():  # its owner is gone
            count = footprint.end()
            killed += count
            log.info("ended what a dead worker's Triton left", extra={
                "directory": str(directory), "processes": count})  # fmt: skip
    return killed
