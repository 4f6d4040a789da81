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
restart after kill -9 leaves nothing behind. Nothing names the process that made a
`python_env` directory (Triton's Python backend makes it as it serves its first model),
so workers on one machine load their first model one at a time (an exclusive lock on the
temporary directory) and the one that appeared meanwhile is that worker's.

Only directories of this user are touched, and only Triton's own folders directly in the
temporary directory are deleted: a directory planted there cannot steer the sweep.
"""

from __future__ import annotations

import contextlib
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
FOLDERS = "triton-folders"
STUB = "triton_python_backend_stub"
TRITON_TMP = Path("/tmp")  # where Triton makes its directories, whatever TMPDIR says
PYTHON_ENVS = "python_env_*"


class TritonFootprint:
    """One worker's Triton directory and what Triton started or created from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: int | None = None
        self._starting: int | None = None  # the machine-wide start lock, while held
        self._envs_before: set[Path] = set()

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
        """Where PyTriton puts the server and the model store (it must not exist yet)."""
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

    def starting(self) -> None:
        """Triton is about to serve its first model: wait for any other worker doing so
        on this machine, and note Triton's python_env directories as they are."""
        self._starting = os.open(TRITON_TMP, os.O_RDONLY)
        fcntl.flock(self._starting, fcntl.LOCK_EX)
        self._envs_before = set(TRITON_TMP.glob(PYTHON_ENVS))

    def started(self) -> None:
        """Triton serves its first model: the python_env directory that appeared
        meanwhile is its own; other workers may go on."""
        if self._starting is None:
            return
        self._record({str(p) for p in set(TRITON_TMP.glob(PYTHON_ENVS)) - self._envs_before})
        os.close(self._starting)  # releases the lock
        self._starting = None

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
        """Record the temporary model folders Triton made for the stubs running now."""
        found = set()
        for pid in self._processes():
            argv = processes.cmdline(pid)
            if len(argv) > 1 and argv[0].endswith(STUB):
                model_py = Path(argv[1])  # /tmp/folderXXXXXX/<version>/model.py
                if len(model_py.parts) > 3:
                    found.add(str(model_py.parents[1]))
        self._record(found)

    def _record(self, paths: set[str]) -> None:
        known = set(self._recorded())
        if paths <= known:
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(self.directory / FOLDERS, flags, 0o600), "w") as file:
            file.write("".join(f"{p}\n" for p in sorted(known | paths)))

    def _recorded(self) -> list[str]:
        """What Triton made, as recorded: only its own kind of folder, directly in the
        temporary directory (the record is in a directory others may have planted)."""
        with contextlib.suppress(OSError):
            listed = (self.directory / FOLDERS).read_text().split()
            return [p for p in listed if _is_triton_folder(Path(p))]
        return []

    def end(self) -> int:
        """Kill what runs from the directory, delete Triton's folders and the directory;
        how many processes were killed."""
        self.started()  # a start that never finished
        self.note_model_folders()
        killed = processes.kill_each(self._processes())
        for folder in self._recorded():
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return killed


def _is_triton_folder(path: Path) -> bool:
    return (
        path.parent == TRITON_TMP
        and (path.name.startswith("folder") or path.match(PYTHON_ENVS))
        and not path.is_symlink()
    )


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
