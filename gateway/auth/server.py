"""The built-in OAuth 2.0 authorization server (authlib), framework-neutral and synchronous.

Grants: `client_credentials` for programs; `password` for people, which here always needs
a TOTP code as well (multi-factor) and returns a refresh token; `refresh_token` (rotated
on use). Endpoints: revocation (RFC 7009) and introspection (RFC 7662). Access tokens are
JWTs (RFC 9068 shape) signed by the keyring's newest key. The HTTP layer
(`gateway.auth.http`) runs these calls on worker threads: authlib is synchronous.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
)
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.grants import (
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.auth import hashing
from gateway.auth.identities import USERNAME, Client, IdentityStore, RefreshGrant, User
from gateway.auth.keys import ALGORITHM, Keyring
from gateway.auth.scopes import ADMIN, SCOPES

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


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


@dataclass(frozen=True)
class HttpCall:
    """An HTTP request as the web framework saw it."""

    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str]


class TooManyAttempts(OAuth2Error):  # type: ignore[misc]
    """Brute-force protection: the account is locked for a while."""

    error = "invalid_grant"
    status_code = 429


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: dict[str, str]) -> None:
        self._form = form

    @property
    def data(self) -> dict[str, str]:
        return self._form

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        values: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in self._form.items():
            values[key].append(value)
        return values


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, call: HttpCall) -> None:
        super().__init__(method=call.method, uri=call.url, headers=call.headers)
        self.payload = _Payload(call.form)
        self._form = call.form

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


class OAuthClient(ClientMixin):  # type: ignore[misc]
    def __init__(self, record: Client) -> None:
        self.record = record

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return _narrow(self.record.scopes, scope)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return not self.record.is_public and hashing.check_secret(
            client_secret, self.record.secret_hash
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return (method == "none") == self.record.is_public

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class OAuthUser:
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


def _narrow(granted: list[str], requested: str | None) -> str:
    """The requested scopes the holder has (all of them when none are requested)."""
    if not requested:
        return " ".join(granted)
    return " ".join(s for s in dict.fromkeys(requested.split()) if s in granted)


class LLMOSAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's server wired to the identity store and keyring."""

    def __init__(self, store: IdentityStore, keyring: Keyring, policy: ServerPolicy) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.store = store
        self.keyring = keyring
        self.policy = policy
        self.register_token_generator("default", self._generate_token)
        self.register_grant(_ClientCredentials)
        self.register_grant(_PasswordWithTotp)
        self.register_grant(_Refresh)
        self.register_endpoint(_Revocation)
        self.register_endpoint(_Introspection)

    # -- authlib hooks -------------------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        record = self.store.find_client(client_id)
        return OAuthClient(record) if record else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        refresh = token.get("refresh_token")
        if refresh and request.user is not None:
            user: User = request.user.record
            self.store.save_refresh(
                refresh,
                RefreshGrant(
                    username=user.username,
                    client_id=request.client.get_client_id(),
                    tenant=user.tenant,
                    scope=token["scope"],
                    expires_at=time.time() + self.policy.refresh_ttl_s,
                ),
            )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's hook for observers; nothing listens."""

    def create_oauth2_request(self, request: HttpCall) -> _Request:
        return _Request(request)

    def create_json_request(self, request: HttpCall) -> _Request:
        return _Request(request)

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        return status, body if isinstance(body, dict) else json.loads(body or "{}"), dict(headers)

    # -- entry points for the HTTP layer -------------------------------------------------

    def token(self, call: HttpCall) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.create_token_response(call)  # type: ignore[no-any-return]

    def revoke(self, call: HttpCall) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.create_endpoint_response(_Revocation.ENDPOINT_NAME, call)  # type: ignore[no-any-return]

    def introspect(self, call: HttpCall) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self.create_endpoint_response(_Introspection.ENDPOINT_NAME, call)  # type: ignore[no-any-return]

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata (also served as /.well-known/openid-configuration)."""
        issuer = self.policy.issuer
        auth_methods = CLIENT_AUTH_METHODS
        return {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "grant_types_supported": ["client_credentials", "password", "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": list(SCOPES),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "access_token_signing_alg_values_supported": [ALGORITHM],
            # the password grant here is multi-factor: it also needs `totp`
            "password_grant_requires": ["totp"],
        }

    # -- people --------------------------------------------------------------------------

    def login(self, username: str, password: str, code: str) -> OAuthUser:
        """Password + TOTP, with lock-out after repeated failures."""
        policy = self.policy
        if not USERNAME.match(username):
            raise InvalidGrantError("Wrong user name or password.")
        if not code:
            raise InvalidRequestError(
                "Missing 'totp': sign-in needs the current code from your authenticator app."
            )
        locked_for = self.store.lockout_remaining_s(username, policy.max_login_failures)
        if locked_for:
            raise TooManyAttempts(
                f"Too many failed sign-ins for this account; try again in {locked_for} s."
            )
        user = self.store.find_user(username)
        password_ok = hashing.check_password(
            password, user.password_hash if user else hashing.DUMMY_PASSWORD_HASH
        )
        if user is None or not password_ok:
            self._failed(username)
            raise InvalidGrantError("Wrong user name or password.")
        if not self.store.accept_totp(user, code):
            self._failed(username)
            raise InvalidGrantError("The one-time code is wrong, expired or was already used.")
        self.store.clear_failures(username)
        return OAuthUser(user)

    def _failed(self, username: str) -> None:
        policy = self.policy
        self.store.record_failure(
            username, policy.max_login_failures, policy.failure_window_s, policy.lockout_s
        )

    # -- tokens --------------------------------------------------------------------------

    def _generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: OAuthUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        holder_scopes = user.record.scopes if user else client.record.scopes
        granted = _narrow(holder_scopes, scope)
        if not granted:
            raise InvalidScopeError("None of the requested scopes is granted to this principal.")
        now = int(time.time())
        ttl = expires_in or self.policy.access_ttl_s
        claims: dict[str, Any] = {
            "iss": self.policy.issuer,
            "sub": user.record.username if user else client.record.client_id,
            "aud": self.policy.audience,
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
        key = self.keyring.active()
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

    def find_token(self, raw: str, hint: str | None) -> TokenRecord | None:
        """An access token this server signed (even if expired) or a live refresh token."""
        if hint != "refresh_token" and raw.count(".") == 2:
            try:
                keys = KeySet.import_key_set(self.keyring.jwks())  # type: ignore[arg-type]
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
                    revoked=self.store.is_revoked(str(c.get("jti", ""))),
                )
        grant = self.store.find_refresh(raw)
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
        )


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _PasswordWithTotp(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> OAuthUser:
        server: LLMOSAuthorizationServer = self.server
        return server.login(username, password, self.request.form.get("totp", ""))


class _Refresh(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.find_token(refresh_token, "refresh_token")

    def authenticate_user(self, credential: TokenRecord) -> OAuthUser | None:
        server: LLMOSAuthorizationServer = self.server
        user = server.store.find_user(credential.subject)
        return OAuthUser(user) if user else None

    def revoke_old_credential(self, credential: TokenRecord) -> None:
        server: LLMOSAuthorizationServer = self.server
        server.store.delete_refresh(credential.raw)


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.find_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        server: LLMOSAuthorizationServer = self.server
        if token.kind == "access_token":
            server.store.revoke_access(token.jti, token.expires_at)
        else:
            server.store.delete_refresh(token.raw)


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.find_token(token_string, token_type_hint)

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
