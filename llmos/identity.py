"""Service identities: who is talking on every internal gRPC connection (mutual TLS).

Each service instance holds a short-lived certificate from the internal CA whose SAN
names it, `spiffe://llmos/<service>/<instance>`, and `<service>.llmos.internal` (what a
client checks the server against, so a worker's certificate cannot pose as storage).
Internal servers require a client certificate from the same CA; the caller's identity
then decides what it may call (`llmos.callers`).

Where the certificate comes from:
- the operator's files (`LLMOS_IDENTITY_CERT`/`_KEY`/`_CA`), re-read when they change, so
  a renewed certificate is picked up without a restart;
- otherwise (dev stack, tests) the process issues its own from the CA under
  `<secrets>/ca`, created at first start, and renews it at half its lifetime. Whoever can
  read that CA key can name itself anything: the dev stack's processes share one user
  and one data directory anyway. Production mounts each service its own files only.

A renewal bumps `generation`: servers hand new handshakes the new certificate at once;
clients build new channels when they see it change (`IdentityChannels`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from llmos import pki
from llmos.keyfiles import private_dir, write_private

log = logging.getLogger("llmos.identity")

TRUST_DOMAIN = "llmos"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
INTERNAL_DOMAIN = "llmos.internal"
#: people and tools outside the services (`llmos status`, the launcher, tests) use this
#: "service" name; it may check health and nothing else
OPERATOR = "operator"
CHECK_FILES_EVERY_S = 5.0


def spiffe_id(service: str, instance: str) -> str:
    return f"{SPIFFE_PREFIX}{service}/{instance}"


def server_name(service: str) -> str:
    """The DNS name in every certificate of `service`, which its clients check."""
    return f"{service}.{INTERNAL_DOMAIN}"


@dataclass(frozen=True)
class Peer:
    """The identity a verified certificate names."""

    service: str
    instance: str

    def __str__(self) -> str:
        return spiffe_id(self.service, self.instance)


def parse_spiffe(uri: str) -> Peer | None:
    """The peer a `spiffe://llmos/<service>/<instance>` URI names, else None."""
    if not uri.startswith(SPIFFE_PREFIX):
        return None
    service, sep, instance = uri[len(SPIFFE_PREFIX) :].partition("/")
    if not (service and sep and instance) or "/" in instance:
        return None
    return Peer(service, instance)


def peer_of(context: grpc.aio.ServicerContext) -> Peer | None:
    """Who is calling, from the client certificate gRPC verified (None on a connection
    without one, which an internal server never accepts)."""
    auth = context.auth_context()
    for value in auth.get("peer_spiffe_id", []) + auth.get("x509_subject_alternative_name", []):
        text = value.decode() if isinstance(value, bytes) else str(value)
        if (peer := parse_spiffe(text)) is not None:
            return peer
    return None


@dataclass(frozen=True)
class Material:
    """A certificate chain, its key and the CA to trust, as PEM."""

    ca: bytes
    cert: bytes
    key: bytes
    not_after: datetime.datetime


class InternalCA:
    """The internal CA under `<secrets>/ca` (created on first use, key mode 0600)."""

    def __init__(self, secrets_dir: Path) -> None:
        directory = private_dir(secrets_dir / "ca")
        self.directory = directory
        self._ca = pki.load_or_create_ca(
            directory / "ca.pem", directory / "ca-key.pem", "LLM OS internal CA"
        )

    @property
    def ca_pem(self) -> bytes:
        return pki.cert_pem(self._ca[0])

    def issue(self, service: str, instance: str, lifetime: datetime.timedelta) -> Material:
        """A certificate naming `service`/`instance`, for server and client use."""
        cert, key = pki.issue_leaf(
            self._ca,
            f"{service}/{instance}",
            [server_name(service), "localhost", "127.0.0.1"],
            lifetime,
            uris=[spiffe_id(service, instance)],
            client=True,
        )
        return Material(
            self.ca_pem, pki.cert_pem(cert), pki.private_pem(key).encode(), cert.not_valid_after_utc
        )

    def write(self, material: Material, directory: Path) -> tuple[Path, Path, Path]:
        """Write `material` as the files an operator would hand a service (cert, key, ca)."""
        cert, key, ca = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
        write_private(key, material.key.decode())
        write_private(cert, material.cert.decode())
        write_private(ca, material.ca.decode())
        return cert, key, ca


class ServiceIdentity:
    """This process's certificate, kept fresh, and gRPC credentials made from it."""

    def __init__(
        self, service: str, instance: str, load: Callable[[], Material], renew_after_s: float
    ) -> None:
        self.peer = Peer(service, instance)
        self._load = load
        self._renew_after_s = renew_after_s
        self._lock = threading.Lock()
        self.material = load()
        self.generation = 0

    @classmethod
    def self_issued(
        cls, secrets_dir: Path, service: str, instance: str, lifetime_s: float = 3600.0
    ) -> ServiceIdentity:
        """An identity issued here from the secrets dir's CA, renewed at half its lifetime."""
        ca = InternalCA(secrets_dir)
        lifetime = datetime.timedelta(seconds=lifetime_s)
        return cls(service, instance, lambda: ca.issue(service, instance, lifetime), lifetime_s / 2)

    @classmethod
    def from_files(
        cls, cert: Path, key: Path, ca: Path, service: str, instance: str
    ) -> ServiceIdentity:
        """The operator's files, re-read every few seconds (a renewal is a new file)."""

        def load() -> Material:
            text, key_text = cert.read_bytes(), key.read_bytes()
            parsed = x509.load_pem_x509_certificate(text)
            private = serialization.load_pem_private_key(key_text, password=None)
            if private.public_key().public_numbers() != parsed.public_key().public_numbers():  # type: ignore[union-attr]
                raise ValueError(f"{key} is not the key of {cert} (a renewal half written?)")
            return Material(ca.read_bytes(), text, key_text, parsed.not_valid_after_utc)

        return cls(service, instance, load, CHECK_FILES_EVERY_S)

    def refresh(self) -> bool:
        """Load the material again; True (and a new generation) when it changed."""
        fresh = self._load()
        with self._lock:
            if fresh == self.material:
                return False
            self.material = fresh
            self.generation += 1
        log.info("identity renewed", extra={"valid_until": fresh.not_after.isoformat()})
        return True

    async def keep_fresh(self) -> None:
        """Renew (or re-read) for as long as the process runs."""
        while True:
            await asyncio.sleep(self._renew_after_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # keep serving on the current one; say why
                log.error("could not renew the identity", extra={"error": str(exc)})

    # -- gRPC credentials --------------------------------------------------------------

    def _server_config(self) -> grpc.ServerCertificateConfiguration:
        material = self.material
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Mutual TLS: a client certificate from the internal CA is required; each new
        handshake gets the newest certificate."""
        served = [self.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            if served[0] == self.generation:
                return None  # keep the current one
            served[0] = self.generation
            return self._server_config()

        return grpc.dynamic_ssl_server_credentials(
            self._server_config(), fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        material = self.material
        return grpc.ssl_channel_credentials(material.ca, material.key, material.cert)


def channel_options(service: str, extra: list[tuple[str, Any]] | None = None) -> list[Any]:
    """Options of a channel to `service`: the server must prove it is that service."""
    return [("grpc.ssl_target_name_override", server_name(service)), *(extra or [])]


def secure_channel(
    identity: ServiceIdentity, address: str, service: str, extra: list[Any] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `service` at `address` presenting this identity."""
    return grpc.aio.secure_channel(
        address, identity.channel_credentials(), options=channel_options(service, extra)
    )


def operator_identity(secrets_dir: Path, name: str = "cli") -> ServiceIdentity:
    """A short-lived identity for a tool outside the services (status, probes, launcher)."""
    return ServiceIdentity.self_issued(secrets_dir, OPERATOR, name)
