"""The grants the token endpoint accepts, and signing people in for them.

`client_credentials` for programs (they must prove a secret); `password` for people,
which here always needs a TOTP code as well (multi-factor) and locks an account out (for
the address the failures came from) after repeated failures; `refresh_token`, rotated on
use within its sign-in's chain (`gateway.auth.refresh_chains`).
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
from gateway.auth.oauth_request import CallRequest

if TYPE_CHECKING:
    from gateway.auth.server import LLMOSAuthorizationServer, ServerPolicy


class TooManyAttempts(OAuth2Error):  # type: ignore[misc]
    """Brute-force protection: the account is locked for a while."""

    error = "invalid_grant"
    status_code = 429


#: The one answer to every wrong credential: which of password or code was wrong is not
#: said, or a wrong code would confirm a guessed password.
WRONG_CREDENTIALS = "Wrong user name, password or one-time code."


def login(
    store: IdentityStore,
    policy: ServerPolicy,
    username: str,
    password: str,
    code: str,
    remote: str,
) -> OAuthUser:
    """Password + TOTP, with lock-out after repeated failures from the address `remote`."""
    if not USERNAME.match(username):
        raise InvalidGrantError(WRONG_CREDENTIALS)
    if not code:
        raise InvalidRequestError(
            "Missing 'totp': sign-in needs the current code from your authenticator app."
        )
    locked_for = store.lockout_remaining_s(username, remote, policy.max_login_failures)
    if locked_for:
        raise TooManyAttempts(
            f"Too many failed sign-ins for this account; try again in {locked_for} s."
        )
    user = store.find_user(username)
    password_ok = hashing.check_password(
        password, user.password_hash if user else hashing.DUMMY_PASSWORD_HASH
    )
    if user is None or not password_ok or not store.accept_totp(user, code):
        store.record_failure(
            username, remote, policy.max_login_failures, policy.failure_window_s, policy.lockout_s
        )
        raise InvalidGrantError(WRONG_CREDENTIALS)
    store.clear_failures(username, remote)
    return OAuthUser(user)


def same_person(store: IdentityStore, username: str, user_id: str, credential: str) -> OAuthUser:
    """The person a `credential` (a refresh token, a code) was issued to: the same one,
    not merely one with the same name (a user deleted and created again is another)."""
    user = store.find_user(username)
    if user is None or user.user_id != user_id:
        raise InvalidGrantError(f"The user this {credential} was issued to no longer exists.")
    return OAuthUser(user)


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    """Programs: a confidential client's own identity and scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class PasswordWithTotp(ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """People: user name, password and the current TOTP code (form field `totp`)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> OAuthUser:
        server: LLMOSAuthorizationServer = self.server
        request: CallRequest = self.request
        return login(
            server.store,
            server.policy,
            username,
            password,
            request.form.get("totp", ""),
            request.remote,
        )


class Refresh(RefreshTokenGrant):  # type: ignore[misc]
    """A person's session continued: a refresh token traded for new tokens, once. The
    token is spent, and its successor saved, atomically in `server.save_token`."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        server: LLMOSAuthorizationServer = self.server
        return server.tokens.find(refresh_token, "refresh_token")

    def authenticate_user(self, credential: TokenRecord) -> OAuthUser:
        server: LLMOSAuthorizationServer = self.server
        return same_person(server.store, credential.subject, credential.user_id, "refresh token")

    def revoke_old_credential(self, credential: TokenRecord) -> None:
        """Nothing left to do: saving the new token spent the old one."""
