"""Client channels to the gateway that send a bearer token with every call.

Over TLS the token travels as call credentials. gRPC refuses call credentials on a
plaintext channel, so a local plaintext gateway (`--no-tls`) gets the same header from
an interceptor instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc


def tls_channel(address: str, ca: Path, token: str) -> grpc.Channel:
    """A TLS channel trusting `ca` that sends `token` as a bearer token with every call."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(ca.read_bytes()), grpc.access_token_call_credentials(token)
    )
    return grpc.secure_channel(address, credentials)


def plaintext_channel(address: str, token: str) -> grpc.Channel:
    """A plaintext channel (a local gateway without TLS) that sends `token` with every call."""
    return grpc.intercept_channel(grpc.insecure_channel(address), _Bearer(token))


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer` to each call."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
