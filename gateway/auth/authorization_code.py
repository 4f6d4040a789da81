"""The authorization code grant with PKCE (RFC 6749 section 4.1, RFC 7636): how people
sign in to a browser application (the web console) without it ever seeing their password.

The person signs in on the authorization server's own page (`gateway.auth.signin`) with
password and one-time code, exactly as the password grant checks them; the server sends
the browser back to the client's registered redirect URI with a short-lived code, which
the client trades for tokens together with the PKCE verifier only it knows. Codes are
kept in Redis (every gateway replica redeems them), under their hash, for
`CODE_TTL_S`, and are taken (read and deleted in one step) when redeemed: a code works
once. Only S256 challenges are accepted, and every authorization request needs one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge

from gateway.auth.grants import same_person
from gateway.auth.oauth_models import OAuthClient, OAuthUser

if TYPE_CHECKING:
    from authlib.oauth2.rfc6749 import OAuth2Request

    from gateway.auth.server import LLMOSAuthorizationServer

#: how long a code may wait to be redeemed (RFC 6749 recommends at most 10 minutes; the
#: console redeems it within the redirect)
CODE_TTL_S = 60


@dataclass(frozen=True)
class CodeGrant:
    """What a code stands for: who signed in, for which client, scope and redirect."""

    client_id: str
    redirect_uri: str
    scope: str
    username: str
    user_id: str
    code_challenge: str
    code_challenge_method: str
    expires_at: float

    # authlib's AuthorizationCodeMixin, and CodeChallenge's two getters
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_code_challenge(self) -> str:
        return self.code_challenge

    def get_code_challenge_method(self) -> str:
        return self.code_challenge_method

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE, required of every authorization request and only with S256: a `plain`
    challenge is the verifier itself, which anyone who saw the request would know."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: AuthorizationCodeGrant, redirect_uri: str) -> None:
        if not grant.request.payload.data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': this server requires PKCE.")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCode(AuthorizationCodeGrant):  # type: ignore[misc]
    """Codes for public clients that prove PKCE (the console); no client secrets."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    AUTHORIZATION_CODE_LENGTH = 48

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        server: LLMOSAuthorizationServer = self.server
        data = request.payload.data
        grant = CodeGrant(
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri or "",
            scope=request.scope or "",
            username=request.user.record.username,
            user_id=request.user.record.user_id,
            code_challenge=data.get("code_challenge", ""),
            code_challenge_method=data.get("code_challenge_method") or "S256",
            expires_at=time.time() + CODE_TTL_S,
        )
        server.store.save_authorization_code(code, json.dumps(asdict(grant)), CODE_TTL_S)

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeGrant | None:
        """The code's grant, if it was issued to `client`: taken, so never redeemed twice
        (a wrong verifier spends the code too, and the person signs in again)."""
        server: LLMOSAuthorizationServer = self.server
        raw = server.store.take_authorization_code(code)
        if raw is None:
            return None
        grant = CodeGrant(**json.loads(raw))
        if grant.client_id != client.get_client_id() or grant.is_expired():
            return None
        return grant

    def delete_authorization_code(self, authorization_code: CodeGrant) -> None:
        """Nothing to do: `query_authorization_code` took the code."""

    def authenticate_user(self, authorization_code: CodeGrant) -> OAuthUser:
        server: LLMOSAuthorizationServer = self.server
        code = authorization_code
        return same_person(server.store, code.username, code.user_id, "code")
