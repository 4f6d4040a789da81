"""Reaching a running dev stack as its bootstrap admin, from its ready-line fields:
scripts, benchmarks and tests use this rather than each building TLS and tokens."""

from __future__ import annotations

from pathlib import Path

import grpc

from llmos.channels import tls_channel as tls_channel  # one copy, shared with the CLI
from llmos.oauthclient import Issuer, read_client_credentials


def stack_issuer(fields: dict[str, str]) -> Issuer:
    """The stack's OAuth issuer, trusting the stack's CA when it serves TLS."""
    ca = fields.get("tls_ca")
    return Issuer(fields["issuer"], Path(ca) if ca else None)


def admin_token(fields: dict[str, str], scope: str = "") -> str:
    """An access token for the bootstrap admin client (client credentials grant)."""
    _, client_id, secret = read_client_credentials(Path(fields["credentials"]))
    return str(stack_issuer(fields).client_credentials(client_id, secret, scope)["access_token"])


def gateway_channel(fields: dict[str, str], token: str) -> grpc.Channel:
    """A channel to the stack's gateway sending `token` with every call."""
    ca = fields.get("tls_ca")
    if ca is None:
        raise ValueError("the stack serves plaintext; use insecure_channel with bearer metadata")
    return tls_channel(fields["gateway"], Path(ca), token)
