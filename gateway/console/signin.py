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

#: tokens are refreshed when they have less than this left (or half their life)
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
        sign-in was revoked or has run out). One refresh per session runs at a time,
        shielded: a request that is cancelled while it runs (a page left, a poll
        aborted) must not leave the session holding a refresh token already spent,
        which the next refresh would present as a replay and so end the sign-in."""
        if not _expiring(session.tokens):
            return
        if session.renewing is None or session.renewing.done():
            session.renewing = asyncio.ensure_future(self._renew(session, request))
        await asyncio.shield(session.renewing)

    async def _renew(self, session: ConsoleSession, request: web.Request) -> None:
        if not _expiring(session.tokens):
            return  # renewed by the refresh that ran just before this one
        form = {
            "grant_type": "refresh_token",
            "refresh_token": session.tokens.refresh_token,
            "client_id": CONSOLE_CLIENT_ID,
        }
        session.tokens = await self._token(form, request, session.tokens.username)

    async def revoke(self, session: ConsoleSession, request: web.Request) -> None:
        """End the sign-in: revoking its refresh token ends its whole chain, the access
        token included. The audit record says OK only if the chain was live before and
        is gone after (RFC 7009 answers 200 whatever the token was)."""
        form = {
            "token": session.tokens.refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": CONSOLE_CLIENT_ID,
        }
        call = HttpCall("POST", f"{self.issuer}/revoke", FORM, form, client_of(request))
        started = time.monotonic()
        raw = session.tokens.refresh_token

        def revoke() -> tuple[int, dict[str, object]]:
            live = self._server.tokens.find(raw, "refresh_token") is not None
            status, body, _ = self._server.revoke(call)
            gone = self._server.tokens.find(raw, "refresh_token") is None
            if status == 200 and not (live and gone):
                why = "the sign-in had ended already" if not live else "it is still live"
                return 409, {"error": "not_revoked", "error_description": why}
            return status, body

        status, body = await asyncio.shield(asyncio.to_thread(revoke))
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
            lifetime_s=float(claims["exp"]) - float(claims["iat"]),
        )


def _expiring(tokens: Tokens) -> bool:
    """Whether to refresh now: within a minute of expiry, or half the token's life for
    short-lived tokens (so a 30 s token is not refreshed at every request)."""
    return tokens.expires_at - time.time() <= min(REFRESH_AHEAD_S, tokens.lifetime_s / 2)


def _since(started: float) -> float:
    return time.monotonic() - started


def _subject(body: dict[str, object]) -> str:
    """Who a token response was issued to ("" for a refusal)."""
    token = body.get("access_token")
    return str(minted_claims(token)["sub"]) if isinstance(token, str) else ""
