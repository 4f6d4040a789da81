"""Relaying public RPCs to an internal service from a table: one entry per RPC saying
who may call it, whose tenant it acts for and what its audit record names, and one
generic relay that applies the entry and forwards the call.

The rule an entry names decides the tenant a request acts on; the gateway then vouches
for exactly that tenant in the call's signed assertion (`gateway/vouching.py`), and the
internal service acts on the assertion, not on the request's field. Refusals
of the internal service are relayed as they are (`llmos.links.ServiceLink`). An RPC that
needs more than a table entry says (an upload stream, say) stays a method of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.auth.principal import Principal, call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import InvalidArgument, PermissionDenied
from llmos.links import ServiceLink

#: How a request's tenant is decided, given the caller; raises to refuse.
TenantRule = Callable[[Any, Principal], None]


def callers_tenant(request: Any, principal: Principal) -> None:
    """The request acts for the caller's tenant, whatever it named."""
    request.tenant = principal.tenant


def named_tenant(request: Any, principal: Principal) -> None:
    """The request must name the tenant it acts on (store-wide RPCs of system admins)."""
    if not request.tenant:
        raise InvalidArgument("tenant", "is required")


def no_tenant(request: Any, principal: Principal) -> None:
    """The request acts on no tenant in particular."""


def no_resource(request: Any) -> str:
    """The call's audit record names no resource."""
    return ""


@dataclass(frozen=True)
class Route:
    """How one RPC is relayed."""

    #: whose tenant the request acts for
    tenant: TenantRule
    #: the resource the call's audit record names ("" leaves it unset)
    resource: Callable[[Any], str] = no_resource
    #: if set, the refusal for callers outside the system tenant
    system_only: str = ""
    #: a server-streaming RPC (relayed message by message) rather than a unary one
    streams: bool = False
    #: what else the request must satisfy (raises the refusal)
    check: Callable[[Any], None] = lambda _: None


def admit(route: Route, request: Any) -> None:
    """Apply `route` to `request` and the call's record; refuse what it forbids."""
    principal = caller()
    if route.system_only and principal.tenant != SYSTEM_TENANT:
        raise PermissionDenied(route.system_only)
    route.tenant(request, principal)
    route.check(request)
    resource = route.resource(request)
    if resource:
        call_record().resource = resource


class RoutedRelay:
    """Base of a servicer whose RPCs are relayed by a table: a subclass passes
    `routes=` and gets one method per entry, forwarding to `self.link`."""

    routes: ClassVar[Mapping[str, Route]]

    def __init__(self, link: ServiceLink) -> None:
        self.link = link

    def __init_subclass__(cls, routes: Mapping[str, Route], **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.routes = routes
        for method, route in routes.items():
            if method in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{method} is both a method and a route")
            relay = _streaming(method, route) if route.streams else _unary(method, route)
            relay.__name__ = relay.__qualname__ = method
            setattr(cls, method, relay)


def _unary(method: str, route: Route) -> Callable[..., Any]:
    async def relay(self: RoutedRelay, request: Any, context: Any) -> Any:
        admit(route, request)
        return await self.link.ask(method, request, context)

    return relay


def _streaming(method: str, route: Route) -> Callable[..., Any]:
    async def relay(self: RoutedRelay, request: Any, context: Any) -> AsyncIterator[Any]:
        admit(route, request)
        async for message in self.link.stream(method, request, context):
            yield message

    return relay
