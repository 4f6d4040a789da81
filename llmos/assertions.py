"""Tenant assertions: who a call inside acts for, signed by the gateway that checked it.

The gateway authenticates a person or program, decides the tenant a call acts on, and
attaches to each internal call a short-lived assertion it signs (Ed25519): tenant,
principal and its own tenant, scopes, request id, audience (the one service it is for),
expiry. Storage, scheduler, audit and trainer verify it and use its tenant, never a
tenant field a caller wrote (`llmos.callers`).

Wire form, in the `x-llmos-assertion` metadata: `<base64url claims JSON>.<base64url
signature>`. The private key lives in `<secrets>/assertions/signing-key.pem` (0600,
created by the first gateway); verifiers read `signing-key.pub` next to it, again when it
changes (a rotated key is a new file).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llmos.errors import PermissionDenied, Unauthenticated
from llmos.keyfiles import new_private_file, private_dir, write_private

METADATA_KEY = "x-llmos-assertion"
DEFAULT_TTL_S = 60.0
#: clocks of different machines disagree a little
LEEWAY_S = 5.0


@dataclass(frozen=True)
class Assertion:
    """What a verified assertion says."""

    tenant: str  #: the tenant the call acts on
    principal: str  #: who asked (subject of the token the gateway verified)
    principal_tenant: str  #: the principal's own tenant
    scopes: frozenset[str]
    request_id: str
    audience: str  #: the service it is for
    expires_at: float
    issuer: str = ""  #: the gateway instance that signed it

    def claims(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "sub": self.principal,
            "sub_tenant": self.principal_tenant,
            "scopes": sorted(self.scopes),
            "rid": self.request_id,
            "aud": self.audience,
            "exp": self.expires_at,
            "iss": self.issuer,
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> Assertion:
        scopes = claims["scopes"]
        if not isinstance(scopes, list):
            raise TypeError("scopes")
        exp = claims["exp"]
        if not isinstance(exp, int | float):
            raise TypeError("exp")
        return cls(
            tenant=str(claims["tenant"]),
            principal=str(claims["sub"]),
            principal_tenant=str(claims["sub_tenant"]),
            scopes=frozenset(str(s) for s in scopes),
            request_id=str(claims["rid"]),
            audience=str(claims["aud"]),
            expires_at=float(exp),
            issuer=str(claims.get("iss", "")),
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_paths(secrets_dir: Path) -> tuple[Path, Path]:
    """(private key, public key) of the assertion signer."""
    directory = secrets_dir / "assertions"
    return directory / "signing-key.pem", directory / "signing-key.pub"


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`, created (0600) on first use; of two gateways starting
    at once, the first one's key wins."""
    private_dir(path.parent)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        with new_private_file(path) as handle:
            handle.write(pem.decode())
        return key
    except FileExistsError:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key") from None
        return loaded


class AssertionSigner:
    """The gateway's side: signs assertions with the key under `<secrets>/assertions`."""

    def __init__(self, secrets_dir: Path, issuer: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        private, public = key_paths(secrets_dir)
        self._key = _load_or_create_key(private)
        public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not public.exists() or public.read_bytes() != public_pem:
            write_private(public, public_pem.decode())
        self._issuer = issuer
        self._ttl_s = ttl_s

    def sign(
        self,
        *,
        tenant: str,
        principal: str,
        principal_tenant: str,
        scopes: Sequence[str] | frozenset[str],
        request_id: str,
        audience: str,
    ) -> str:
        """An assertion for one call to `audience`, valid for the signer's TTL."""
        assertion = Assertion(
            tenant=tenant,
            principal=principal,
            principal_tenant=principal_tenant,
            scopes=frozenset(scopes),
            request_id=request_id,
            audience=audience,
            expires_at=round(time.time() + self._ttl_s, 3),
            issuer=self._issuer,
        )
        return self.encode(assertion)

    def encode(self, assertion: Assertion) -> str:
        """Any assertion, signed (the tests forge expired or misdirected ones with it)."""
        body = _b64(json.dumps(assertion.claims(), separators=(",", ":")).encode())
        return f"{body}.{_b64(self._key.sign(body.encode()))}"


class AssertionVerifier:
    """A service's side: checks signature, audience and expiry."""

    def __init__(self, secrets_dir: Path, audience: str) -> None:
        self._public_path = key_paths(secrets_dir)[1]
        self._audience = audience
        self._key: Ed25519PublicKey | None = None
        self._loaded_mtime = 0.0

    def _public_key(self) -> Ed25519PublicKey:
        try:
            mtime = self._public_path.stat().st_mtime
        except OSError:
            raise Unauthenticated(
                "no gateway has published its assertion key yet; retry when one is running"
            ) from None
        if self._key is None or mtime != self._loaded_mtime:
            loaded = serialization.load_pem_public_key(self._public_path.read_bytes())
            if not isinstance(loaded, Ed25519PublicKey):
                raise Unauthenticated("the assertion key is not an Ed25519 public key")
            self._key, self._loaded_mtime = loaded, mtime
        return self._key

    def verify(self, token: str, now: float | None = None) -> Assertion:
        """The assertion `token` carries; Unauthenticated with the reason when it is not
        one the gateway signed, PermissionDenied when it is for another service or old."""
        body, sep, signature = token.partition(".")
        if not sep:
            raise Unauthenticated("the tenant assertion is malformed")
        try:
            self._public_key().verify(_unb64(signature), body.encode())
        except (InvalidSignature, binascii.Error, ValueError):
            raise Unauthenticated("the tenant assertion's signature does not verify") from None
        try:
            assertion = Assertion.from_claims(json.loads(_unb64(body)))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthenticated("the tenant assertion's claims are malformed") from None
        if assertion.audience != self._audience:
            raise PermissionDenied(
                f"the tenant assertion is meant for {assertion.audience!r}, not {self._audience!r}"
            )
        if (now if now is not None else time.time()) > assertion.expires_at + LEEWAY_S:
            raise PermissionDenied("the tenant assertion has expired; the gateway signs fresh ones")
        return assertion
