"""Envelope encryption at rest: AES-256-GCM per chunk under a per-blob data key, the data
key wrapped (AES-256-GCM too) by a key-encryption key (KEK).

Rotating the KEK re-wraps the small data keys, never the data. KEKs live in files under
the storage data directory (0600, generated at first start) or come from a file named in
configuration; each has an id, stored beside every key it wraps, so old and new KEKs both
work during a rotation.

Chunk format: the plaintext is cut into CHUNK-byte chunks; chunk i is stored as
AESGCM(data key).encrypt(nonce=i as 12 bytes, chunk, aad=b"llmos-blob/" + i + last flag),
i.e. len(chunk) + 16 bytes. The nonce never repeats because each data key encrypts one
blob; the AAD binds each chunk to its position and marks the last one, so reordered,
swapped or truncated chunks fail authentication like any flipped byte.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llmos.keyfiles import write_private

CHUNK = 1 << 20
TAG = 16
KEY_BYTES = 32
_WRAP_AAD = b"llmos-data-key"


class Corrupt(Exception):
    """Stored bytes failed authentication: they were altered, truncated or reordered."""


def chunk_nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def chunk_aad(index: int, last: bool) -> bytes:
    return b"llmos-blob/%d/%d" % (index, 1 if last else 0)


def chunk_count(size: int) -> int:
    """How many chunks a blob of `size` bytes has (an empty blob has one, empty)."""
    return max(1, -(-size // CHUNK))


def stored_size(size: int) -> int:
    return size + chunk_count(size) * TAG


class DataKey:
    """One blob's key: encrypts and decrypts its chunks."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key = key

    @classmethod
    def generate(cls) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=256))

    def seal(self, index: int, chunk: bytes, last: bool) -> bytes:
        return self._aead.encrypt(chunk_nonce(index), chunk, chunk_aad(index, last))

    def open(self, index: int, sealed: bytes, last: bool) -> bytes:
        try:
            return self._aead.decrypt(chunk_nonce(index), sealed, chunk_aad(index, last))
        except InvalidTag:
            raise Corrupt(f"chunk {index} failed authentication") from None


class KeyEncryptionKeys:
    """The KEKs: one active (wraps new keys), older ones kept to unwrap until re-wrapped."""

    def __init__(self, directory: Path, configured: Path | None = None) -> None:
        self.directory = directory
        self._keys: dict[str, bytes] = {}
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        if configured is not None:
            self._keys["configured-" + configured.stem] = _read_key(configured)
        for path in sorted(directory.glob("kek-*.key")):
            self._keys[path.stem.removeprefix("kek-")] = _read_key(path)
        active = directory / "active"
        if configured is not None:
            self.active_id = "configured-" + configured.stem
        elif active.exists() and active.read_text().strip() in self._keys:
            self.active_id = active.read_text().strip()
        else:
            self.active_id = self.create()

    def create(self) -> str:
        """A new KEK, made active; returns its id."""
        kek_id = uuid.uuid4().hex[:12]
        write_private(self.directory / f"kek-{kek_id}.key", secrets.token_bytes(KEY_BYTES).hex())
        self._keys[kek_id] = _read_key(self.directory / f"kek-{kek_id}.key")
        (self.directory / "active.tmp").write_text(kek_id)
        (self.directory / "active.tmp").replace(self.directory / "active")
        self.active_id = kek_id
        return kek_id

    def retire(self, kek_id: str) -> None:
        """Forget a KEK no data key needs any more (after a rotation)."""
        if kek_id == self.active_id or kek_id.startswith("configured-"):
            return
        self._keys.pop(kek_id, None)
        (self.directory / f"kek-{kek_id}.key").unlink(missing_ok=True)

    def wrap(self, key: DataKey) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._keys[self.active_id]).encrypt(nonce, key.key, _WRAP_AAD)
        return self.active_id, nonce + sealed

    def unwrap(self, kek_id: str, wrapped: bytes) -> DataKey:
        kek = self._keys.get(kek_id)
        if kek is None:
            raise Corrupt(f"the key-encryption key {kek_id!r} is not available")
        try:
            return DataKey(AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD))
        except InvalidTag:
            raise Corrupt("a data key failed authentication") from None


def _read_key(path: Path) -> bytes:
    raw = path.read_text().strip()
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        raise ValueError(f"{path}: a key file holds 64 hexadecimal characters") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: a key file holds 64 hexadecimal characters (256 bits)")
    return key
