"""Our clients, users and tokens as authlib sees them (its `ClientMixin`, user and
`TokenMixin` interfaces) over the identity store's records."""

from __future__ import annotations

import time
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin

from gateway.auth import hashing
from gateway.auth.identities import Client, User
from gateway.auth.scopes import narrow_scopes


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """A registered client: confidential ones prove a secret, public ones ("none") do not.
    Only clients allowed the authorization code grant have redirect URIs; a registered
    path is on the issuer's own origin (`issuer`), compared exactly."""

    def __init__(self, record: Client, issuer: str = "") -> None:
        self.record = record
        self._issuer = issuer

    def get_client_id(self) -> str:
        return self.record.client_id

    def redirect_uris(self) -> list[str]:
        """The registered redirect URIs, paths made absolute on the issuer's origin."""
        return [self._issuer + u if u.startswith("/") else u for u in self.record.redirect_uris]

    def get_default_redirect_uri(self) -> str | None:
        uris = self.redirect_uris()
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        return narrow_scopes(self.record.scopes, scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris()

    def check_client_secret(self, client_secret: str) -> bool:
        return not self.record.is_public and hashing.check_secret(
            client_secret, self.record.secret_hash
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return (method == "none") == self.record.is_public

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class OAuthUser:
    """A person who signed in (password and TOTP)."""

    def __init__(self, record: User) -> None:
        self.record = record

    def get_user_id(self) -> str:
        return self.record.username


@dataclass
class TokenRecord(TokenMixin):  # type: ignore[misc]
    """An access or refresh token as revocation, introspection and refresh see it."""

    kind: str
    raw: str
    client_id: str
    subject: str
    tenant: str
    scope: str
    expires_at: float
    issued_at: float = 0.0
    jti: str = ""
    revoked: bool = False
    #: a refresh token's sign-in chain and the identity of the user it was issued to
    chain: str = ""
    user_id: str = ""

    def check_client(self, client: OAuthClient) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(int(self.expires_at - time.time()), 0)

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked
