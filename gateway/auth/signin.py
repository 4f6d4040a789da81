"""The authorization endpoint (`/authorize`): the authorization server's own sign-in page.

A browser application (the console) sends the person here with an authorization request
(client, redirect URI, scope, state, PKCE challenge). The page asks for user name,
password and the current one-time code, checks them exactly as the password grant does
(`gateway.auth.grants.login`: the same lock-out, the same single answer to any wrong
credential, the same bounded queue for password hashing), and sends the browser back to
the client with a code. The application never sees the password.

The form carries a CSRF token that must match a cookie set with the page (double
submit), so another site cannot post a sign-in of its choosing. Every attempt is
audited; failures feed intrusion detection like the token endpoint's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc6749.errors import OAuth2Error

from gateway.auth.grants import login
from gateway.auth.http import MAX_BODY_BYTES, OAuthHttp, client_of
from gateway.auth.oauth_models import OAuthUser
from gateway.auth.oauth_request import HttpCall
from gateway.firewall import Blocked, user_target
from gateway.intrusion import Signal
from gateway.web.render import page
from gateway.web.security import (
    CSRF_FIELD,
    cookie_name,
    new_token,
    same_token,
    set_private_cookie,
)

#: the authorization request's parameters, carried through the form as hidden fields
REQUEST_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)
#: how long a sign-in page stays usable
FORM_TTL_S = 600
ACTION = "oauth.authorize"


class SignInPage:
    """GET shows the form for a valid authorization request; POST signs in."""

    def __init__(self, oauth: OAuthHttp, secure: bool) -> None:
        self._oauth = oauth
        self._secure = secure
        self._cookie = cookie_name("llmos_signin", secure)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/authorize", self._show)
        app.router.add_post("/authorize", self._submit)

    async def _show(self, request: web.Request) -> web.Response:
        params = _parameters(request.query)
        try:
            await asyncio.to_thread(
                self._oauth.server.check_authorization_request, self._call(request, params)
            )
        except OAuth2Error as exc:
            return page("signin_refused.html", status=400, reason=_sentence(exc))
        csrf = new_token()
        response = page("signin.html", params=params, csrf=csrf, error="", username="")
        set_private_cookie(response, self._cookie, csrf, self._secure, max_age=FORM_TTL_S)
        return response

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        if request.content_length is None:
            why = "Send the form with a Content-Length."
            return page("signin_refused.html", status=411, reason=why)
        if request.content_length > MAX_BODY_BYTES:
            return page("signin_refused.html", status=413, reason="The form is too large.")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        params = _parameters(form)
        audited = {**params, "username": form.get("username", "")[:64]}
        if not same_token(form.get(CSRF_FIELD), request.cookies.get(self._cookie, "")):
            await self._observe(Signal.MALFORMED, request)
            why = "This sign-in form expired or was not sent by this page. Open it again."
            self._oauth.record(ACTION, request, audited, 403, {"error": "csrf"}, 0.0)
            return page("signin_refused.html", status=403, reason=why)
        try:
            await self._oauth.detector.firewall.check(user_target(form.get("username", "")[:128]))
        except Blocked as exc:
            return page("signin_refused.html", status=403, reason=str(exc))
        try:
            await self._oauth.take_turn()
        except TimeoutError:
            busy = "The sign-in service is busy; try again in a few seconds."
            return self._form(params, form, busy, 503)
        # shielded, as the token endpoint's: a guesser who hangs up mid-hash does not
        # skip the audit record or intrusion detection, nor free a turn still hashing
        settled = self._settle(request, params, form, audited, started)
        return await asyncio.shield(settled)

    async def _settle(
        self,
        request: web.Request,
        params: dict[str, str],
        form: dict[str, str],
        audited: dict[str, str],
        started: float,
    ) -> web.StreamResponse:
        """Check the person (the turn to hash is held), audit, count a failure, answer."""
        call = self._call(request, params)
        failure: OAuth2Error | None = None
        try:
            user = await asyncio.to_thread(self._login, call, form)
        except OAuth2Error as exc:
            failure = exc
        finally:
            self._oauth.end_turn()
        if failure is not None:
            elapsed = time.monotonic() - started
            body = {"error": failure.error, "error_description": failure.description}
            self._oauth.record(ACTION, request, audited, failure.status_code, body, elapsed)
            await self._observe(Signal.SIGNIN_FAILED, request)
            return self._form(params, form, _sentence(failure), failure.status_code)
        try:
            status, _, headers = await asyncio.to_thread(self._oauth.server.authorize, call, user)
        except OAuth2Error as exc:
            return page("signin_refused.html", status=400, reason=_sentence(exc))
        self._oauth.record(ACTION, request, audited, 200, {}, time.monotonic() - started)
        location = headers.get("Location", "")
        if status != 302 or not location:
            return page("signin_refused.html", status=400, reason="The request was refused.")
        response = web.HTTPFound(location)
        response.del_cookie(self._cookie, path="/")
        return response

    def _login(self, call: HttpCall, form: Mapping[str, str]) -> OAuthUser:
        """Check the request, then the person (in a worker thread: hashing is slow)."""
        server = self._oauth.server
        server.check_authorization_request(call)
        return login(
            server.store,
            server.policy,
            form.get("username", ""),
            form.get("password", ""),
            form.get("totp", "").strip(),
            call.remote,
        )

    def _form(
        self, params: dict[str, str], form: Mapping[str, str], error: str, status: int
    ) -> web.Response:
        """The form again, with the error and the name typed (never the secrets)."""
        csrf = form.get(CSRF_FIELD, "")
        username = form.get("username", "")[:64]
        return page(
            "signin.html", status=status, params=params, csrf=csrf, error=error, username=username
        )

    def _call(self, request: web.Request, params: dict[str, str]) -> HttpCall:
        return HttpCall(
            method="GET",
            url=f"{self._oauth.server.policy.issuer}/authorize",
            headers={},
            form=params,
            remote=client_of(request),
        )

    async def _observe(self, signal: Signal, request: web.Request) -> None:
        with contextlib.suppress(Exception):  # detection must not fail the answer
            await self._oauth.detector.observe(signal, client_of(request), None)


def _parameters(source: Mapping[str, Any]) -> dict[str, str]:
    """The authorization request's parameters (others are dropped), each at most 512
    characters (a longer one is invalid anyway)."""
    return {
        name: str(source[name])[:512]
        for name in REQUEST_PARAMETERS
        if isinstance(source.get(name), str)
    }


def _sentence(exc: OAuth2Error) -> str:
    return str(exc.description or exc.error)
