"""Hashing of stored credentials: nothing that authenticates is stored in the clear.

Passwords are low-entropy, so they get scrypt (memory-hard; slow on purpose, run off
the event loop). Client secrets are 256 random bits, for which one SHA-256 suffices and
keeps the token endpoint fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_password(password: str) -> str:
    """`scrypt$salt$hash` (base64) of a password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + _b64(salt) + "$" + _b64(digest)


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against `hash_password`'s output."""
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=_unb64(salt), **_SCRYPT)
    return hmac.compare_digest(candidate, _unb64(digest))


def new_client_secret() -> str:
    """A fresh client secret (shown once)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret (client secrets, refresh tokens)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_secret(secret: str, stored: str) -> bool:
    """Constant-time comparison against `hash_secret`'s output."""
    return hmac.compare_digest(hash_secret(secret), stored)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: What an unknown user's password is checked against, so timing does not reveal which
#: user names exist.
DUMMY_PASSWORD_HASH = hash_password(secrets.token_urlsafe(16))
