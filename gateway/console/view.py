"""One console request as its page handler sees it: who is signed in, the public API to
call on their behalf, and rendering with the layout's navigation.

API calls run the public gRPC servicers' own methods in-process, inside the same guard
as a gRPC call (`GatewayGuard.guard`) with the session's access token as the bearer:
scopes, tenant rules, blocks, rate limits, intrusion signals and the audit record are
the API's. The console itself decides nothing about who may do what; it only hides
links to pages whose calls would be refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.auth.scopes import (
    ADMIN,
    AUDIT_READ,
    CLUSTER_READ,
    DATASETS,
    INFERENCE,
    MODELS_READ,
    TRAINING,
)
from gateway.console.sessions import ConsoleSession
from gateway.guard import GatewayGuard
from gateway.openai.http import HttpCallContext
from gateway.web.render import page
from llmos.log import request_id_var
from llmos.rpc import request_id_from


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    scope: str


#: the console's pages, in the order of the navigation, with the scope each needs
NAVIGATION = (
    NavItem("/console/chat", "Chat", INFERENCE),
    NavItem("/console/assistant", "Assistant", INFERENCE),
    NavItem("/console/models", "Models", MODELS_READ),
    NavItem("/console/datasets", "Datasets", DATASETS),
    NavItem("/console/training", "Training", TRAINING),
    NavItem("/console/cluster", "Cluster", CLUSTER_READ),
    NavItem("/console/admin", "Administration", ADMIN),
    NavItem("/console/audit", "Audit", AUDIT_READ),
)

#: request headers that never reach the API: the browser's cookies, and any credential
#: other than the session's own
DROPPED_HEADERS = frozenset({"authorization", "cookie", "x-api-key"})


class SessionCallContext(HttpCallContext):
    """The browser's request as a gRPC call's context, with the session's token as
    the bearer: the peer and proxy headers stay the browser's, so blocks and intrusion
    signals land on the person's address, not the gateway's own."""

    def __init__(
        self, request: web.Request, access_token: str, request_id: str, timeout_s: float | None
    ) -> None:
        super().__init__(request)
        self._bearer = access_token
        self._request_id = request_id
        self._deadline = time.monotonic() + timeout_s if timeout_s else None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        kept = tuple((k, v) for k, v in super().invocation_metadata() if k not in DROPPED_HEADERS)
        return (
            *kept,
            ("authorization", f"Bearer {self._bearer}"),
            ("x-request-id", self._request_id),
        )

    def time_remaining(self) -> float | None:
        """What is left of the call's own time limit (None: the API's default)."""
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.1)


class Api:
    """The public API's servicers by service name (Gateway, Applications, Admin, Storage,
    Audit)."""

    def __init__(self, guard: GatewayGuard, servicers: Mapping[str, Any]) -> None:
        self._guard = guard
        self._servicers = dict(servicers)

    async def call(
        self,
        request: web.Request,
        session: ConsoleSession,
        rpc: str,
        message: Any,
        timeout_s: float | None = None,
    ) -> Any:
        """`rpc` ("Admin/CreateTenant") as the session's holder, within `timeout_s` (None:
        the API's default deadline); raises the API's domain errors (`llmos.errors`) as a
        gRPC caller would see them."""
        service, _, method = rpc.partition("/")
        handler = getattr(self._servicers[service], method)
        rid = request_id_from(())
        token = request_id_var.set(rid)
        context = SessionCallContext(request, session.tokens.access_token, rid, timeout_s)
        try:
            async with self._guard.guard(f"/llmos.v1.{rpc}", context):
                return await handler(message, context)
        finally:
            request_id_var.reset(token)


async def _as_they_are() -> None:
    """Tokens left as they are (a view whose session needs no refreshing)."""


@dataclass
class View:
    """A console request with a live session."""

    request: web.Request
    session: ConsoleSession
    api: Api
    #: refreshes the session's tokens if they expire soon: before every call, since a
    #: long handler (an upload, an export) may outlive the token it started with
    renew: Callable[[], Awaitable[None]] = _as_they_are

    async def call(self, rpc: str, message: Any, timeout_s: float | None = None) -> Any:
        """One call of the public API as the signed-in person."""
        await self.renew()
        return await self.api.call(self.request, self.session, rpc, message, timeout_s)

    def may(self, scope: str) -> bool:
        return scope in self.session.tokens.scopes

    def as_bearer(self) -> web.Request:
        """The browser's request as an API client's: the session's token as its bearer,
        the browser's cookies and any other credential left behind (for pages whose
        script calls an HTTP endpoint of the API itself: chat, the assistant)."""
        headers = CIMultiDict(
            (k, v) for k, v in self.request.headers.items() if k.lower() not in DROPPED_HEADERS
        )
        headers["Authorization"] = f"Bearer {self.session.tokens.access_token}"
        return self.request.clone(headers=headers)

    async def form(self) -> dict[str, str]:
        """The posted form's text fields (the CSRF check has read it already)."""
        return {k: v for k, v in (await self.request.post()).items() if isinstance(v, str)}

    def render(self, template: str, status: int = 200, **context: Any) -> web.Response:
        """A page in the console's layout."""
        tokens = self.session.tokens
        return page(
            template,
            status=status,
            nav=[item for item in NAVIGATION if item.scope in tokens.scopes],
            current=self.request.path,
            user=tokens.username,
            tenant=tokens.tenant,
            csrf=self.session.csrf,
            **context,
        )


async def chunks(request: web.Request, size: int) -> AsyncIterator[bytes]:
    """The request body in pieces of up to `size` bytes, as they arrive."""
    while True:
        piece = await request.content.read(size)
        if not piece:
            return
        yield piece
