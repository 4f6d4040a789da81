"""Client side of the standard grpc.health.v1 protocol, used by the gateway and launcher."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmos.identity import ServiceIdentity, secure_channel

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"


async def check_health(
    address: str,
    service: str = "",
    timeout_s: float = 2.0,
    tls_ca: bytes | None = None,
    *,
    identity: ServiceIdentity | None = None,
    server: str = "",
) -> tuple[str, str]:
    """Ask `address` for its health; return (state, sentence) and never raise for I/O.

    An internal server (`server`: its service name) is asked over mutual TLS presenting
    `identity`; the gateway over TLS trusting `tls_ca` when given."""
    if identity is not None:
        channel = secure_channel(identity, address, server)
    elif tls_ca is not None:
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(tls_ca))
    else:
        channel = grpc.aio.insecure_channel(address)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return UNREACHABLE, f"health check of {address} failed: {exc.code().name}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if name == SERVING:
        return SERVING, ""
    return NOT_SERVING, f"{address} reports {name}"
