"""First start: the `system` tenant, the bootstrap admin client and the CLI's client."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.auth.identities import IdentityStore, Limits
from gateway.auth.scopes import SCOPES, SYSTEM_TENANT
from llmos.keyfiles import write_private
from llmos.oauthclient import CLI_CLIENT_ID


def credentials_path(data_dir: Path) -> Path:
    """Where the bootstrap admin's client credentials are written on first start."""
    return data_dir / "gateway" / "admin-credentials.json"


def bootstrap(store: IdentityStore, data_dir: Path, issuer: str) -> Path:
    """On the very first start (per identity store): the `system` tenant, an admin client
    whose credentials are written once to a 0600 file, and the CLI's public client."""
    path = credentials_path(data_dir)
    if not store.claim_bootstrap():
        return path
    store.ensure_tenant(SYSTEM_TENANT, Limits())
    admin, secret = store.create_client(SYSTEM_TENANT, "bootstrap admin", list(SCOPES))
    store.create_client(
        SYSTEM_TENANT,
        "llmos command line (people sign in with password + TOTP)",
        list(SCOPES),
        grant_types=("password", "refresh_token"),
        public=True,
        client_id=CLI_CLIENT_ID,
    )
    document = {
        "client_id": admin.client_id,
        "client_secret": secret,
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
    }
    write_private(path, json.dumps(document, indent=2) + "\n")
    return path
