"""Fixtures for gateway tests: a gateway process with its own fresh Redis (identities are
per Redis, and the bootstrap admin is created once per Redis), audit capture, tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from llmos.config import environment_without_llmos
from llmos.health import SERVING, check_health
from llmos.ports import free_port
from llmos.v1 import audit_pb2
from tests.conftest import ROOT
from tools.devstack.gateway_process import GatewayProcess, start_gateway
from tools.devstack.infra import NatsServer, RedisServer, start_redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis only this module's gateways use."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def gateway_env(nats_server: NatsServer, redis: RedisServer) -> dict[str, str]:
    return {
        **environment_without_llmos(),
        "LLMOS_NATS_URL": nats_server.url,
        "LLMOS_REDIS_URL": redis.url,
        "LLMOS_HEARTBEAT_S": "0.5",
        "LLMOS_SHUTDOWN_GRACE_S": "2",
        "LLMOS_LOGIN_MAX_FAILURES": "3",
        "LLMOS_LOGIN_LOCKOUT_S": "120",
        "PYTHONPATH": str(ROOT),
    }


@dataclass
class ServiceUnderTest:
    """One service process started by a test, on its own port, logging beside its data."""

    proc: subprocess.Popen[bytes]
    address: str
    env: dict[str, str]
    log_path: Path

    def channel(self, max_message: int = 16 << 20) -> grpc.Channel:
        return grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", max_message)]
        )

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_service(
    module: str, env: dict[str, str], log_dir: Path, timeout_s: float = 60
) -> ServiceUnderTest:
    """Start `python -m module` with `env` on a free port; return once it is SERVING."""
    address = f"127.0.0.1:{free_port()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    env = {**env, "LLMOS_LISTEN_ADDR": address}
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}; see {log.name}")
        state, _ = asyncio.run(check_health(address, timeout_s=1))
        if state == SERVING:
            return ServiceUnderTest(proc, address, env, log_path)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{module} did not start within {timeout_s:g}s; see {log.name}")


@pytest.fixture(scope="module")
def gw(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway hosting the built-in issuer."""
    gateway = start_gateway(
        gateway_env(nats_server, own_redis), tmp_path_factory.mktemp("gw") / "data"
    )
    try:
        yield gateway
    finally:
        gateway.stop()


class AuditTap:
    """Audit records the gateway publishes, as a subscriber sees them."""

    def __init__(self, url: str, subject: str = "llmos.audit.gateway") -> None:
        self._url = url
        self._subject = subject
        self.records: list[audit_pb2.AuditRecord] = []
        self._nc: Any = None

    async def __aenter__(self) -> AuditTap:
        self._nc = await nats.connect(self._url)

        async def on_record(msg: Any) -> None:
            self.records.append(audit_pb2.AuditRecord.FromString(msg.data))

        await self._nc.subscribe(self._subject, cb=on_record)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.close()

    async def wait_for(self, timeout_s: float = 10.0, **fields: Any) -> audit_pb2.AuditRecord:
        """The first record whose fields equal `fields`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in self.records:
                if all(getattr(record, k) == v for k, v in fields.items()):
                    return record
            await asyncio.sleep(0.05)
        raise AssertionError(f"no audit record with {fields}; got {len(self.records)} others")


def signing_key(gateway: GatewayProcess) -> tuple[str, RSAKey]:
    """The gateway's current token-signing key, read from its data directory."""
    newest = sorted((gateway.data_dir / "gateway" / "keys").glob("*.pem"))[-1]
    return newest.stem, RSAKey.import_key(newest.read_bytes())


def claims_for(gateway: GatewayProcess, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": gateway.issuer.url,
        "aud": "llmos",
        "sub": "mallory",
        "client_id": "mallory",
        "tenant": "system",
        "scope": "models:read cluster:read admin inference",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def forge(
    gateway: GatewayProcess,
    key: RSAKey | None = None,
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A token signed with `key` (default: the gateway's real key) and these claims."""
    real_kid, real_key = signing_key(gateway)
    header = {"alg": "RS256", "kid": kid or real_kid, "typ": "at+jwt"}
    return jwt.encode(header, claims_for(gateway, **claims), key or real_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(gateway: GatewayProcess) -> str:
    """`alg: none`: claims with no signature at all."""
    header = _b64(json.dumps({"alg": "none", "kid": signing_key(gateway)[0]}).encode())
    return f"{header}.{_b64(json.dumps(claims_for(gateway)).encode())}."


def hs256_with_public_key(gateway: GatewayProcess) -> str:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key."""
    kid, key = signing_key(gateway)
    public_pem = key.as_pem(private=False)
    header = _b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = _b64(json.dumps(claims_for(gateway)).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def key_files(gateway: GatewayProcess) -> list[Path]:
    return sorted((gateway.data_dir / "gateway" / "keys").glob("*.pem"))
