"""The global options every command shares, and the gateway channel built from them.

The gateway address comes from --gateway, else $LLMOS_GATEWAY, else the stack file the
dev launcher writes (<data dir>/stack.json), else 127.0.0.1:50051. How the command
authenticates is described in `llmos.cli.session`; where it may send credentials, in
`llmos.cli.transport` (TLS, or plaintext to this machine with --insecure).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import typer

from llmos.channels import plaintext_channel, tls_channel
from llmos.cli.errors import CommandError
from llmos.cli.session import access_token, ca_file, stack_info
from llmos.cli.transport import Transport
from llmos.oauthclient import Issuer
from llmos.v1 import (
    admin_pb2_grpc,
    apps_pb2_grpc,
    audit_pb2_grpc,
    gateway_pb2_grpc,
    storage_pb2_grpc,
)

DEFAULT_GATEWAY = "127.0.0.1:50051"


def gateway_address(explicit: str | None) -> str:
    """Which gateway to call (see the module docstring)."""
    if explicit:
        return explicit
    if os.environ.get("LLMOS_GATEWAY"):
        return os.environ["LLMOS_GATEWAY"]
    return str(stack_info().get("gateway") or DEFAULT_GATEWAY)


@dataclass
class Connection:
    """The global options; channels and tokens are made on first use, once."""

    gateway: str | None = None
    timeout: float = 120.0
    token: str | None = None
    credentials: str | None = None
    ca_file: str | None = None
    issuer: str | None = None
    insecure: bool = False
    _bearer: str | None = field(default=None, repr=False)
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """HOST:PORT of the gateway."""
        return gateway_address(self.gateway)

    def ca(self) -> Path | None:
        """The CA that signed the gateway's certificate (None: plaintext)."""
        return ca_file(self.ca_file)

    def transport(self) -> Transport:
        """Where credentials may go: TLS, or plaintext to this machine with --insecure."""
        insecure = self.insecure or os.environ.get("LLMOS_INSECURE") == "1"
        return Transport(self.ca(), insecure)

    def bearer(self) -> str:
        """The access token every call carries."""
        if self._bearer is None:
            self._bearer = access_token(self.token, self.credentials, self.transport())
        return self._bearer

    def channel(self) -> grpc.Channel:
        """A channel to the gateway (TLS when a CA is known, as call credentials need;
        plaintext only where `llmos.cli.transport` allows it)."""
        if self._channel is None:
            self.transport().require_gateway_secure(self.address)
            ca, token = self.ca(), self.bearer()
            if ca is None:
                self._channel = plaintext_channel(self.address, token)
            else:
                self._channel = tls_channel(self.address, ca, token)
        return self._channel

    def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def gateway_stub(self) -> gateway_pb2_grpc.GatewayStub:
        """The public API: inference, models, jobs, status."""
        return gateway_pb2_grpc.GatewayStub(self.channel())

    def apps_stub(self) -> apps_pb2_grpc.ApplicationsStub:
        """Entities, translation, knowledge bases and the assistant."""
        return apps_pb2_grpc.ApplicationsStub(self.channel())

    def admin_stub(self) -> admin_pb2_grpc.AdminStub:
        """Tenants, clients, users, quotas and signing keys."""
        return admin_pb2_grpc.AdminStub(self.channel())

    def storage_stub(self) -> storage_pb2_grpc.StorageStub:
        """Blobs, datasets and the model registry."""
        return storage_pb2_grpc.StorageStub(self.channel())

    def audit_stub(self) -> audit_pb2_grpc.AuditStub:
        """Querying and verifying the audit log."""
        return audit_pb2_grpc.AuditStub(self.channel())

    def issuer_url(self) -> str | None:
        """The OAuth issuer named by --issuer, $LLMOS_ISSUER or the stack file."""
        url = self.issuer or os.environ.get("LLMOS_ISSUER") or stack_info().get("issuer")
        return str(url) if url else None

    def login_issuer(self) -> Issuer:
        """The issuer people sign in with."""
        url = self.issuer_url()
        if not url:
            raise CommandError("which issuer? pass --issuer URL or set LLMOS_ISSUER")
        return self.transport().issuer(url)


def connection(ctx: typer.Context) -> Connection:
    """The global options of this invocation (set by the top-level callback)."""
    found = ctx.find_object(Connection)
    return found if found is not None else Connection()
