"""The audit service's keys, generated at first start under its directory (0600):
the Ed25519 key that signs checkpoints, and the key of the pseudonymising hash.

Verification trusts the public keys in `keys/*.pub` beside the database — never keys
found in the database, which whoever can edit the records could edit too. Copy a `.pub`
file elsewhere to verify a copied database independently.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from llmos.keyfiles import ensure_secret
from services.audit.chain import key_id

SIGNING_KEY = "checkpoint-signing.key"
PSEUDONYM_KEY = "pseudonym.key"


def signing_key(directory: Path) -> Ed25519PrivateKey:
    """The checkpoint signing key, created (exclusively, mode 0600) on first use; its
    public half is written beside it as `<key id>.pub`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SIGNING_KEY
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    public = key.public_key()
    public_path = directory / f"{key_id(public)}.pub"
    if not public_path.exists():
        public_path.write_bytes(
            public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
    return key


def trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Key id -> public key, for every `*.pub` in `directory`."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        public = load_pem_public_key(path.read_bytes())
        if isinstance(public, Ed25519PublicKey):
            keys[key_id(public)] = public
    return keys


def pseudonym_key(directory: Path) -> bytes:
    """The key of the pseudonymising hash (32 random bytes, urlsafe text on disk)."""
    return ensure_secret(directory / PSEUDONYM_KEY).encode()
