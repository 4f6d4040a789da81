"""The gateway's policy around every public RPC: verify the bearer token, check the RPC's
scope, admit the call (not revoked, identity not deleted, under the rate limits: one
Redis round trip), then (whatever happened) charge the model tokens it used and publish
its audit record. Plugged into the one call
interceptor (`llmos.rpc.CallContextInterceptor`) every LLM OS server has."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from gateway.auth.principal import CallRecord, current_call
from gateway.auth.scopes import required_scope
from gateway.auth.verifier import TokenVerifier
from gateway.limits import Admission
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import PermissionDenied, Unauthenticated
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
    ) -> None:
        self._verifier = verifier
        self._admission = admission
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
        try:
            principal = await self._verifier.verify(self._bearer(context))
            record.principal = principal
            if scope not in principal.scopes:
                granted = ", ".join(sorted(principal.scopes)) or "none"
                raise PermissionDenied(
                    f"this call needs scope {scope!r}; the token grants: {granted}"
                )
            await self._admission.admit(principal)
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
            # quota accounting must not turn a served call into an error; shielded so a
            # call cancelled again while finishing (the caller went away) is still charged
            with contextlib.suppress(Exception):
                await asyncio.shield(self._admission.charge_tokens(principal, call.tokens))
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
        record.prompt = self._policy.content_text(call.prompt)
        record.output = self._policy.content_text(call.output)
        self._audit.record(record)
