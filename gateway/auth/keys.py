"""The authorization server's token-signing keys, with rotation.

Keys live as PEM files (mode 0600) under `<data dir>/gateway/keys`, shared by every
replica that shares the data directory. The newest key signs; a rotated-out key stays
in the JWKS for `retention_s` (longer than any access token lives), so tokens it signed
keep verifying until they expire, then it is deleted.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

ALGORITHM = "RS256"
KEY_BITS = 2048


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: RSAKey


class Keyring:
    """Signing keys on disk: the newest signs, retired ones are published until unused."""

    def __init__(self, directory: Path, retention_s: float) -> None:
        self._dir = directory
        self._retention_s = retention_s
        self._cache: dict[str, RSAKey] = {}
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            if not self._kids():
                self._create()

    def active(self) -> SigningKey:
        """The key new tokens are signed with (re-read, so a rotation by any replica counts)."""
        kid = self._kids()[-1]
        return SigningKey(kid, self._load(kid))

    def rotate(self) -> str:
        """Create a new signing key; retire the others; drop ones nobody can still need."""
        with self._locked():
            now = time.time()
            for kid in self._kids():
                marker = self._dir / f"{kid}.retired"
                if not marker.exists():
                    marker.write_text(f"{now}")
            kid = self._create()
            self._prune(now)
            return kid

    def jwks(self) -> dict[str, Any]:
        """The public keys verifiers need: the active one and those still in retention."""
        self._prune(time.time())
        keys = []
        for kid in self._kids():
            public = self._load(kid).as_dict(private=False)
            keys.append({**public, "kid": kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": keys}

    def _kids(self) -> list[str]:
        """Key ids, oldest first (ids start with their creation time)."""
        return sorted(p.stem for p in self._dir.glob("*.pem"))

    def _create(self) -> str:
        kid = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        key = RSAKey.generate_key(KEY_BITS, parameters={"kid": kid})
        path = self._dir / f"{kid}.pem"
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.as_pem(private=True))
        path.with_suffix(".tmp").replace(path)
        self._cache[kid] = key
        return kid

    def _prune(self, now: float) -> None:
        for marker in self._dir.glob("*.retired"):
            try:
                retired_at = float(marker.read_text())
            except (OSError, ValueError):
                continue
            if now - retired_at > self._retention_s:
                (self._dir / f"{marker.stem}.pem").unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                self._cache.pop(marker.stem, None)

    def _load(self, kid: str) -> RSAKey:
        key = self._cache.get(kid)
        if key is None:
            pem = (self._dir / f"{kid}.pem").read_bytes()
            key = RSAKey.import_key(pem, parameters={"kid": kid})
            self._cache[kid] = key
        return key

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise creation and rotation between replicas sharing the directory."""
        with open(self._dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
