"""The gateway's policy around every public RPC: refuse a blocked address or principal,
verify the bearer token, check the RPC's scope, admit the call (not blocked, not
revoked, identity not deleted, under the rate limits: one Redis round trip), then
(whatever happened) charge the model tokens it used, count what intrusion detection
watches for, and publish its audit record. Plugged into the one call interceptor
(`llmos.rpc.CallContextInterceptor`) every LLM OS server has.

A caller refused by a block costs the gateway little: a block this replica saw in the
last seconds refuses the call before the token is even read; otherwise the block is
found by the admission script, or by one GET when the token itself is bad. Those
refusals are not audited one by one (a flood would flood the log); the block is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from gateway.auth.api_keys import ApiKeyVerifier, is_api_key
from gateway.auth.principal import CallRecord, Principal, current_call
from gateway.auth.scopes import allows, required_scope
from gateway.auth.verifier import StaleToken, TokenVerifier
from gateway.firewall import Blocked, address_target, grpc_peer_address, principal_target
from gateway.intrusion import IntrusionDetector, Signal
from gateway.limits import Admission, RateLimited
from gateway.metrics import AUTH_FAILURES, RATE_LIMITED
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unsupported
from llmos.log import request_id_var
from llmos.redaction import RedactionPolicy
from llmos.rpc import outcome_of


class GatewayGuard:
    """Authentication, authorization, rate limits and audit for each call."""

    def __init__(
        self,
        verifier: TokenVerifier,
        admission: Admission,
        audit: AuditPublisher,
        token_endpoint: str,
        policy: RedactionPolicy,
        detector: IntrusionDetector,
        api_keys: ApiKeyVerifier,
    ) -> None:
        self._verifier = verifier
        self._api_keys = api_keys
        self._admission = admission
        self._detector = detector
        self._firewall = detector.firewall
        self._audit = audit
        self._token_hint = token_endpoint
        self._policy = policy

    def admit(self, request: Any) -> Any:
        """Public requests reach their handler as sent (the relays decide their tenant)."""
        return request

    @asynccontextmanager
    async def guard(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        scope = required_scope(method)
        if scope is None:  # health and reflection: public, not audited
            yield
            return
        record = CallRecord()
        token = current_call.set(record)
        started = time.monotonic()
        failure: BaseException | None = None
        address = self._firewall.client_of(
            grpc_peer_address(context.peer() or ""), _metadata(context, FORWARDED_FOR)
        )
        door = None if self._firewall.exempt(address) else address_target(address)
        try:
            if door is not None:
                self._firewall.refuse_if_remembered(door)
            try:
                principal = await self._principal(self._bearer(context))
            except Unauthenticated:
                if door is not None:
                    await self._firewall.check(door)  # a blocked address hears so
                raise
            record.principal = principal
            self._firewall.refuse_if_remembered(principal_target(principal))
            if not allows(principal.scopes, method, scope):
                granted = ", ".join(sorted(principal.scopes)) or "none"
                raise PermissionDenied(
                    f"this call needs scope {scope!r}; the token grants: {granted}"
                )
            await self._admission.admit(principal, door)
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            current_call.reset(token)
            # refused at the door: counted and audited when the block was set
            if not isinstance(failure, Blocked):
                await self._observe(signal_of(failure), address, record)
                elapsed_s = time.monotonic() - started
                await self._finish(method, context, address, record, failure, elapsed_s)

    async def _principal(self, bearer: str) -> Principal:
        """Who the bearer is: an API key, or an access token."""
        if is_api_key(bearer):
            return await self._api_keys.verify(bearer)
        return await self._verifier.verify(bearer)

    async def _observe(self, signal: Signal | None, address: str, call: CallRecord) -> None:
        """Tell intrusion detection about a failed call; it must not fail the call."""
        if signal is not None:
            with contextlib.suppress(Exception):
                await self._detector.observe(signal, address, call.principal)

    def _bearer(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, credentials = value.partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    return credentials.strip()
                raise Unauthenticated("authorization must be 'Bearer <access token or API key>'")
        raise Unauthenticated(
            "no bearer token: send 'authorization: Bearer <access token or API key>' "
            f"(tokens come from {self._token_hint})"
        )

    async def _finish(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        address: str,
        call: CallRecord,
        failure: BaseException | None,
        elapsed_s: float,
    ) -> None:
        principal = call.principal
        if principal is not None and call.tokens:
            # quota accounting must not turn a served call into an error; shielded so a
            # call cancelled again while finishing (the caller went away) is still charged
            with contextlib.suppress(Exception):
                await asyncio.shield(self._admission.charge_tokens(principal, call.tokens))
        _count(failure, principal)
        code, detail = outcome_of(failure)
        record = new_record("gateway", method)
        record.request_id = request_id_var.get()
        if principal is not None:
            record.principal = principal.subject
            record.client_id = principal.client_id
            record.tenant = principal.tenant
        record.resource = call.resource
        record.outcome = code.name
        record.detail = detail[:500]
        record.latency_ms = elapsed_s * 1000
        record.tokens = call.tokens
        peer = context.peer() or ""
        proxied = address != grpc_peer_address(peer)
        record.client_address = f"{address} via {peer}" if proxied else peer
        record.prompt = self._policy.content_text(call.prompt)
        record.output = self._policy.content_text(call.output)
        self._audit.record(record)


def _count(failure: BaseException | None, principal: Principal | None) -> None:
    """The refusals Prometheus counts (gateway/metrics.py)."""
    if isinstance(failure, RateLimited):
        RATE_LIMITED.labels(principal.tenant if principal else "").inc()
    elif isinstance(failure, Unauthenticated):
        AUTH_FAILURES.labels("stale" if isinstance(failure, StaleToken) else "invalid").inc()


#: the metadata (and HTTP header) a proxy names the client's address in
FORWARDED_FOR = "x-forwarded-for"


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    """The call's last `key` metadata value, "" if none (a proxy appends its own)."""
    values = [v for k, v in context.invocation_metadata() or () if k == key]
    return values[-1] if values and isinstance(values[-1], str) else ""


def signal_of(failure: BaseException | None) -> Signal | None:
    """What intrusion detection counts for a call that ended with `failure`: not a token
    that merely went stale, nor a limit others used up."""
    if isinstance(failure, StaleToken | Unsupported):
        return None
    if isinstance(failure, Unauthenticated):
        return Signal.BAD_TOKEN
    if isinstance(failure, RateLimited):
        return Signal.RATE_LIMITED if failure.own else None
    if isinstance(failure, PermissionDenied):
        return Signal.DENIED
    if isinstance(failure, InvalidArgument):
        return Signal.MALFORMED
    return None
