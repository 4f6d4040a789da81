"""The console as an OAuth client of the gateway's own authorization server: it sends a
person to the sign-in page with an authorization request (state + S256 PKCE challenge),
trades the code that comes back for tokens, refreshes them before they expire, and
revokes them on sign-out.

These are the authorization server's own endpoints called in-process (the same authlib
grants, checks and token chains the HTTP endpoints run, audited as they are), so no
token crosses a socket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import urllib.parse

from aiohttp import web

from gateway.auth.bootstrap import CONSOLE_CALLBACK_PATH, CONSOLE_CLIENT_ID
from gateway.auth.http import OAuthHttp, client_of
from gateway.auth.oauth_request import HttpCall
from gateway.auth.scopes import SCOPES
from gateway.auth.tokens import minted_claims
from gateway.console.sessions import ConsoleSession, PendingSignIn, Tokens

#: tokens are refreshed when they have less than this left
REFRESH_AHEAD_S = 60.0
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class SignInFailed(Exception):
    """The code could not be traded for tokens (or a refresh was refused): sign in again."""


def challenge_of(verifier: str) -> str:
    """The S256 PKCE challenge of `verifier` (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class ConsoleOAuth:
    """The authorization request, code exchange, refresh and revocation of the console."""

    def __init__(self, oauth: OAuthHttp) -> None:
        self._oauth = oauth
        self._server = oauth.server
        self._refreshing: dict[str, asyncio.Lock] = {}

    @property
    def issuer(self) -> str:
        return self._server.policy.issuer

    @property
    def redirect_uri(self) -> str:
        return self.issuer + CONSOLE_CALLBACK_PATH

    def authorization_url(self, pending: PendingSignIn) -> str:
        """Where to send the browser to sign in."""
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": CONSOLE_CLIENT_ID,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(SCOPES),
                "state": pending.state,
                "code_challenge": challenge_of(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{self.issuer}/authorize?{query}"

    async def exchange(self, code: str, pending: PendingSignIn, request: web.Request) -> Tokens:
        """The tokens the code stands for (`SignInFailed` if refused)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": CONSOLE_CLIENT_ID,
            "code_verifier": pending.verifier,
        }
        return await self._token(form, request, "")

    async def fresh(self, session: ConsoleSession, request: web.Request) -> None:
        """Refresh the session's tokens if they expire soon (`SignInFailed` if the
        sign-in was revoked or has run out); one refresh per session at a time."""
        if session.tokens.expires_at - time.time() > REFRESH_AHEAD_S:
            return
        lock = self._refreshing.setdefault(session.session_id, asyncio.Lock())
        try:
            async with lock:
                if session.tokens.expires_at - time.time() > REFRESH_AHEAD_S:
                    return  # another request refreshed them while this one waited
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": session.tokens.refresh_token,
                    "client_id": CONSOLE_CLIENT_ID,
                }
                session.tokens = await self._token(form, request, session.tokens.username)
        finally:
            if not lock.locked():
                self._refreshing.pop(session.session_id, None)

    async def revoke(self, session: ConsoleSession, request: web.Request) -> None:
        """End the sign-in: revoking its refresh token ends its whole chain, the access
        token included."""
        form = {
            "token": session.tokens.refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": CONSOLE_CLIENT_ID,
        }
        call = HttpCall("POST", f"{self.issuer}/revoke", FORM, form, client_of(request))
        started = time.monotonic()
        status, body, _ = await asyncio.to_thread(self._server.revoke, call)
        audited = {"client_id": CONSOLE_CLIENT_ID, "username": session.tokens.username}
        self._oauth.record("oauth.revoke", request, audited, status, body, _since(started))

    async def _token(self, form: dict[str, str], request: web.Request, username: str) -> Tokens:
        call = HttpCall("POST", f"{self.issuer}/token", FORM, form, client_of(request))
        started = time.monotonic()
        status, body, _ = await asyncio.to_thread(self._server.token, call)
        audited = {"client_id": CONSOLE_CLIENT_ID, "grant_type": form["grant_type"]}
        subject = username or _subject(body)
        self._oauth.record(
            "oauth.token", request, {**audited, "username": subject}, status, body, _since(started)
        )
        if status != 200:
            raise SignInFailed(str(body.get("error_description") or body.get("error")))
        claims = minted_claims(str(body["access_token"]))
        return Tokens(
            access_token=str(body["access_token"]),
            refresh_token=str(body.get("refresh_token", "")),
            expires_at=float(claims["exp"]),
            username=str(claims["sub"]),
            tenant=str(claims["tenant"]),
            scopes=frozenset(str(claims["scope"]).split()),
        )


def _since(started: float) -> float:
    return time.monotonic() - started


def _subject(body: dict[str, object]) -> str:
    """Who a token response was issued to ("" for a refusal)."""
    token = body.get("access_token")
    return str(minted_claims(token)["sub"]) if isinstance(token, str) else ""
