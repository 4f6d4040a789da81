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
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from llmos.assertions import METADATA_KEY, Assertion, AssertionVerifier
from llmos.auditing import AuditPublisher, new_record
from llmos.errors import LLMOSError, PermissionDenied, Unauthenticated
from llmos.identity import OPERATOR, Peer, peer_of

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
    #: services calling in their own name that may act on these tenants only
    service_tenants: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _allowed(
    for_users: tuple[str, ...] = (),
    as_service: tuple[str, ...] = (),
    system_admin: bool = False,
    service_tenants: Mapping[str, frozenset[str]] | None = None,
) -> Allowed:
    return Allowed(
        frozenset(for_users), frozenset(as_service), system_admin, dict(service_tenants or {})
    )


USERS = _allowed(for_users=(GATEWAY,))
SYSTEM_ADMINS = _allowed(for_users=(GATEWAY,), system_admin=True)
#: reading the registry and blobs: the gateway for users; services fetching models
READ_MODELS = _allowed(for_users=(GATEWAY,), as_service=(SCHEDULER, TRAINER, WORKER))
#: a worker writes only the bundled default model, which belongs to the system tenant
_WORKER_SYSTEM_ONLY = {WORKER: frozenset({SYSTEM_TENANT})}
#: storing checkpoints and results: trainers; the bundled model: workers
WRITE_MODELS = _allowed(
    for_users=(GATEWAY,), as_service=(TRAINER, WORKER), service_tenants=_WORKER_SYSTEM_ONLY
)
DESCRIBE = _allowed(as_service=(GATEWAY, SCHEDULER, OPERATOR))

#: Full method name -> who may call it. A method not listed is refused to everyone.
POLICY: Mapping[str, Allowed] = {
    # storage
    "/llmos.v1.Storage/GetStorageStats": SYSTEM_ADMINS,
    "/llmos.v1.Storage/UploadBlob": WRITE_MODELS,
    "/llmos.v1.Storage/GetUpload": USERS,
    "/llmos.v1.Storage/DownloadBlob": READ_MODELS,
    # the scheduler deletes the checkpoints a newer one replaced
    "/llmos.v1.Storage/DeleteBlob": _allowed(for_users=(GATEWAY,), as_service=(SCHEDULER,)),
    "/llmos.v1.Storage/CreateDataset": USERS,
    "/llmos.v1.Storage/GetDataset": _allowed(for_users=(GATEWAY,), as_service=(SCHEDULER, TRAINER)),
    "/llmos.v1.Storage/ListDatasets": USERS,
    "/llmos.v1.Storage/DeleteDataset": USERS,
    "/llmos.v1.Storage/CreateModelVersion": WRITE_MODELS,
    "/llmos.v1.Storage/GetModelVersion": READ_MODELS,
    "/llmos.v1.Storage/ListModelVersions": USERS,
    # the bundled model's `production` alias; users' deployments come through the gateway
    "/llmos.v1.Storage/SetAlias": _allowed(
        for_users=(GATEWAY,), as_service=(WORKER,), service_tenants=_WORKER_SYSTEM_ONLY
    ),
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
    rule: Allowed = field(default_factory=Allowed)

    def admit(self, request: Any) -> None:
        """Make `request` act on the asserted tenant; refuse a service acting in its own
        name on a tenant its rule does not give it."""
        if self.assertion is not None:
            apply_assertion(request, self.assertion)
            return
        tenants = self.rule.service_tenants.get(self.peer.service)
        if tenants is not None:
            for tenant in request_tenants(request):
                if tenant not in tenants:
                    raise PermissionDenied(
                        f"{self.peer.service} may act only on tenant(s) "
                        f"{', '.join(sorted(tenants))}, not {tenant!r}"
                    )


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "llmos_internal_caller", default=None
)


def current_caller() -> Caller | None:
    """The caller of the RPC being served (None outside one)."""
    return _current.get()


def for_system_admin(assertion: Assertion) -> bool:
    """Whether the call acts for an admin of the system tenant (who sees every tenant)."""
    return assertion.principal_tenant == SYSTEM_TENANT and ADMIN_SCOPE in assertion.scopes


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
    if rule.system_admin and not (assertion is not None and for_system_admin(assertion)):
        raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} is for admins of the system tenant")
    return Caller(peer, assertion, rule)


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
        """The request acting on the asserted tenant (and owner), whatever it said; a
        service's own request only on the tenants its rule gives it (refusals audited)."""
        caller = _current.get()
        if caller is not None:
            try:
                caller.admit(request)
            except LLMOSError as refusal:
                self._record_refusal(type(request).__name__, caller.peer, refusal)
                raise
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


@functools.cache
def _tenant_fields(descriptor: Any) -> tuple[bool, tuple[str, ...]]:
    """For one message type: whether it names a tenant itself, and its singular
    sub-message fields whose type does (an upload's `start`). Worked out once per type:
    every internal call asks."""
    nested = tuple(
        f.name
        for f in descriptor.fields
        if f.type == f.TYPE_MESSAGE
        and not f.is_repeated
        and "tenant" in f.message_type.fields_by_name
    )
    return "tenant" in descriptor.fields_by_name, nested


def _tenant_holders(request: Any) -> list[Any]:
    """The request and the sub-messages it carries that name a tenant, one level down."""
    own, nested = _tenant_fields(request.DESCRIPTOR)
    holders = [request] if own else []
    holders += [getattr(request, name) for name in nested if request.HasField(name)]
    return holders


def request_tenants(request: Any) -> list[str]:
    """The tenants a request names."""
    return [holder.tenant for holder in _tenant_holders(request)]


def apply_assertion(request: Any, assertion: Assertion) -> None:
    """Set every `tenant` the request names (and a job's `owner`) from the assertion."""
    for holder in _tenant_holders(request):
        holder.tenant = assertion.tenant
    if "owner" in request.DESCRIPTOR.fields_by_name:
        request.owner = assertion.principal
