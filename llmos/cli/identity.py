"""`llmos login`, `llmos logout` and `llmos whoami`: a person's session."""

from __future__ import annotations

import base64
import json
import sys
from typing import Annotated, Any

import typer

from llmos.cli.connection import connection
from llmos.cli.errors import CommandError
from llmos.cli.prompts import secret_lines
from llmos.cli.session import Session, session_from_token, session_path, talking_to
from llmos.oauthclient import CLI_CLIENT_ID, OAuthError


def claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified: for showing the user who they are, never for trust."""
    try:
        payload = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return dict(decoded) if isinstance(decoded, dict) else {}
    except (IndexError, ValueError):
        return {}


def login(
    ctx: typer.Context,
    username: Annotated[
        str | None, typer.Option(help="who signs in (default: asked on the terminal)")
    ] = None,
) -> None:
    """Sign in with password + one-time code (a person; the session is kept for you).

    The password and code are read from the terminal, or one per line from a pipe. The
    session file ($LLMOS_SESSION, default ~/.config/llmos/session.json) is readable by you
    only; its tokens are refreshed as they expire."""
    issuer = connection(ctx).login_issuer()
    name = username or input("user name: ")
    password, code = secret_lines(["password", "one-time code"], sys.stdin)
    try:
        with talking_to(issuer):
            token = issuer.password_login(CLI_CLIENT_ID, name, password, code.strip())
    except OAuthError as exc:
        raise CommandError(f"sign-in refused: {exc.description or exc.error}") from None
    session = session_from_token(issuer, name, token)
    session.save(session_path())
    tenant = claims(session.access_token).get("tenant", "?")
    print(f"signed in as {name} (tenant {tenant}; scopes: {token.get('scope', '')})")


def logout(ctx: typer.Context) -> None:
    """Revoke the session's tokens and forget them."""
    path = session_path()
    session = Session.load(path)
    if session is None:
        print("not signed in")
        return
    issuer = connection(ctx).transport().issuer(session.issuer)
    for token in (session.refresh_token, session.access_token):
        if token:
            try:
                with talking_to(issuer):
                    issuer.revoke(token, client_id=session.client_id)
            except (OAuthError, CommandError) as exc:
                print(f"llmos: could not revoke a token: {exc}", file=sys.stderr)
    path.unlink(missing_ok=True)
    print(f"signed out {session.username}")


def whoami(ctx: typer.Context) -> None:
    """Who the current token says you are (its claims, as JSON)."""
    shown = claims(connection(ctx).bearer())
    print(
        json.dumps(
            {k: shown.get(k) for k in ("sub", "tenant", "scope", "client_id", "iss", "exp")},
            indent=2,
        )
    )
