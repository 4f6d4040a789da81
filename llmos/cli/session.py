"""How the `llmos` command authenticates, first match wins:

1. `--token` / `$LLMOS_TOKEN`: an access token as is;
2. `--credentials FILE` / `$LLMOS_CREDENTIALS`: a program's client id and secret (the
   JSON file the gateway writes for its bootstrap admin, and `llmos admin client-create
   --save` writes, has this shape) -> client credentials grant;
3. the session `llmos login` saved (`$LLMOS_SESSION`, default ~/.config/llmos/session.json):
   a person's tokens, refreshed when the access token expires;
4. the local dev stack's admin credentials (`credentials` in <data dir>/stack.json), so
   `make run` followed by `llmos ...` works on the machine that runs the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.cli.errors import CommandError, NotSignedIn, unreachable
from llmos.cli.transport import Transport
from llmos.keyfiles import write_private
from llmos.oauthclient import CLI_CLIENT_ID, Issuer, OAuthError, read_client_credentials

#: Refresh this long before the access token expires.
EXPIRY_MARGIN_S = 30


def stack_file() -> Path:
    """Where the dev launcher describes the running stack."""
    return Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "stack.json"


def stack_info() -> dict[str, Any]:
    """What the dev launcher wrote about the running stack (empty if none)."""
    try:
        return dict(json.loads(stack_file().read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def session_path() -> Path:
    """Where `llmos login` keeps a person's tokens."""
    explicit = os.environ.get("LLMOS_SESSION")
    if explicit:
        return Path(explicit)
    return Path.home() / ".config" / "llmos" / "session.json"


def ca_file(explicit: str | None) -> Path | None:
    """The CA that signed the gateway's certificate, if TLS is in use."""
    chosen = explicit or os.environ.get("LLMOS_TLS_CA") or stack_info().get("tls_ca")
    if not chosen:
        return None
    path = Path(chosen)
    if not path.is_file():
        raise CommandError(f"the CA certificate {path} does not exist or is not a file")
    return path


@contextlib.contextmanager
def talking_to(issuer: Issuer) -> Iterator[None]:
    """Turn an issuer that cannot be reached, or answers nonsense, into one sentence."""
    try:
        yield
    except OAuthError:
        raise
    except OSError as exc:  # urllib's URLError, refused connections, TLS failures, timeouts
        raise unreachable("the issuer", issuer.url, exc) from None
    except (ValueError, KeyError) as exc:
        raise CommandError(
            f"the issuer at {issuer.url} did not answer like an OAuth server ({exc!r})"
        ) from None


@dataclass
class Session:
    """A person's tokens from `llmos login`."""

    issuer: str
    client_id: str
    username: str
    access_token: str
    refresh_token: str
    expires_at: float

    def save(self, path: Path) -> None:
        """Keep the tokens in a file only the owner can read."""
        write_private(path, json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Session | None:
        """The saved session, or None if there is none (or it cannot be read)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def session_from_token(issuer: Issuer, username: str, token: dict[str, Any]) -> Session:
    """A session from a token response of the CLI's client."""
    return Session(
        issuer=issuer.url,
        client_id=CLI_CLIENT_ID,
        username=username,
        access_token=str(token["access_token"]),
        refresh_token=str(token.get("refresh_token", "")),
        expires_at=time.time() + float(token.get("expires_in", 0)),
    )


def access_token(explicit_token: str | None, credentials: str | None, transport: Transport) -> str:
    """An access token by the rules in the module docstring."""
    token = explicit_token or os.environ.get("LLMOS_TOKEN")
    if token:
        return token
    path = credentials or os.environ.get("LLMOS_CREDENTIALS")
    if path:
        return client_token(Path(path), transport)
    session = Session.load(session_path())
    if session is not None:
        return _session_token(session, transport)
    dev_credentials = stack_info().get("credentials")
    if dev_credentials and Path(dev_credentials).exists():
        return client_token(Path(dev_credentials), transport)
    raise NotSignedIn(
        "not signed in: run `llmos login`, or pass --credentials FILE (a client id and secret)"
    )


def client_token(path: Path, transport: Transport) -> str:
    """A token for the client whose credentials file is at `path`."""
    try:
        issuer, client_id, secret = read_client_credentials(path)
    except OSError as exc:
        raise CommandError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(
            f"the credentials file {path} is not a JSON object with issuer, client_id and "
            f"client_secret ({type(exc).__name__}: {exc})"
        ) from None
    issuer = transport.issuer(issuer.url)
    with talking_to(issuer):
        return str(issuer.client_credentials(client_id, secret)["access_token"])


def _session_token(session: Session, transport: Transport) -> str:
    if time.time() < session.expires_at - EXPIRY_MARGIN_S:
        return session.access_token
    if not session.refresh_token:
        raise NotSignedIn("the session has expired: run `llmos login` again")
    issuer = transport.issuer(session.issuer)
    try:
        with talking_to(issuer):
            token = issuer.refresh(session.client_id, session.refresh_token)
    except OAuthError as exc:
        raise NotSignedIn(
            f"the session could not be refreshed ({exc}); run `llmos login`"
        ) from None
    fresh = session_from_token(issuer, session.username, token)
    fresh.refresh_token = fresh.refresh_token or session.refresh_token
    fresh.save(session_path())
    return fresh.access_token
