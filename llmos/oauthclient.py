"""A small OAuth 2.0 client for LLM OS's programs and command line (standard library only):
discover the token endpoint, get tokens (client credentials; password + TOTP), refresh
and revoke them. Errors come back as `OAuthError` with the server's own sentence."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0

#: The `llmos` command line's public client: carries people's logins (password + TOTP,
#: refresh tokens) and cannot use client_credentials. The gateway creates it at bootstrap.
CLI_CLIENT_ID = "llmos-cli"


class OAuthError(Exception):
    """The authorization server refused; `error` is the OAuth error code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Issuer:
    """Where an authorization server's endpoints are, and how to trust it."""

    url: str
    ca_file: Path | None = None

    def _context(self) -> ssl.SSLContext | None:
        if self.url.startswith("https://"):
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return None

    def get(self, path_or_url: str) -> dict[str, Any]:
        url = path_or_url if "://" in path_or_url else self.url.rstrip("/") + path_or_url
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=self._context()) as reply:
            return dict(json.loads(reply.read()))

    def metadata(self) -> dict[str, Any]:
        return self.get("/.well-known/openid-configuration")

    def post(
        self, endpoint: str, form: dict[str, str], basic: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a form to `endpoint` (a metadata key such as "token_endpoint", or a URL)."""
        url = endpoint if "://" in endpoint else str(self.metadata()[endpoint])
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic:
            pair = f"{urllib.parse.quote(basic[0])}:{urllib.parse.quote(basic[1])}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        request = urllib.request.Request(
            url, data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self._context()) as r:
                body = r.read()
                return dict(json.loads(body)) if body else {}
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            raise OAuthError(
                exc.code,
                str(detail.get("error", f"http_{exc.code}")),
                str(detail.get("error_description", "")),
            ) from None

    def client_credentials(
        self, client_id: str, client_secret: str, scope: str = ""
    ) -> dict[str, Any]:
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return self.post("token_endpoint", form, basic=(client_id, client_secret))

    def password_login(
        self, client_id: str, username: str, password: str, totp: str, scope: str = ""
    ) -> dict[str, Any]:
        form = {
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": password,
            "totp": totp,
        }
        if scope:
            form["scope"] = scope
        return self.post("token_endpoint", form)

    def refresh(self, client_id: str, refresh_token: str) -> dict[str, Any]:
        form = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "refresh_token": refresh_token,
        }
        return self.post("token_endpoint", form)

    def revoke(self, token: str, basic: tuple[str, str] | None = None, client_id: str = "") -> None:
        form = {"token": token}
        if client_id:
            form["client_id"] = client_id
        self.post("revocation_endpoint", form, basic=basic)

    def introspect(self, token: str, basic: tuple[str, str]) -> dict[str, Any]:
        return self.post("introspection_endpoint", {"token": token}, basic=basic)


def credentials_json(issuer: str, client_id: str, client_secret: str) -> str:
    """A credentials file's content: what `read_client_credentials` reads back."""
    document = {"issuer": issuer, "client_id": client_id, "client_secret": client_secret}
    return json.dumps(document, indent=2) + "\n"


def read_client_credentials(path: Path) -> tuple[Issuer, str, str]:
    """The issuer, client id and secret from a credentials file (as the gateway writes)."""
    document = json.loads(path.read_text())
    return (
        Issuer(str(document["issuer"])),
        str(document["client_id"]),
        str(document["client_secret"]),
    )
