"""A local certificate authority and a server certificate for the gateway's public TLS.

`make run` serves the gateway's gRPC and OAuth endpoints over TLS with these; clients
trust `ca.pem`. Generated once under <data dir>/tls (private keys mode 0600) and reused
while they cover the requested host names and are not close to expiring. (Services
inside prove who they are with another CA's certificates: see llmos.identity.)
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from llmos.keyfiles import write_private
from llmos.pki import cert_pem, issue_leaf, load_or_create_ca, now, private_pem

CERT_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def ensure_dev_tls(directory: Path, hosts: list[str]) -> TlsFiles:
    """CA + server certificate for `hosts` (names or IPs), created or reused."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    names = sorted({*hosts, "localhost", "127.0.0.1", socket.gethostname()})
    if _usable(files, names):
        return files
    ca = load_or_create_ca(files.ca, directory / "ca-key.pem", "LLM OS local development CA")
    cert, key = issue_leaf(ca, "llmos-gateway", names, datetime.timedelta(days=CERT_DAYS))
    write_private(files.key, private_pem(key))
    files.cert.write_bytes(cert_pem(cert))
    return files


def _usable(files: TlsFiles, names: list[str]) -> bool:
    if not (files.ca.exists() and files.cert.exists() and files.key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    if cert.not_valid_after_utc - now() < RENEW_BEFORE:
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    covered |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return set(names) <= covered
