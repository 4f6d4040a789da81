"""The gateway's HTTP server (aiohttp), and on it the authorization server's endpoints:
token, revocation, introspection, JWKS and metadata. authlib is synchronous, so each
OAuth call runs on a worker thread and the event loop that serves gRPC never waits on
password hashing.

Every endpoint is behind the door (`door_middleware`): a blocked address is refused
before its request is read, and the OAuth endpoints (which hash secrets, 16 MiB each)
take a bounded rate of requests per address and a bounded number at once. Their
failures feed intrusion detection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc6749.util import extract_basic_authorization

from gateway.auth.oauth_request import HttpCall
from gateway.auth.server import LLMOSAuthorizationServer
from gateway.firewall import (
    Blocked,
    address_target,
    canonical_address,
    client_target,
    user_target,
)
from gateway.intrusion import IntrusionDetector, Signal
from gateway.openai.errors import OPENAI_PREFIX, failure_of
from gateway.web.render import page
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import ResourceExhausted

#: Form bodies of OAuth calls are small; anything larger is refused unread.
MAX_BODY_BYTES = 16 * 1024
#: Caller-chosen names are cut to this length in audit records.
FIELD_MAX = 128
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: how long a request may wait for its turn to verify a secret before 503
HASHING_WAIT_S = 10.0
#: the endpoints that verify a secret (when POSTed to), behind the per-address sign-in
#: rate; /authorize is the sign-in page's form
SIGNIN_PATHS = frozenset({"/token", "/revoke", "/introspect", "/authorize"})
#: OAuth errors that say a credential was wrong (the rest say the request was malformed)
CREDENTIAL_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client"})

Endpoint = Callable[[HttpCall], tuple[int, dict[str, Any], dict[str, str]]]


class OAuthHttp:
    """Routes of the built-in issuer."""

    def __init__(
        self,
        server: LLMOSAuthorizationServer,
        audit: AuditPublisher,
        detector: IntrusionDetector,
    ) -> None:
        self.server = server
        self._audit = audit
        self.detector = detector
        self._hashing = asyncio.Semaphore(detector.policy.signin_concurrency)

    async def take_turn(self) -> None:
        """Wait for a turn to verify a secret; `TimeoutError` after HASHING_WAIT_S (a
        queue of requests waiting to hash must not grow without bound). Whoever takes
        a turn gives it back with `end_turn` once its hashing thread has finished."""
        await asyncio.wait_for(self._hashing.acquire(), HASHING_WAIT_S)

    def end_turn(self) -> None:
        self._hashing.release()

    def add_routes(self, app: web.Application) -> None:
        metadata = self._metadata
        app.router.add_get("/.well-known/openid-configuration", metadata)
        app.router.add_get("/.well-known/oauth-authorization-server", metadata)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._oauth("oauth.token", self.server.token))
        app.router.add_post("/revoke", self._oauth("oauth.revoke", self.server.revoke))
        app.router.add_post("/introspect", self._oauth("oauth.introspect", self.server.introspect))

    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.server.metadata())

    async def _jwks(self, request: web.Request) -> web.Response:
        jwks = await asyncio.to_thread(self.server.keyring.jwks)
        return web.json_response(jwks, headers={"Cache-Control": "max-age=60"})

    def _oauth(
        self, action: str, endpoint: Endpoint
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.monotonic()
            address = client_of(request)
            # the HTTP server takes larger bodies (the OpenAI API's); a form is small, and
            # its size is known before it is read (no chunked bodies to buffer)
            if request.content_length is None or request.content_length > MAX_BODY_BYTES:
                why = f"send the form with a Content-Length of at most {MAX_BODY_BYTES} bytes"
                status = 411 if request.content_length is None else 413
                return web.json_response(
                    {"error": "invalid_request", "error_description": why}, status=status
                )
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            try:
                await self._refuse_blocked_principals(request, form)
            except Blocked as exc:
                return _refusal(403, "access_denied", str(exc), exc.block.retry_after_s())
            call = HttpCall(
                method=request.method,
                url=f"{self.server.policy.issuer}{request.path}",
                headers=dict(request.headers),
                form=form,
                remote=address,
            )
            try:
                await self.take_turn()
            except TimeoutError:
                busy = "the sign-in service is busy; retry in a few seconds"
                return _refusal(503, "temporarily_unavailable", busy, 5)
            # shielded: a caller who hangs up (the server cancels its handler) does not
            # cut short the hashing it started, the audit record or intrusion counting
            return await asyncio.shield(
                self._settle(action, endpoint, call, request, form, started)
            )

        return handle

    async def _settle(
        self,
        action: str,
        endpoint: Endpoint,
        call: HttpCall,
        request: web.Request,
        form: dict[str, str],
        started: float,
    ) -> web.Response:
        """Run the OAuth endpoint (its turn to hash is held), audit it, count failures."""
        try:
            status, body, headers = await asyncio.to_thread(endpoint, call)
        finally:
            self.end_turn()
        self.record(action, request, form, status, body, time.monotonic() - started)
        if status >= 400:
            signal = (
                Signal.SIGNIN_FAILED
                if body.get("error") in CREDENTIAL_ERRORS or status == 401
                else Signal.MALFORMED
            )
            with contextlib.suppress(Exception):  # detection must not fail the answer
                await self.detector.observe(signal, call.remote, None)
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return web.json_response(body, status=status, headers={**headers, **NO_STORE})

    async def _refuse_blocked_principals(self, request: web.Request, form: dict[str, str]) -> None:
        """`Blocked` if the client or the person this request names is blocked: a blocked
        principal gets no new tokens (naming one proves nothing, so this blocks nobody
        new; it only keeps a block in force)."""
        client_id = form.get("client_id") or extract_basic_authorization(request.headers)[0]
        named = [client_target(client_id[:FIELD_MAX])] if client_id else []
        if form.get("grant_type") == "password" and form.get("username"):
            named.append(user_target(form["username"][:FIELD_MAX]))
        for target in named:
            await self.detector.firewall.check(target)

    def record(
        self,
        action: str,
        request: web.Request,
        form: dict[str, str],
        status: int,
        body: dict[str, Any],
        elapsed_s: float,
    ) -> None:
        """Audit every OAuth call, granted or refused (never the secrets in it)."""
        record = new_record("gateway", action)
        client_id = form.get("client_id") or extract_basic_authorization(request.headers)[0]
        record.client_id = (client_id or "")[:FIELD_MAX]
        record.principal = (form.get("username", "") or record.client_id)[:FIELD_MAX]
        record.outcome = "OK" if status == 200 else str(body.get("error", status))
        record.detail = str(body.get("error_description", ""))[:500] if status != 200 else ""
        record.resource = f"grant/{form.get('grant_type', '')}" if action == "oauth.token" else ""
        record.latency_ms = elapsed_s * 1000
        record.client_address = client_of(request)
        self._audit.record(record)


#: where the door leaves the client's address (through trusted proxies) for the handlers
CLIENT = "llmos.client_address"


def client_of(request: web.Request) -> str:
    """The caller's address, as the door worked it out."""
    return str(request.get(CLIENT) or canonical_address(request.remote or ""))


def door_middleware(detector: IntrusionDetector) -> Any:
    """Refuse blocked addresses on every endpoint (403, saying until when) and addresses
    over the sign-in rate on the OAuth endpoints (429), before reading the request."""

    @web.middleware
    async def door(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        address = detector.firewall.client_of(
            request.remote or "", request.headers.get("X-Forwarded-For", "")
        )
        request[CLIENT] = address
        try:
            if request.method == "POST" and request.path in SIGNIN_PATHS:
                await detector.signin_door(address)
            else:
                await detector.firewall.check(address_target(address))
        except Blocked as exc:
            if request.path.startswith(OPENAI_PREFIX):
                return failure_of(exc, exc.block.retry_after_s()).response()
            if request.path.startswith(PAGE_PREFIXES):
                return _page_refusal(403, str(exc), exc.block.retry_after_s())
            return _refusal(403, "access_denied", str(exc), exc.block.retry_after_s())
        except ResourceExhausted as exc:
            retry = int(exc.retry_after_s or 60)
            if request.path.startswith(PAGE_PREFIXES):
                return _page_refusal(429, str(exc), retry)
            return _refusal(429, "temporarily_unavailable", str(exc), retry)
        return await handler(request)

    return door


#: paths people open in a browser: the door's refusals there are pages, not JSON
PAGE_PREFIXES = ("/console", "/authorize")


def _page_refusal(status: int, sentence: str, retry_after_s: int) -> web.Response:
    response = page("signin_refused.html", status=status, reason=sentence)
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def _refusal(status: int, error: str, sentence: str, retry_after_s: int) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": sentence},
        status=status,
        headers={"Retry-After": str(retry_after_s), **NO_STORE},
    )


def http_app(detector: IntrusionDetector, max_body_bytes: int) -> web.Application:
    """The gateway's HTTP application, every route behind the door."""
    return web.Application(client_max_size=max_body_bytes, middlewares=[door_middleware(detector)])


def bind_listener(host: str, port: int) -> socket.socket:
    """The HTTP endpoints' listening socket, bound now (port 0: any free one) so the
    issuer's URL is known before the routes that need the rest of the gateway exist."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


async def serve_http(
    app: web.Application, listener: socket.socket, tls: ssl.SSLContext | None
) -> web.AppRunner:
    """Serve `app` on the bound `listener`; returns the runner (for cleanup). A handler
    whose client disconnects is cancelled, so a closed stream frees its work at once."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.SockSite(runner, listener, ssl_context=tls).start()
    return runner
