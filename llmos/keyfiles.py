"""Secrets generated at first start under the data directory, readable by the owner only."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

#: Every LLM OS process creates its files for its own user only: the data directory
#: holds password hashes (Redis' append-only file), cached outputs, training text and
#: model weights, none of them for other local users. Children (Redis, NATS, Triton,
#: training programs) inherit it.
PRIVATE_UMASK = 0o077


def private_files() -> None:
    """From now on, this process and its children create files readable by the owner
    only (mode 0600, directories 0700)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """`path` as a directory, creating it and each missing parent only its owner can enter
    (`mkdir(parents=True, mode=...)` gives the parents the default mode instead)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    return path


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret stored at `path`, creating it (mode 0600) on first use.

    Creation is exclusive, so two processes racing at first start agree on one value.
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, atomically replacing any old one."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def make_private_tree(root: Path) -> None:
    """Take group and other permissions off `root` and everything under it (symbolic
    links are left alone): the umask protects new files, this the files of an earlier
    version, e.g. a Redis append-only file written at 0644."""
    if not root.exists():
        return
    for path in (root, *root.rglob("*")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                path.chmod(stat.S_IMODE(mode) & ~0o077)


def open_private(path: Path) -> TextIO:
    """`path` opened for writing (created or emptied), readable by its owner only, even
    if it existed with wider permissions: for exports of audit records and the like."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


@contextlib.contextmanager
def new_private_file(path: Path) -> Iterator[TextIO]:
    """A file that must not exist yet (FileExistsError if it does), only its owner can
    read; removed again if the block fails, so a half-written secret never stays behind.

    Creating it before the secret exists lets a caller refuse early, before asking a
    server for a secret it could then only lose."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            yield handle
    except BaseException:
        path.unlink(missing_ok=True)
        raise
