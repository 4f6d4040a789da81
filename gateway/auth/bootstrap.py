"""First start: the `system` tenant, the bootstrap admin client and the CLI's client; at
every start, the web console's client (stores bootstrapped before the console existed
get it too)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from gateway.auth.identities import IdentityStore, Limits
from gateway.auth.scopes import SCOPES, SYSTEM_TENANT
from llmos.errors import AlreadyExists
from llmos.keyfiles import write_private
from llmos.oauthclient import CLI_CLIENT_ID


def credentials_path(data_dir: Path) -> Path:
    """Where the bootstrap admin's client credentials are written on first start."""
    return data_dir / "gateway" / "admin-credentials.json"


#: The web console's public client: people sign in to it with the authorization code
#: grant and PKCE; its code comes back to the console on the issuer's own origin.
CONSOLE_CLIENT_ID = "llmos-console"
CONSOLE_CALLBACK_PATH = "/console/callback"


#: clients people sign in through, which no admin may delete
BUILT_IN_CLIENTS = frozenset({CLI_CLIENT_ID, CONSOLE_CLIENT_ID})


def ensure_console_client(store: IdentityStore) -> None:
    """The console's client, created once per identity store, and kept allowed every
    scope the system defines (a person's token still carries only their own)."""
    store.ensure_tenant(SYSTEM_TENANT, Limits())
    existing = store.find_client(CONSOLE_CLIENT_ID)
    if existing is not None:
        if set(existing.scopes) != set(SCOPES):
            store.set_client_scopes(CONSOLE_CLIENT_ID, list(SCOPES))
        return
    with contextlib.suppress(AlreadyExists):  # another replica created it meanwhile
        store.create_client(
            SYSTEM_TENANT,
            "web console (people sign in with password + TOTP)",
            list(SCOPES),
            grant_types=("authorization_code", "refresh_token"),
            public=True,
            client_id=CONSOLE_CLIENT_ID,
            redirect_uris=(CONSOLE_CALLBACK_PATH,),
        )


def bootstrap(store: IdentityStore, data_dir: Path, issuer: str) -> Path:
    """On the very first start (per identity store): the `system` tenant, an admin client
    whose credentials are written once to a 0600 file, and the CLI's public client. At
    every start: the console's client."""
    path = credentials_path(data_dir)
    if store.claim_bootstrap():
        _first_start(store, path, issuer)
    ensure_console_client(store)
    return path


def _first_start(store: IdentityStore, path: Path, issuer: str) -> None:
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
