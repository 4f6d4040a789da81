"""An embedded Triton's footprint, so that nothing of it outlives its worker.

Triton leaves things behind that its own shutdown does not remove: the Python-backend
stubs (and the multiprocessing helpers they start) survive a Triton server that died —
when the worker is killed with kill -9, for one — and ignore SIGTERM; for every model
loaded through its model-control API Triton copies the model into a `/tmp/folderXXXXXX`
directory, and its Python backend makes a `/tmp/python_env_XXXXXX` directory, neither
of which it deletes, even on a clean stop (both ignore TMPDIR).

So each worker's Triton lives in a directory of its own, `<tmp>/llmos-<id>/`, that the
worker claims with an exclusive `flock` for as long as it lives (the kernel releases it
when the process dies, however it dies). It records there the model folders Triton
made. `end()` kills, each by its id, every process running from the directory (and
what those started), deletes the recorded folders and the directory. A worker ends its
own at stop; at start it ends the directories whose owner died (`sweep`), which is how a
restart after kill -9 leaves nothing behind. (Nothing names the process that made a
`python_env` directory: the one that appeared while this worker's Triton started its
first model is taken to be its own.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llmos import processes

log = logging.getLogger("llmos.triton")

PREFIX = "llmos-"
LOCK = "owner.lock"
FOLDERS = "triton-folders"
STUB = "triton_python_backend_stub"
TRITON_TMP = Path("/tmp")  # where Triton makes its directories, whatever TMPDIR says
PYTHON_ENVS = "python_env_*"


class TritonFootprint:
    """One worker's Triton directory and what Triton started or created from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: int | None = None
        #: Triton's python_env directories before this worker's Triton started
        self._envs_before: set[Path] | None = set(TRITON_TMP.glob(PYTHON_ENVS))

    @classmethod
    def create(cls, instance_id: str, root: Path | None = None) -> TritonFootprint:
        """A new directory for this worker, claimed; the ones of dead workers are ended
        first. (Short names: Triton puts AF_UNIX sockets, of at most 108 bytes, inside.)"""
        root = root or Path(tempfile.gettempdir())
        sweep(root)
        footprint = cls(root / f"{PREFIX}{instance_id.rsplit('-', 1)[-1]}")
        footprint.claim()
        return footprint

    @property
    def workspace(self) -> Path:
        """Where PyTriton puts the server and the model store (it must not exist yet)."""
        return self.directory / "triton"

    def claim(self) -> bool:
        """Hold the directory's lock (False: a live process holds it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
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

    def note_model_folders(self) -> None:
        """Record the temporary model folders Triton made for the stubs running now (and,
        the first time, the python_env directory its Python backend made)."""
        folders = set(self._recorded())
        if self._envs_before is not None:
            folders |= {str(p) for p in set(TRITON_TMP.glob(PYTHON_ENVS)) - self._envs_before}
            self._envs_before = None
        for pid in self._processes():
            argv = processes.cmdline(pid)
            if len(argv) > 1 and argv[0].endswith(STUB):
                model_py = Path(argv[1])  # /tmp/folderXXXXXX/<version>/model.py
                if len(model_py.parts) > 3 and model_py.parents[1].name.startswith("folder"):
                    folders.add(str(model_py.parents[1]))
        (self.directory / FOLDERS).write_text("".join(f"{f}\n" for f in sorted(folders)))

    def _recorded(self) -> list[str]:
        with contextlib.suppress(OSError):
            return (self.directory / FOLDERS).read_text().split()
        return []

    def end(self) -> int:
        """Kill what runs from the directory, delete Triton's folders and the directory;
        how many processes were killed."""
        self.note_model_folders()
        killed = processes.kill_each(self._processes())
        for folder in self._recorded():
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return killed


def sweep(root: Path) -> int:
    """End the Triton directories under `root` whose worker is dead; processes killed."""
    killed = 0
    for directory in sorted(root.glob(f"{PREFIX}*")):
        if not (directory / LOCK).is_file():
            continue
        footprint = TritonFootprint(directory)
        footprint._envs_before = None  # a dead worker's: only what it recorded is its own
        if footprint.claim():  # its owner is gone
            count = footprint.end()
            killed += count
            log.info("ended what a dead worker's Triton left", extra={
                "directory": str(directory), "processes": count})  # fmt: skip
    return killed
