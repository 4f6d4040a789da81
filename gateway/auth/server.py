"""The built-in OAuth 2.0 authorization server (authlib), framework-neutral and synchronous.

This module wires authlib's server to the identity store and keyring: the grants
(`gateway.auth.grants`), revocation and introspection (`gateway.auth.revocation`), the
tokens it signs (`gateway.auth.tokens`) and its published metadata
(`gateway.auth.discovery`). The HTTP layer (`gateway.auth.http`) runs these calls on
worker threads: authlib is synchronous.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidGrantError

from gateway.auth.authorization_code import AuthorizationCode, S256Challenge
from gateway.auth.discovery import server_metadata
from gateway.auth.grants import ClientCredentials, PasswordWithTotp, Refresh
from gateway.auth.identities import IdentityStore, User
from gateway.auth.keys import Keyring
from gateway.auth.oauth_models import OAuthClient, OAuthUser, TokenRecord
from gateway.auth.oauth_request import CallRequest, HttpCall
from gateway.auth.refresh_chains import RefreshGrant, new_chain
from gateway.auth.revocation import Introspection, Revocation
from gateway.auth.scopes import SCOPES
from gateway.auth.tokens import Tokens, minted_claims

#: What an endpoint answers: HTTP status, JSON body, headers.
Answer = tuple[int, dict[str, Any], dict[str, str]]


@dataclass(frozen=True)
class ServerPolicy:
    """Lifetimes and login protection of the built-in authorization server."""

    issuer: str
    audience: str
    access_ttl_s: int
    refresh_ttl_s: int
    max_login_failures: int
    failure_window_s: int
    lockout_s: int


class LLMOSAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's server wired to the identity store and keyring."""

    def __init__(self, store: IdentityStore, keyring: Keyring, policy: ServerPolicy) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.store = store
        self.keyring = keyring
        self.policy = policy  # replaced once the HTTP port, and so the issuer, is known
        self.tokens = Tokens(store, keyring, lambda: self.policy)
        self.register_token_generator("default", self.tokens.generate)
        self.register_grant(ClientCredentials)
        self.register_grant(PasswordWithTotp)
        self.register_grant(Refresh)
        self.register_grant(AuthorizationCode, [S256Challenge()])
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    # -- authlib hooks -------------------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        record = self.store.find_client(client_id)
        return OAuthClient(record, self.policy.issuer) if record else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Keep a person's new refresh token in its sign-in chain: a new chain at sign-in;
        at refresh the presented token's, which is spent in the same atomic step (if it
        was spent already, by a parallel or replayed refresh, nothing is handed out)."""
        refresh = token.get("refresh_token")
        if not refresh or request.user is None:
            return
        user: User = request.user.record
        presented = getattr(request, "refresh_token", None)
        spent = presented if isinstance(presented, TokenRecord) else None
        grant = RefreshGrant(
            username=user.username,
            user_id=user.user_id,
            client_id=request.client.get_client_id(),
            tenant=user.tenant,
            scope=token["scope"],
            expires_at=time.time() + self.policy.refresh_ttl_s,
            chain=spent.chain if spent else new_chain(),
        )
        access = minted_claims(token["access_token"])
        jti, exp = str(access["jti"]), float(access["exp"])
        chains = self.store.refresh_chains
        if spent is None:
            chains.start(refresh, grant, jti, exp)
        elif not chains.rotate(spent.raw, refresh, grant, jti, exp):
            self.store.revoke_access(jti, exp)
            raise InvalidGrantError("This refresh token has been used already or revoked.")

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's hook for observers; nothing listens."""

    def create_oauth2_request(self, request: HttpCall) -> CallRequest:
        return CallRequest(request)

    def create_json_request(self, request: HttpCall) -> CallRequest:
        return CallRequest(request)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Answer:
        return status, body if isinstance(body, dict) else json.loads(body or "{}"), dict(headers)

    # -- entry points for the HTTP layer -------------------------------------------------

    def token(self, call: HttpCall) -> Answer:
        """POST /token: one of the grants."""
        return self.create_token_response(call)  # type: ignore[no-any-return]

    def authorize(self, call: HttpCall, user: OAuthUser | None) -> Answer:
        """The authorization endpoint's answer once `user` has signed in (None: refused):
        a redirect to the client with a code (or with the error, per RFC 6749 4.1.2.1)."""
        grant = self.get_consent_grant(call, user)
        return self.create_authorization_response(call, user, grant)  # type: ignore[no-any-return]

    def check_authorization_request(self, call: HttpCall) -> None:
        """Refuse (`OAuth2Error`) an authorization request that names an unknown client,
        a redirect URI it did not register, or lacks PKCE: before anyone types a password."""
        self.get_consent_grant(call)

    def revoke(self, call: HttpCall) -> Answer:
        """POST /revoke (RFC 7009)."""
        return self.create_endpoint_response(Revocation.ENDPOINT_NAME, call)  # type: ignore[no-any-return]

    def introspect(self, call: HttpCall) -> Answer:
        """POST /introspect (RFC 7662)."""
        return self.create_endpoint_response(Introspection.ENDPOINT_NAME, call)  # type: ignore[no-any-return]

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata (also served as /.well-known/openid-configuration)."""
        return server_metadata(self.policy.issuer)
