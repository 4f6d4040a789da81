"""The tokens the built-in issuer hands out, and finding a presented one again.

Access tokens are JWTs in the RFC 9068 shape, signed by the keyring's newest key and
carrying the holder's tenant and the scopes granted (never more than the holder has);
people also get an opaque refresh token, kept in the identity store. A presented token is
found again for refresh, revocation and introspection: an access token by its signature
(even once expired), a refresh token by lookup.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749.errors import InvalidScopeError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.auth.identities import IdentityStore
from gateway.auth.keys import ALGORITHM, Keyring
from gateway.auth.oauth_models import OAuthClient, OAuthUser, TokenRecord
from gateway.auth.scopes import narrow_scopes

if TYPE_CHECKING:
    from gateway.auth.server import ServerPolicy


class Tokens:
    """Minting access (and refresh) tokens, and finding presented ones."""

    def __init__(
        self, store: IdentityStore, keyring: Keyring, policy: Callable[[], ServerPolicy]
    ) -> None:
        self._store = store
        self._keyring = keyring
        # read at each call: the issuer is known only once the HTTP port is bound
        self._policy = policy

    def generate(
        self,
        grant_type: str,
        client: OAuthClient,
        user: OAuthUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """authlib's token generator: the token response of a grant that succeeded."""
        holder_scopes = user.record.scopes if user else client.record.scopes
        granted = narrow_scopes(holder_scopes, scope)
        if not granted:
            raise InvalidScopeError("None of the requested scopes is granted to this principal.")
        policy = self._policy()
        now = int(time.time())
        ttl = expires_in or policy.access_ttl_s
        claims: dict[str, Any] = {
            "iss": policy.issuer,
            "sub": user.record.username if user else client.record.client_id,
            "aud": policy.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            "scope": granted,
            "client_id": client.record.client_id,
            "tenant": user.record.tenant if user else client.record.tenant,
        }
        if user:
            claims["amr"] = ["pwd", "otp"]
        key = self._keyring.active()
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": jwt.encode(header, claims, key.key),
            "expires_in": ttl,
            "scope": granted,
        }
        if user and include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def find(self, raw: str, hint: str | None) -> TokenRecord | None:
        """An access token this server signed (even if expired) or a live refresh token."""
        if hint != "refresh_token" and raw.count(".") == 2:
            try:
                keys = KeySet.import_key_set(self._keyring.jwks())  # type: ignore[arg-type]
                decoded = jwt.decode(raw, keys, [ALGORITHM])
            except (JoseError, ValueError):
                decoded = None
            if decoded is not None:
                c = decoded.claims
                return TokenRecord(
                    kind="access_token",
                    raw=raw,
                    client_id=str(c.get("client_id", "")),
                    subject=str(c.get("sub", "")),
                    tenant=str(c.get("tenant", "")),
                    scope=str(c.get("scope", "")),
                    expires_at=float(c.get("exp", 0)),
                    issued_at=float(c.get("iat", 0)),
                    jti=str(c.get("jti", "")),
                    revoked=self._store.is_revoked(str(c.get("jti", ""))),
                )
        grant = self._store.refresh_chains.find(raw)
        if grant is None:
            return None
        return TokenRecord(
            kind="refresh_token",
            raw=raw,
            client_id=grant.client_id,
            subject=grant.username,
            tenant=grant.tenant,
            scope=grant.scope,
            expires_at=grant.expires_at,
            chain=grant.chain,
            user_id=grant.user_id,
        )


def minted_claims(access_token: str) -> dict[str, Any]:
    """The claims of an access token this server has just signed (read without checking
    the signature: it has not left the process)."""
    payload = access_token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
