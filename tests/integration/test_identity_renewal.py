"""A service's certificate is short-lived and renewed while it runs: after the first
certificate has expired, new connections still get through, without a restart."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmos.identity import ServiceIdentity, channel_options, server_name
from tests.integration.storage_client import start_storage
from tools.standin import identity_for

LIFETIME_S = 10


def _served_certificate(address: str, operator: ServiceIdentity, scratch: Path) -> x509.Certificate:
    """The certificate the server presents to a new TLS connection."""
    material = operator.material
    context = ssl.create_default_context(cadata=material.ca.decode())
    (scratch / "cert.pem").write_bytes(material.cert)
    (scratch / "key.pem").write_bytes(material.key)
    context.load_cert_chain(scratch / "cert.pem", scratch / "key.pem")
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name("storage")) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_service_keeps_serving_new_connections_after_its_first_certificate_expired(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    storage = start_storage({**service_env, "LLMOS_IDENTITY_TTL_S": str(LIFETIME_S)}, tmp_path)
    address = storage.process.address
    operator = identity_for(storage.process.secrets_dir, "operator", "renewal-test")
    try:
        first = _served_certificate(address, operator, tmp_path)
        assert first.not_valid_after_utc.timestamp() < time.time() + LIFETIME_S + 1
        time.sleep(LIFETIME_S + 2)  # the first one has expired now
        renewed = _served_certificate(address, operator, tmp_path)
        assert renewed.serial_number != first.serial_number
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        credentials = operator.channel_credentials()
        with grpc.secure_channel(address, credentials, channel_options("storage")) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert storage.process.alive()
    finally:
        storage.stop()
