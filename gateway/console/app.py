"""The web console at `/console` on the gateway's HTTPS origin: sign-in (authorization
code + PKCE against the gateway's own issuer), sessions, CSRF, and the pages.

Every page handler is registered through `Console.page`, which finds the session (or
sends the browser to sign in), refreshes its tokens, checks the CSRF token of anything
but GET, refuses a page whose scope the person lacks (the API would refuse its calls
anyway), and turns the API's refusals into pages: a person sees the sentence the API
gave, never a stack trace. The door (`gateway.auth.http.door_middleware`) has already
refused blocked addresses before any of this runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from gateway.console.sessions import PENDING_TTL_S, ConsoleSession, Sessions, SignInStates
from gateway.console.signin import ConsoleOAuth, SignInFailed
from gateway.console.view import NAVIGATION, Api, View
from gateway.openai.errors import failure_of
from gateway.web.render import page, static_folder
from gateway.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    PAGE_HEADERS,
    cookie_name,
    same_token,
    set_private_cookie,
)
from llmos.errors import LLMOSError, PermissionDenied, Unauthenticated

log = logging.getLogger("llmos.gateway.console")

PageHandler = Callable[[View], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: a form or script request's body is at most this (uploads stream, unbounded by it)
MAX_FORM_BYTES = 256 * 1024


class Console:
    """Routes of the console."""

    def __init__(self, oauth: ConsoleOAuth, api: Api, secure: bool) -> None:
        self._oauth = oauth
        self._api = api
        self._secure = secure
        self.sessions = Sessions()
        self._states = SignInStates()
        self._session_cookie = cookie_name("llmos_console", secure)
        self._state_cookie = cookie_name("llmos_console_state", secure)
        self._pages: list[tuple[str, str, str, PageHandler]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console", self._home)
        app.router.add_get("/console/", self._home)
        app.router.add_get("/console/login", self._login)
        app.router.add_get("/console/callback", self._callback)
        app.router.add_post("/console/logout", self._logout)
        app.router.add_static("/console/static/", static_folder(), append_version=False)
        app.middlewares.append(_static_headers)

    def page(self, method: str, path: str, scope: str, handler: PageHandler) -> None:
        """Register `handler` at `path`, for sessions whose token carries `scope`."""
        self._pages.append((method, path, scope, handler))

    def mount(self, app: web.Application) -> None:
        """Add every registered page to `app`."""
        for method, path, scope, handler in self._pages:
            app.router.add_route(method, path, self._guarded(scope, handler))

    # -- sign-in -------------------------------------------------------------------------

    async def _home(self, request: web.Request) -> web.StreamResponse:
        session = self._session_of(request)
        if session is None:
            return self._to_signin(request, "/console/")
        for item in NAVIGATION:
            if item.scope in session.tokens.scopes:
                raise web.HTTPFound(item.path)
        view = View(request, session, self._api)
        return view.render("nothing.html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        pending = self._states.issue(_local_path(request.query.get("next", "")))
        response = web.HTTPFound(self._oauth.authorization_url(pending))
        # Lax: it must come back with the redirect from /authorize
        state_ttl = int(PENDING_TTL_S)
        set_private_cookie(
            response, self._state_cookie, pending.state, self._secure, "Lax", state_ttl
        )
        return response

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        """The code comes back: it must answer this browser's own sign-in (the state
        cookie), or anyone could log a victim in as themselves. Nothing the query says
        is shown before that holds (no one else's text on this origin's pages)."""
        state = request.query.get("state", "")
        if not same_token(state, request.cookies.get(self._state_cookie, "")):
            why = "This sign-in was not started in this browser. Start again."
            return page("signin_refused.html", status=400, reason=why)
        pending = self._states.check(state)
        if pending is None:
            return page("signin_refused.html", status=400, reason="This sign-in has expired.")
        if "error" in request.query:
            return page("signin_refused.html", status=400, reason=_refusal_of(request.query))
        try:
            tokens = await self._oauth.exchange(request.query.get("code", ""), pending, request)
        except SignInFailed as exc:
            return page("signin_refused.html", status=400, reason=str(exc))
        session = self.sessions.start(tokens)
        log.info("console sign-in", extra={"principal": tokens.username, "tenant": tokens.tenant})
        response = web.HTTPFound(pending.next_path)
        response.del_cookie(self._state_cookie, path="/")
        set_private_cookie(response, self._session_cookie, session.session_id, self._secure)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session_of(request)
        if session is None:
            return self._to_signin(request, "/console/")
        refused = await self._check_forgery(request, session)
        if refused is not None:
            return refused
        self.sessions.end(session.session_id)
        await self._oauth.revoke(session, request)
        response = page("signed_out.html")
        response.del_cookie(self._session_cookie, path="/")
        return response

    def _session_of(self, request: web.Request) -> ConsoleSession | None:
        """The request's session; a page's own refresh does not count as use."""
        polling = request.headers.get(REFRESH_HEADER) == "1"
        return self.sessions.find(request.cookies.get(self._session_cookie, ""), not polling)

    def _to_signin(self, request: web.Request, next_path: str) -> web.StreamResponse:
        """To the sign-in page, then back to `next_path`; a script's request (or a form's)
        gets 401 instead: only a person's navigation starts a sign-in."""
        if request.method not in SAFE_METHODS or request.headers.get(CSRF_HEADER):
            return page("signin_refused.html", status=401, reason=_SIGNED_OUT, heading=_ENDED)
        raise web.HTTPFound("/console/login?" + urlencode({"next": next_path}))

    # -- pages ---------------------------------------------------------------------------

    def _guarded(
        self, scope: str, handler: PageHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            session = self._session_of(request)
            if session is None:
                return self._to_signin(request, request.path_qs)
            if request.method not in SAFE_METHODS:
                refused = await self._check_forgery(request, session)
                if refused is not None:
                    return refused
            view = View(request, session, self._api, lambda: self._oauth.fresh(session, request))
            try:
                await view.renew()
            except SignInFailed:
                self.sessions.end(session.session_id)
                return self._to_signin(request, request.path_qs)
            if scope not in session.tokens.scopes:
                why = f"This page needs scope {scope!r}, which your sign-in does not grant."
                return view.render("refused.html", status=403, reason=why)
            try:
                return await handler(view)
            except (Unauthenticated, SignInFailed):
                self.sessions.end(session.session_id)
                return self._to_signin(request, request.path_qs)
            except PermissionDenied as exc:
                return view.render("refused.html", status=403, reason=str(exc))
            except LLMOSError as exc:
                return view.render("refused.html", status=failure_of(exc).status, reason=str(exc))

        return handle

    async def _check_forgery(
        self, request: web.Request, session: ConsoleSession
    ) -> web.StreamResponse | None:
        """Refuse a state-changing request another site could have made: a foreign
        Origin, or no CSRF token matching the session's (a form field, or a header for
        the page's scripts)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != _origin_of(self._oauth.issuer):
            return page("signin_refused.html", status=403, reason=_FORGED, heading=_REFUSED)
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and request.content_type in _FORM_TYPES:
            if request.content_length is None:
                why = "Send the form with a Content-Length."
                return page("signin_refused.html", status=411, reason=why, heading=_REFUSED)
            if request.content_length > MAX_FORM_BYTES:
                too_large = "The form is too large."
                return page("signin_refused.html", status=413, reason=too_large, heading=_REFUSED)
            presented = str((await request.post()).get(CSRF_FIELD, ""))
        if not same_token(presented, session.csrf):
            log.warning("console request without a valid CSRF token refused")
            return page("signin_refused.html", status=403, reason=_FORGED, heading=_REFUSED)
        return None


#: the header the pages' own refreshes send (they do not keep a session alive)
REFRESH_HEADER = "X-Console-Refresh"
#: what the authorization server's error codes mean to a person (RFC 6749 4.1.2.1)
_REFUSALS = {
    "access_denied": "The sign-in was refused.",
    "invalid_request": "The sign-in request was not valid. Start again.",
    "invalid_scope": "The sign-in asked for scopes this system does not have.",
    "unauthorized_client": "The console may not sign people in here.",
    "server_error": "The sign-in service failed. Try again.",
    "temporarily_unavailable": "The sign-in service is busy. Try again in a minute.",
}
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_FORGED = "This form was not sent by this console (its CSRF token is missing or wrong)."
_SIGNED_OUT = "Your console session has ended. Sign in again."
_ENDED = "Session ended"
_REFUSED = "Request refused"


def _refusal_of(query: Mapping[str, str]) -> str:
    """The sentence for an authorization error: ours, never the query's own text."""
    return _REFUSALS.get(query.get("error", ""), "The sign-in did not complete. Start again.")


def _local_path(path: str) -> str:
    """Only a path inside the console may be where sign-in returns (no open redirect)."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/"):
        return "/console/"
    return path


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@web.middleware
async def _static_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The pages' security headers on the console's static files too."""
    response = await handler(request)
    if request.path.startswith("/console/static/"):
        response.headers.update({k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"})
        response.headers["Cache-Control"] = "no-cache"
    return response
