"""Restore a storage backup into a storage directory that holds no data yet:
`python -m services.storage.restore BACKUP_DIR STORAGE_DIR` (then start storage on it)."""

# Files only: this tool imports neither the service nor gRPC (the docstring above is its
# usage text), so it runs where the service cannot and cannot touch a running one.

from __future__ import annotations

import sys
from pathlib import Path

from services.storage.backup import is_backup, restore


def main(argv: list[str]) -> int:
    """Run the tool on its arguments; the exit status says how it went."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, root = Path(argv[0]), Path(argv[1])
    if not is_backup(source):
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
