"""One gateway as its own process (`python -m gateway`) on free ports, for tests and
benchmarks that need a real gateway without the whole stack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmos.oauthclient import Issuer
from llmos.ports import free_port
from tools.harness import Process, start_service


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class GatewayProcess:
    """A gateway started as its own process, with the issuer it hosts."""

    process: Process
    http_port: int
    data_dir: Path
    ca: Path | None = None

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def env(self) -> dict[str, str]:
        return self.process.env

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def issuer(self) -> Issuer:
        scheme = "https" if self.ca else "http"
        return Issuer(f"{scheme}://127.0.0.1:{self.http_port}", self.ca)

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "gateway" / "admin-credentials.json"

    def admin_credentials(self) -> tuple[str, str]:
        document = json.loads(self.credentials_file.read_text())
        return str(document["client_id"]), str(document["client_secret"])

    def admin_token(self, scope: str = "") -> str:
        client_id, secret = self.admin_credentials()
        return str(self.issuer.client_credentials(client_id, secret, scope)["access_token"])

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> int | None:
        return self.process.stop()


def start_gateway(
    base_env: dict[str, str],
    data_dir: Path,
    extra: dict[str, str] | None = None,
    http_port: int = 0,
) -> GatewayProcess:
    """Start a gateway (on free ports unless told) and wait until it is SERVING."""
    http_port = http_port or free_port()
    env = {
        **base_env,
        "LLMOS_DATA_DIR": str(data_dir),
        "LLMOS_AUTH_HTTP_ADDR": f"127.0.0.1:{http_port}",
        **(extra or {}),
    }
    ca = Path(env["LLMOS_TLS_CA"]) if env.get("LLMOS_TLS_CERT") else None
    data_dir.mkdir(parents=True, exist_ok=True)
    process = start_service(
        "gateway", env, data_dir, timeout=60, tls_ca=ca.read_bytes() if ca else None
    )
    return GatewayProcess(process, http_port, data_dir, ca)
