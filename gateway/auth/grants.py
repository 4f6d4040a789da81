"""The grants the token endpoint accepts, and signing people in for them.

`client_credentials` for programs (they must prove a secret); `password` for people,
which here always needs a TOTP code as well (multi-factor) and locks an account out after
repeated failures; `refresh_token`, rotated on use (the old one is deleted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.grants import (
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceOwnerPasswordCredentialsGrant,
)

from gateway.auth import hashing
from gateway.auth.discovery import CLIENT_AUTH_METHODS
from gateway.auth.identities import USERNAME, IdentityStore
from gateway.auth.oauth_models import OAuthUser, TokenRecord

if TYPE_CHECKING:
    from gateway.auth.server import LLMOSAuthorizationServer, ServerPolicy


class TooManyAttempts(OAuth2Error):  # type: ignore[misc]
    """Brute-force protection: the account is locked for a while."""

    error = "invalid_grant"
    status_code = 429


def login(
    store: IdentityStore, policy: ServerPolicy, username: str, password: str, code: str
) -> OAuthUser:
    """Password + TOTP, with lock-out after repeated failures."""
    if not USERNAME.match(username):
        raise InvalidGrantError("Wrong user name or password.")
    if not code:
        raise InvalidRequestError(
            "Missing 'totp': sign-in needs the current code from your authenticator app."
        )
    locked_for = store.lockout_remaining_s(username, policy.max_login_failures)
    if locked_for:
        raise TooManyAttempts(
            f"Too many failed sign-ins for this account; try again in {locked_for} s."
        )
    user = store.find_user(username)
    password_ok = hashing.check_password(
        password, user.password_hash if user else hashing.DUMMY_PASSWORD_HASH
    )
    if user is None or not password_ok:
        _failed(store, policy, username)
        raise InvalidGrantError("Wrong user name or password.")
    if not store.accept_totp(user, code):
        _failed(store, policy, username)
        raise InvalidGrantError("The one-time code is wrong, expired or was already used.")
    store.clear_failures(username)
    return OAuthUser(user)


def _failed(store: IdentityStore, policy: ServerPolicy, username: str) -> None:
    store.record_failure(
        username, policy.max_login_failures, policy.failure_window_s, policy.lockout_s
    )


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    """Programs: a confidential client's own identity and scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class PasswordWithTotp(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """People: user name, password and the current TOTP code (form field `totp`)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> OAuthUser:
        server: LLMOSAuthorizationServer = self.server
        return login(
            server.store, server.policy, username, password, self.request.form.get("totp", "")
        )


class Refresh(RefreshTokenGrant):  # type: ignore[misc]
    """A person's session continued: a refresh token traded for new tokens, once."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.tokens.find(refresh_token, "refresh_token")

    def authenticate_user(self, credential: TokenRecord) -> OAuthUser | None:
        server: LLMOSAuthorizationServer = self.server
        user = server.store.find_user(credential.subject)
        return OAuthUser(user) if user else None

    def revoke_old_credential(self, credential: TokenRecord) -> None:
        server: LLMOSAuthorizationServer = self.server
        server.store.delete_refresh(credential.raw)
