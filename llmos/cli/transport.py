"""Whether the command may send credentials somewhere: over TLS always; in plaintext only
to this machine, and only when the user asked for it (`--insecure` / `LLMOS_INSECURE=1`).

A bearer token, client secret or password sent in plaintext can be read and replayed by
anyone on the path, so a missing CA is never silently taken to mean "plaintext is fine".
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from llmos.cli.errors import CommandError
from llmos.oauthclient import Issuer


@dataclass(frozen=True)
class Transport:
    """How the gateway and issuer are reached: TLS trusting `ca` (for the gateway) or the
    system's CAs (an https issuer); plaintext only to loopback with `insecure`."""

    ca: Path | None
    insecure: bool

    def require_gateway_secure(self, address: str) -> None:
        """Refuse a plaintext gateway (no CA known) unless it is allowed (see the module)."""
        if self.ca is None:
            self._require_plaintext_allowed("the gateway", address, _host_of_address(address))

    def issuer(self, url: str) -> Issuer:
        """The issuer at `url`, if credentials may be sent to it."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https":
            self._require_plaintext_allowed("the issuer", url, parsed.hostname or "")
        return Issuer(url, self.ca)

    def _require_plaintext_allowed(self, what: str, where: str, host: str) -> None:
        if not is_loopback(host):
            raise CommandError(
                f"refusing to send credentials in plaintext to {what} at {where}: use TLS "
                "(give the CA that signed its certificate with --ca-file or $LLMOS_TLS_CA)"
            )
        if not self.insecure:
            raise CommandError(
                f"refusing to send credentials in plaintext to {what} at {where}: give its "
                "CA with --ca-file for TLS, or pass --insecure to allow plaintext on this machine"
            )


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (a loopback address or `localhost`)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of_address(address: str) -> str:
    """The host of HOST:PORT (IPv6 in brackets), or of a gRPC target such as ipv4:H:P."""
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        address = address.removeprefix(scheme)
    if address.startswith("["):
        return address[1 : address.find("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address
