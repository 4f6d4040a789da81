"""Restore a storage backup into a storage directory that holds no data yet:
`python -m services.storage.restore BACKUP_DIR STORAGE_DIR` (then start storage on it)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.storage.app import restore


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, root = Path(argv[0]), Path(argv[1])
    if not (source / "manifest.json").is_file():
        print(f"{source} is not a storage backup (no manifest.json)", file=sys.stderr)
        return 2
    try:
        blobs = restore(source, root)
    except FileExistsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"restored {blobs} blobs into {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
