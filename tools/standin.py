"""Clients that call internal services directly, as tests and benchmarks do.

Internal servers accept only mutual TLS from identities of the internal CA, and calls
acting for a tenant must carry the gateway's signed assertion (`llmos.callers`). A test
that talks to storage or the scheduler directly therefore stands in for the gateway: it
holds a gateway certificate issued from the secrets dir's CA and signs, for each call,
an assertion for the tenant the request names, as the gateway would after checking a
token. The attack tests use the same pieces to be someone else (`identity_for`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from llmos.assertions import METADATA_KEY, Assertion, AssertionSigner
from llmos.callers import request_tenants
from llmos.identity import ServiceIdentity, channel_options
from llmos.natsperms import inbox_prefix
from llmos.trust import credentials_file, read_credentials

SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    """Who the stand-in says asked (a system admin unless a test says otherwise)."""

    subject: str = "test-operator"
    tenant: str = SYSTEM
    scopes: frozenset[str] = frozenset({"admin", "models:read", "inference", "cluster:read"})


def identity_for(secrets_dir: Path, service: str, instance: str = "test") -> ServiceIdentity:
    """A certificate of `service` from the secrets dir's CA (for a test: anyone's)."""
    return ServiceIdentity.self_issued(secrets_dir, service, instance)


def internal_channel(
    address: str,
    service: str,
    secrets_dir: Path,
    *,
    caller: str = "gateway",
    principal: Principal | None = Principal(),
    max_message: int = 16 << 20,
) -> grpc.Channel:
    """A channel to `service` at `address` as `caller`; with a `principal`, each call
    carries an assertion for the tenant its request names."""
    identity = identity_for(secrets_dir, caller)
    channel = grpc.secure_channel(
        address,
        identity.channel_credentials(),
        options=channel_options(service, [("grpc.max_receive_message_length", max_message)]),
    )
    if principal is None:
        return channel
    signer = AssertionSigner(secrets_dir, issuer=str(identity.peer))
    return grpc.intercept_channel(channel, _Vouching(signer, service, principal))


class _Vouching(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    """Adds the assertion for the tenant of the request (the first one of a stream)."""

    def __init__(self, signer: AssertionSigner, audience: str, principal: Principal) -> None:
        self._signer = signer
        self._audience = audience
        self._principal = principal

    def _details(self, details: Any, request: Any) -> Any:
        named = request_tenants(request) if request is not None else []
        token = self._signer.sign(
            tenant=named[0] if named else self._principal.tenant,
            principal=self._principal.subject,
            principal_tenant=self._principal.tenant,
            scopes=self._principal.scopes,
            request_id="",
            audience=self._audience,
        )
        return details._replace(metadata=[*(details.metadata or ()), (METADATA_KEY, token)])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, request), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, request), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        first, rest = _peek(requests)
        chained = itertools.chain([first], rest) if first is not None else iter(())
        return continuation(self._details(details, first), chained)


def _peek(requests: Any) -> tuple[Any, Iterator[Any]]:
    iterator = iter(requests)
    return next(iterator, None), iterator


def nats_login_as(secrets_dir: Path, user: str) -> dict[str, Any]:
    """`nats.connect` keyword arguments to log in as `user` (a service, or "setup")."""
    creds = read_credentials(credentials_file(secrets_dir / "nats", user))
    return {
        "user": creds.user,
        "password": creds.password.reveal(),
        "inbox_prefix": inbox_prefix(creds.user),
    }


def sign_assertion(secrets_dir: Path, **changes: Any) -> str:
    """An assertion signed with the gateway's key in `secrets_dir`: for alice of tenant
    acme, to storage, valid a minute, unless `changes` say otherwise (the attack tests
    forge stale and misdirected ones with it)."""
    claims: dict[str, Any] = {
        "tenant": "acme",
        "principal": "alice",
        "principal_tenant": "acme",
        "scopes": frozenset({"inference"}),
        "request_id": "",
        "audience": "storage",
        "expires_at": time.time() + 60,
    }
    claims.update(changes)
    return AssertionSigner(secrets_dir, issuer="test").encode(Assertion(**claims))
