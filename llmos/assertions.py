"""Tenant assertions: who a call inside acts for, vouched for by the gateway that checked it.

The gateway authenticates a person or program, decides the tenant a call acts on, and
attaches to each internal call a short-lived assertion it signs: tenant, principal and
its own tenant, scopes, request id, audience (the one service it is for), expiry.
Storage, scheduler, audit and trainer verify it and use its tenant, never a tenant field
a caller wrote (`llmos.callers`).

Wire form, in the `x-llmos-assertion` metadata: `<base64url claims JSON>.<base64url
HMAC-SHA256>`, keyed with the key of the audience: `<secrets>/assertions/<service>.key`
(0600, created at first use). The gateway holds every service's key; each service needs
only its own. A key shared by exactly the signer and the one verifier proves to that
verifier what a public-key signature would (only the gateway, or itself, could have
made it), and costs 2 µs where an Ed25519 verification cost 120 µs on these machines,
on every internal hop (`make bench-gateway`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import PermissionDenied, Unauthenticated
from llmos.keyfiles import ensure_secret

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


def key_path(secrets_dir: Path, audience: str) -> Path:
    """The key of assertions meant for `audience`."""
    return secrets_dir / "assertions" / f"{audience}.key"


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode(), hashlib.sha256).digest()


class _Keys:
    """Audience keys read (or created) once each."""

    def __init__(self, secrets_dir: Path) -> None:
        self._secrets_dir = secrets_dir
        self._keys: dict[str, bytes] = {}

    def __call__(self, audience: str) -> bytes:
        key = self._keys.get(audience)
        if key is None:
            key = ensure_secret(key_path(self._secrets_dir, audience)).encode()
            self._keys[audience] = key
        return key


class AssertionSigner:
    """The gateway's side: signs assertions with the key of each audience."""

    def __init__(self, secrets_dir: Path, issuer: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._keys = _Keys(secrets_dir)
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
        return f"{body}.{_b64(_mac(self._keys(assertion.audience), body))}"


class AssertionVerifier:
    """A service's side: checks the MAC with its own key, the audience and the expiry."""

    def __init__(self, secrets_dir: Path, audience: str) -> None:
        self._path = key_path(secrets_dir, audience)
        self._key: bytes | None = None
        self._audience = audience

    def _own_key(self) -> bytes:
        """This service's key, read once: the setup identity creates it, and a service
        that was not given one refuses every assertion, saying so."""
        if self._key is None:
            try:
                self._key = self._path.read_text().strip().encode()
            except OSError:
                raise Unauthenticated(
                    f"{self._audience} has no assertion key ({self._path}); the setup "
                    "identity creates it"
                ) from None
        return self._key

    def verify(self, token: str, now: float | None = None) -> Assertion:
        """The assertion `token` carries; Unauthenticated with the reason when it is not
        one the gateway signed, PermissionDenied when it is for another service or old."""
        body, sep, signature = token.partition(".")
        if not sep:
            raise Unauthenticated("the tenant assertion is malformed")
        try:  # read before it is verified only to say why it is refused
            assertion = Assertion.from_claims(json.loads(_unb64(body)))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthenticated("the tenant assertion's claims are malformed") from None
        if assertion.audience != self._audience:
            raise PermissionDenied(
                f"the tenant assertion is meant for {assertion.audience!r}, not {self._audience!r}"
            )
        try:
            valid = hmac.compare_digest(_unb64(signature), _mac(self._own_key(), body))
        except (binascii.Error, ValueError):
            valid = False
        if not valid:  # tampered with, or signed with another key
            raise Unauthenticated("the tenant assertion's signature does not verify")
        if (now if now is not None else time.time()) > assertion.expires_at + LEEWAY_S:
            raise PermissionDenied("the tenant assertion has expired; the gateway signs fresh ones")
        return assertion
