"""Taking a token back (RFC 7009 revocation) and saying what a token is (RFC 7662
introspection).

A revoked access token is remembered by its `jti` until it would have expired; revoking a
refresh token ends its whole sign-in session (every refresh and access token of its chain).
A client may introspect its own tokens; an `admin` client any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from gateway.auth.discovery import CLIENT_AUTH_METHODS
from gateway.auth.oauth_models import OAuthClient, TokenRecord
from gateway.auth.scopes import ADMIN

if TYPE_CHECKING:
    from gateway.auth.server import LLMOSAuthorizationServer


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """POST /revoke."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.tokens.find(token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        server: LLMOSAuthorizationServer = self.server
        if token.kind == "access_token":
            server.store.revoke_access(token.jti, token.expires_at)
        else:
            server.store.refresh_chains.revoke(token.chain)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """POST /introspect."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.tokens.find(token_string, token_type_hint)

    def check_permission(
        self, token: TokenRecord, client: OAuthClient, request: OAuth2Request
    ) -> bool:
        return token.check_client(client) or ADMIN in client.record.scopes

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        server: LLMOSAuthorizationServer = self.server
        return {
            "active": True,
            "token_type": token.kind,
            "scope": token.scope,
            "client_id": token.client_id,
            "sub": token.subject,
            "tenant": token.tenant,
            "exp": int(token.expires_at),
            "iat": int(token.issued_at) or None,
            "iss": server.policy.issuer,
            "aud": server.policy.audience,
        }
