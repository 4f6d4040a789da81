"""One gateway as its own process (`python -m gateway`) on free ports, for tests and
benchmarks that need a real gateway without the whole stack."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.health import SERVING, check_health
from llmos.oauthclient import Issuer
from llmos.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class GatewayProcess:
    """A gateway started as its own process (`python -m gateway`)."""

    proc: subprocess.Popen[str]
    address: str
    http_port: int
    data_dir: Path
    env: dict[str, str]
    ca: Path | None = None
    log_path: Path | None = None

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

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_gateway(
    base_env: dict[str, str],
    data_dir: Path,
    extra: dict[str, str] | None = None,
    http_port: int = 0,
) -> GatewayProcess:
    """Start a gateway (on free ports unless told) and wait until it is SERVING."""
    port, http_port = free_port(), http_port or free_port()
    env = {
        **base_env,
        "LLMOS_DATA_DIR": str(data_dir),
        "LLMOS_LISTEN_ADDR": f"127.0.0.1:{port}",
        "LLMOS_AUTH_HTTP_ADDR": f"127.0.0.1:{http_port}",
        **(extra or {}),
    }
    ca = Path(env["LLMOS_TLS_CA"]) if env.get("LLMOS_TLS_CERT") else None
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"gateway-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    gateway = GatewayProcess(proc, f"127.0.0.1:{port}", http_port, data_dir, env, ca, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}: {log_path.read_text()}")
        if _serving(gateway.address, ca):
            return gateway
        time.sleep(0.2)
    gateway.stop()
    raise RuntimeError(f"gateway did not become SERVING within 60 s: {log_path.read_text()}")


def _serving(address: str, ca: Path | None) -> bool:
    """The shared health check (callers here are synchronous, as `llmos.probe` is)."""
    tls_ca = ca.read_bytes() if ca else None
    state, _ = asyncio.run(check_health(address, timeout_s=1, tls_ca=tls_ca))
    return state == SERVING
