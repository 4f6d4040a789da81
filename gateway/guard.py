"""The gateway's policy around every public RPC: authenticate the bearer token, check the
RPC's scope, admit the call under the rate limits, then (whatever happened) charge the
model tokens it used and publish its audit record. Plugged into the one call
interceptor (`llmos.rpc.CallContextInterceptor`) every LLM OS server has."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import redis.asyncio as aioredis

from gateway.auth.identities import PREFIX, Limits, deleted_key
from gateway.auth.principal import CallRecord, Principal, current_call
from gateway.auth.scopes import required_scope
from gateway.auth.verifier import TokenVerifier
from gateway.limits import LimitSet, RateLimiter
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import PermissionDenied, Unauthenticated
from llmos.log import request_id_var
from llmos.rpc import outcome_of

#: How long a principal's configured limits are reused before re-reading them.
LIMITS_CACHE_S = 2.0
LIMITS_CACHE_SIZE = 10_000


class GatewayGuard:
    """Authentication, authorization, rate limits and audit for each call."""

    def __init__(
        self,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        audit: AuditPublisher,
        redis: aioredis.Redis,
        default_limits: Limits,
        token_endpoint: str,
    ) -> None:
        self._verifier = verifier
        self._limiter = limiter
        self._audit = audit
        self._redis = redis
        self._default = default_limits
        self._token_hint = token_endpoint
        self._limits: dict[tuple[str, str], tuple[float, LimitSet]] = {}

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
        try:
            principal = await self._verifier.verify(self._bearer(context))
            record.principal = principal
            if scope not in principal.scopes:
                granted = ", ".join(sorted(principal.scopes)) or "none"
                raise PermissionDenied(
                    f"this call needs scope {scope!r}; the token grants: {granted}"
                )
            await self._limiter.admit(principal, await self._limits_of(principal))
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            current_call.reset(token)
            await self._finish(method, context, record, failure, time.monotonic() - started)

    def _bearer(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, credentials = value.partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    return credentials.strip()
                raise Unauthenticated("authorization metadata must be 'Bearer <access token>'")
        raise Unauthenticated(
            "no bearer token: send metadata 'authorization: Bearer <access token>' "
            f"(tokens come from {self._token_hint})"
        )

    async def _limits_of(self, principal: Principal) -> LimitSet:
        """The principal's client and tenant limits, and whether its client or user was
        deleted since the token was issued (cached briefly; one Redis round trip)."""
        cache_key = (principal.client_id, principal.tenant)
        cached = self._limits.get(cache_key)
        if cached and time.monotonic() - cached[0] < LIMITS_CACHE_S:
            return cached[1]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(f"{PREFIX}client:{principal.client_id}")
            pipe.hget(f"{PREFIX}tenant:{principal.tenant}", "limits")
            pipe.exists(deleted_key("client", principal.client_id))
            pipe.exists(deleted_key("user", principal.subject) if principal.is_user else "-")
            client_raw, tenant_raw, client_gone, user_gone = await pipe.execute()
        if client_gone or user_gone:
            whose = "user" if user_gone else "client"
            raise Unauthenticated(f"the {whose} this token was issued to has been deleted")
        client = json.loads(client_raw)["limits"] if client_raw else {}
        tenant = json.loads(tenant_raw) if tenant_raw else {}
        limits = LimitSet(
            client_rpm=int(client.get("requests_per_minute", 0)),
            client_tpm=int(client.get("tokens_per_minute", 0)),
            tenant_rpm=int(tenant.get("requests_per_minute", self._default.requests_per_minute)),
            tenant_tpm=int(tenant.get("tokens_per_minute", self._default.tokens_per_minute)),
        )
        if len(self._limits) >= LIMITS_CACHE_SIZE:
            self._limits.clear()
        self._limits[cache_key] = (time.monotonic(), limits)
        return limits

    async def _finish(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        call: CallRecord,
        failure: BaseException | None,
        elapsed_s: float,
    ) -> None:
        principal = call.principal
        if principal is not None and call.tokens:
            # quota accounting must not turn a served call into an error
            with contextlib.suppress(Exception):
                await self._limiter.charge_tokens(principal, call.tokens)
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
        record.client_address = context.peer() or ""
        self._audit.record(record)
