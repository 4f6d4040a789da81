"""Generated secrets: created once, owner-only, stable across restarts."""

from __future__ import annotations

import stat
from pathlib import Path

from llmos.keyfiles import ensure_secret, write_private


def test_secret_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token"
    first = ensure_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_secret(path) == first


def test_distinct_files_get_distinct_secrets(tmp_path: Path) -> None:
    assert ensure_secret(tmp_path / "a") != ensure_secret(tmp_path / "b")


def test_private_write_replaces_content_and_stays_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "conf"
    write_private(path, "one")
    write_private(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
