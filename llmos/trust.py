"""The trust material a deployment's processes share, in one directory (the secrets dir).

Layout (every private file mode 0600, every directory 0700):

    <secrets>/ca/ca.pem, ca-key.pem       the internal CA (service identities, mutual TLS)
    <secrets>/nats/<user>.json            {"user": ..., "password": ...} per NATS user
    <secrets>/redis/<user>.json           {"user": ..., "password": ...} per Redis ACL user
    <secrets>/postgres/<service>.json     the PostgreSQL role of storage, of audit
    <secrets>/s3/storage.json             storage's object-store keys (access, secret)
    <secrets>/assertions/                 the gateway's key signing tenant assertions

The dev stack and the tests keep it at `<data dir>/secrets`, created at first start by
whoever starts NATS and Redis (the setup identity). In production the operator mounts
each service only the files that name it (see README, "Security model").
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from llmos.config import Secret
from llmos.keyfiles import new_private_file, private_dir

#: the identity that creates streams and users: the launcher, `make run`, the tests
SETUP_USER = "setup"


@dataclass(frozen=True)
class Credentials:
    """A user name and its password (never printed)."""

    user: str
    password: Secret[str]


def credentials_file(directory: Path, user: str) -> Path:
    """Where `user`'s credentials live in a credentials directory."""
    return directory / f"{user}.json"


def read_credentials(path: Path) -> Credentials:
    """Credentials from a `{"user": ..., "password": ...}` file; ValueError naming the file
    (never its content) when it is not one."""
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["user"]), Secret(str(data["password"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a readable credentials file ({type(exc).__name__})"
        ) from None


def ensure_credentials(directory: Path, user: str) -> Credentials:
    """`user`'s credentials in `directory`, generated (0600) on first use; two processes
    racing at first start agree on one password."""
    path = credentials_file(directory, user)
    private_dir(directory)
    try:
        with new_private_file(path) as handle:
            handle.write(json.dumps({"user": user, "password": secrets.token_urlsafe(32)}))
    except FileExistsError:
        pass
    return read_credentials(path)


def url_with_credentials(url: Secret[str], directory: Path, user: str) -> Secret[str]:
    """The URL `user` connects with: `url` itself when it carries credentials (the
    operator's choice), else `url` with those of `<directory>/<user>.json`; ValueError
    naming that file (never its content)."""
    parts = urlsplit(url.reveal())
    if parts.username or parts.password:
        return url
    found = read_credentials(credentials_file(directory, user))
    name, password = quote(found.user, safe=""), quote(found.password.reveal(), safe="")
    return Secret(urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.netloc}")))
