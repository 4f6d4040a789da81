"""Who may call which internal RPC: one table, and the guard every internal server runs.

An internal server only accepts connections with a certificate of the internal CA
(`llmos.identity`), so every call arrives with a verified service identity. This module
decides what that identity may do:

- `for_users`: services that call *on behalf of a person or program*. They must attach
  a tenant assertion the gateway signed for this service (`llmos.assertions`); the
  request then acts on the assertion's tenant, whatever tenant field it carries.
- `as_service`: services that call *in their own name* (a worker fetching a model, a
  trainer storing a checkpoint). No assertion is needed; one that comes along is
  verified and applied the same way.
- `system_admin`: the assertion must name an admin of the system tenant as well.

Anyone else is refused with PERMISSION_DENIED and a sentence, and the refusal is audited.
Health checks and reflection are open to every identity of the CA (the launcher,
`llmos status`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from llmos.assertions import METADATA_KEY, Assertion, AssertionVerifier
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import LLMOSError, PermissionDenied, Unauthenticated
from llmos.identity import Peer, peer_of

log = logging.getLogger("llmos.callers")

SYSTEM_TENANT = "system"
ADMIN_SCOPE = "admin"

GATEWAY = "gateway"
SCHEDULER = "scheduler"
STORAGE = "storage"
TRAINER = "trainer"
WORKER = "inference-worker"


@dataclass(frozen=True)
class Allowed:
    """Who may call one RPC, and how."""

    for_users: frozenset[str] = frozenset()
    as_service: frozenset[str] = frozenset()
    system_admin: bool = False


def _allowed(
    for_users: tuple[str, ...] = (), as_service: tuple[str, ...] = (), system_admin: bool = False
) -> Allowed:
    return Allowed(frozenset(for_users), frozenset(as_service), system_admin)


USERS = _allowed(for_users=(GATEWAY,))
SYSTEM_ADMINS = _allowed(for_users=(GATEWAY,), system_admin=True)
#: reading the registry and blobs: the gateway for users; services fetching models
READ_MODELS = _allowed(for_users=(GATEWAY,), as_service=(SCHEDULER, TRAINER, WORKER))
#: publishing models, checkpoints: the gateway for users; trainers and workers (which
#: publish the bundled default model) in their own name
WRITE_MODELS = _allowed(for_users=(GATEWAY,), as_service=(TRAINER, WORKER))
DESCRIBE = _allowed(as_service=(GATEWAY, SCHEDULER, "operator"))

#: Full method name -> who may call it. A method not listed is refused to everyone.
POLICY: Mapping[str, Allowed] = {
    # storage
    "/llmos.v1.Storage/GetStorageStats": USERS,
    "/llmos.v1.Storage/UploadBlob": WRITE_MODELS,
    "/llmos.v1.Storage/GetUpload": WRITE_MODELS,
    "/llmos.v1.Storage/DownloadBlob": READ_MODELS,
    "/llmos.v1.Storage/DeleteBlob": WRITE_MODELS,
    "/llmos.v1.Storage/CreateDataset": USERS,
    "/llmos.v1.Storage/GetDataset": _allowed(for_users=(GATEWAY,), as_service=(SCHEDULER, TRAINER)),
    "/llmos.v1.Storage/ListDatasets": USERS,
    "/llmos.v1.Storage/DeleteDataset": USERS,
    "/llmos.v1.Storage/CreateModelVersion": WRITE_MODELS,
    "/llmos.v1.Storage/GetModelVersion": READ_MODELS,
    "/llmos.v1.Storage/ListModelVersions": READ_MODELS,
    "/llmos.v1.Storage/SetAlias": WRITE_MODELS,
    "/llmos.v1.Storage/DeleteModelVersion": USERS,
    "/llmos.v1.Storage/SetStorageQuota": SYSTEM_ADMINS,
    "/llmos.v1.Storage/RotateStorageKey": SYSTEM_ADMINS,
    "/llmos.v1.Storage/BackupStorage": SYSTEM_ADMINS,
    "/llmos.v1.Storage/RestoreStorage": SYSTEM_ADMINS,
    # scheduler
    "/llmos.v1.Scheduler/GetClusterStatus": _allowed(for_users=(GATEWAY,), as_service=(GATEWAY,)),
    "/llmos.v1.Scheduler/SubmitJob": USERS,
    "/llmos.v1.Scheduler/GetJob": USERS,
    "/llmos.v1.Scheduler/ListJobs": USERS,
    "/llmos.v1.Scheduler/CancelJob": USERS,
    "/llmos.v1.Scheduler/WatchJob": USERS,
    "/llmos.v1.Scheduler/DeployModel": USERS,
    # audit
    "/llmos.v1.Audit/VerifyAudit": USERS,
    "/llmos.v1.Audit/QueryAudit": USERS,
    # workers and trainers
    "/llmos.v1.InferenceWorker/DescribeWorker": DESCRIBE,
    "/llmos.v1.InferenceWorker/LoadModel": _allowed(as_service=(SCHEDULER,)),
    "/llmos.v1.InferenceWorker/UnloadModel": _allowed(as_service=(SCHEDULER,)),
    "/llmos.v1.Trainer/DescribeTrainer": DESCRIBE,
}

#: open to every identity of the internal CA
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Caller:
    """Who a call inside comes from, and for whom it acts (None: in its own name)."""

    peer: Peer
    assertion: Assertion | None


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "llmos_internal_caller", default=None
)


def current_caller() -> Caller | None:
    """The caller of the RPC being served (None outside one)."""
    return _current.get()


def decide(
    method: str, peer: Peer | None, token: str | None, verifier: AssertionVerifier
) -> Caller | None:
    """The caller of `method`, or the refusal (raised); None for open methods."""
    if method.startswith(OPEN_PREFIXES):
        return None
    if peer is None:
        raise Unauthenticated("internal calls need a client certificate of the internal CA")
    rule = POLICY.get(method)
    if rule is None or peer.service not in rule.for_users | rule.as_service:
        raise PermissionDenied(f"{peer.service} may not call {method.rsplit('/', 1)[-1]}")
    assertion = verifier.verify(token) if token else None
    if assertion is None and peer.service not in rule.as_service:
        raise Unauthenticated(
            f"{method.rsplit('/', 1)[-1]} acts for a tenant: it needs the gateway's "
            f"signed tenant assertion ({METADATA_KEY})"
        )
    if rule.system_admin and not (
        assertion is not None
        and assertion.principal_tenant == SYSTEM_TENANT
        and ADMIN_SCOPE in assertion.scopes
    ):
        raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} is for admins of the system tenant")
    return Caller(peer, assertion)


def _token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and isinstance(value, str):
            return value
    return None


class InternalGuard:
    """The `CallGuard` of every internal server: caller policy, assertion, audit of
    refusals; applies the asserted tenant to each request (`admit`)."""

    def __init__(self, service: str, verifier: AssertionVerifier, audit: AuditPublisher) -> None:
        self._service = service
        self._verifier = verifier
        self._audit = audit

    @asynccontextmanager
    async def guard(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        peer = peer_of(context)
        try:
            caller = decide(method, peer, _token(context), self._verifier)
        except LLMOSError as refusal:
            self._record_refusal(method, peer, refusal)
            raise
        token = _current.set(caller)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # finalized in another context
                _current.reset(token)

    def admit(self, request: Any) -> Any:
        """The request acting on the asserted tenant (and owner), whatever it said."""
        caller = _current.get()
        if caller is not None and caller.assertion is not None:
            apply_assertion(request, caller.assertion)
        return request

    def _record_refusal(self, method: str, peer: Peer | None, refusal: LLMOSError) -> None:
        record = new_record(self._service, method)
        record.principal = str(peer) if peer else "unknown"
        record.outcome = "denied"
        record.detail = str(refusal)
        self._audit.record(record)
        log.warning(
            "internal call refused",
            extra={"method": method, "caller": record.principal, "reason": str(refusal)},
        )


def apply_assertion(request: Any, assertion: Assertion) -> None:
    """Set the request's `tenant` (and a job's `owner`) from the assertion."""
    fields = request.DESCRIPTOR.fields_by_name
    if "tenant" in fields:
        request.tenant = assertion.tenant
    if "owner" in fields:
        request.owner = assertion.principal
